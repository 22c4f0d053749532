"""Corpus templates once called verified while wrong, each on the conversation that showed it.

Each case is judged here from first principles (SPEC §2–3), not by the oracle: for assistant
message ``i``, ``P = render(M[:i], add_generation_prompt=True)`` and ``F = render(M[:i+1])``; when
``F`` starts with ``P`` and the full render continues after ``P`` with ``G = F[len(P):]``, the
patched template's span must start at ``len(P)`` and end at the end of ``G`` (trailing whitespace
in or out). A case the patcher cannot fix must be refused, with a reason naming the output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from templatefix.patch.api import patch_template
from templatefix.render import merge_spans, render, render_with_spans


@dataclass(frozen=True)
class Case:
    path: str
    messages: list[dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    turn: int = 1  # the assistant message the fault was seen on


def _call(
    name: str, arguments: dict[str, str], *, as_string: bool = False, id: str | None = "call00001"
) -> dict:
    call: dict[str, Any] = {
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments) if as_string else arguments},
    }
    if id is not None:
        call["id"] = id
    return call


def _tools(*names: str) -> list[dict[str, Any]]:
    properties = {"city": {"type": "string"}, "unit": {"type": "string"}}
    return [
        {
            "type": "function",
            "function": {
                "name": n,
                "description": "d",
                "parameters": {"type": "object", "properties": properties},
            },
        }
        for n in names
    ]


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _assistant(text: str, **fields: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **fields}


#: A turn that ends the conversation is judged whatever the template does to history (Gemma 4
#: writes the tool results inside the calling turn).
TWO_ARGUMENTS = (
    [
        _user("weather please"),
        _assistant("", tool_calls=[_call("get_weather", {"city": "paris", "unit": "celsius"})]),
    ],
    {"tools": _tools("get_weather")},
)


def _two_calls(as_string: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    calls = [
        _call("get_weather", {"city": "paris", "unit": "celsius"}, as_string=as_string, id="call00001"),
        _call("get_time", {"city": "rome", "unit": "hours"}, as_string=as_string, id="call00002"),
    ]
    messages = [
        _user("weather please"),
        _assistant("", tool_calls=calls),
        {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call00002", "name": "get_time", "content": "noon"},
        _assistant("sunny at noon"),
    ]
    return messages, {"tools": _tools("get_weather", "get_time")}


#: llama.cpp's DeepSeek templates parse string arguments with ``from_json``, which transformers
#: lacks: they take the arguments as objects, in a final turn (its prompt disagrees with it).
TWO_STRING_CALLS = _two_calls(as_string=True)
TWO_OBJECT_CALLS = (_two_calls(as_string=False)[0][:2], _two_calls(as_string=False)[1])
CALL_WITHOUT_ID = (
    [
        _user("weather please"),
        _assistant("", tool_calls=[_call("get_weather", {"city": "paris"}, id=None)]),
        {"role": "tool", "name": "get_weather", "content": "sunny"},
        _assistant("it is sunny"),
    ],
    {"tools": _tools("get_weather")},
)
PLAIN_TURNS = [_user("hello"), _assistant("first answer"), _user("again"), _assistant("second answer")]
REASONING_THEN_PLAIN = [
    _user("hello"),
    _assistant("first answer", reasoning_content="first thought"),
    _user("again"),
    _assistant("second answer"),
]

DOCUMENTS = [{"title": "forecast", "text": "rain later"}, {"title": "almanac", "text": "dry season"}]
DOCUMENTS_AND_CALLS = [
    _user("weather please"),
    _assistant("checking", tool_calls=[_call("get_weather", {"city": "paris"})]),
    {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": "sunny"},
    _assistant("it is sunny"),
    _user("and tomorrow?"),
    _assistant("rain, says the forecast"),
]

FIXED = [
    Case("qwen/Qwen3.6.jinja", REASONING_THEN_PLAIN, {"enable_thinking": False}, turn=3),
    # needs the template's own `{% set reasoning_content %}` in the condition search
    Case("qwen/Qwen3.5-nothink.jinja", REASONING_THEN_PLAIN, {"enable_thinking": False}, turn=3),
    *(
        Case(path, *TWO_ARGUMENTS)
        for path in (
            "gemma/gemma-4-31B-it.2026-04-10.jinja",
            "gemma/gemma-4-31B-it-interleaved.2026-04-10.jinja",
            "gemma/gemma-4-canonical-2026-07-09.jinja",
            "gemma/axolotl-gemma4.2026-04-02.jinja",
            "gemma/axolotl-gemma4.2026-05-27.jinja",
            "gemma/trl-diffusion_gemma_training.jinja",
            "other/MiniCPM3-4B.jinja",
        )
    ),
    *(
        Case(path, *TWO_STRING_CALLS)
        for path in ("other/functionary-medium-v3.2.jinja", "deepseek/DeepSeek-V3.1.jinja")
    ),
    *(
        Case(path, *TWO_OBJECT_CALLS)
        for path in (
            "deepseek/DeepSeek-V3.2.llamacpp.jinja",
            "deepseek/DeepSeek-V4-Flash-0731.llamacpp.jinja",
            "deepseek/DeepSeek-V4.llamacpp-2026-06-29.jinja",
            "deepseek/DeepSeek-V4.llamacpp-2026-07-22.jinja",
        )
    ),
    Case("other/cogito-3b.gguf.jinja", *CALL_WITHOUT_ID),
    # a list-valued template option that changes only the generation prompt
    Case("granite/granite-3.3-2b-instruct.gguf.jinja", PLAIN_TURNS, {"controls": ["citations"]}, turn=3),
    Case("other/AI21-Jamba-Large-1.6.jinja", PLAIN_TURNS),
    Case("other/axolotl-jamba.jinja", PLAIN_TURNS),
]


def _read(corpus_dir: Path, path: str) -> str:
    file = corpus_dir / "templates" / path
    if not file.exists():
        pytest.skip(f"{path} is not in this corpus")
    with open(file, encoding="utf-8", newline="") as handle:
        return handle.read()


def _words(message: dict[str, Any]) -> list[str]:
    """What the model wrote in a turn: content, reasoning, call names and argument values."""
    words = [message.get("content") or "", message.get("reasoning_content") or ""]
    for call in message.get("tool_calls") or ():
        arguments = call["function"]["arguments"]
        values = json.loads(arguments) if isinstance(arguments, str) else arguments
        words += [call["function"]["name"], *values.values()]
    return [word.strip() for word in words if word.strip()]


def _judge(original: str, patched: str, case: Case) -> tuple[set[int], list[str]]:
    """(the assistant turns judged, the problems found).

    A prefix-preserving turn by the prefix rule; the final turn, when its generation prompt
    disagrees with its render (SPEC §3's mismatch), by its shape: one span holds everything the
    model wrote in it.
    """
    full = render(original, case.messages, **case.kwargs)
    text, spans = render_with_spans(patched, case.messages, **case.kwargs)
    assert text == full, "the patched template renders differently"
    spans = merge_spans(spans)
    judged: set[int] = set()
    problems: list[str] = []
    for index, message in enumerate(case.messages):
        if message["role"] != "assistant":
            continue
        prompt = render(original, case.messages[:index], add_generation_prompt=True, **case.kwargs)
        final = render(original, case.messages[: index + 1], **case.kwargs)
        generated = final[len(prompt) :]
        core = generated.rstrip()
        if final.startswith(prompt) and core and full.startswith(core, len(prompt)):
            start, end = len(prompt), len(prompt) + len(core)
            limit = start + len(generated)
        elif index == len(case.messages) - 1 and not final.startswith(prompt):
            lower = next(i for i, (a, b) in enumerate(zip(prompt, final, strict=False)) if a != b)
            found = [(full.find(word, lower), word) for word in _words(message)]
            assert all(position >= 0 for position, _ in found), found
            start = min(position for position, _ in found)
            end = max(position + len(word) for position, word in found)
            hits = [s for s in spans if s[0] <= start and end <= s[1]]
            judged.add(index)
            if not hits:
                marked = [full[a:b] for a, b in spans if a < end and start < b]
                problems.append(f"turn {index}: {full[start:end]!r} is not in one span; marked {marked!r}")
            continue
        else:
            continue
        judged.add(index)
        hits = [s for s in spans if s[0] < end and start < s[1]]
        if not (len(hits) == 1 and hits[0][0] == start and end <= hits[0][1] <= limit):
            shown = [full[a:b] for a, b in hits]
            problems.append(f"turn {index}: expected {full[start:end]!r}, marked {shown!r}")
    return judged, problems


@pytest.mark.parametrize("case", FIXED, ids=[f"{c.path}" for c in FIXED])
def test_fixed_corpus_case(corpus_dir: Path, case: Case) -> None:
    original = _read(corpus_dir, case.path)
    result = patch_template(original)
    # rules 1–3 hold on every probe (full coverage, which "verified" also asks, is not this case's)
    assert result.passed and result.changed, result.reasons
    judged, problems = _judge(original, result.patched, case)
    assert case.turn in judged, "the conversation no longer shows the case"
    assert not problems, problems


def test_leading_newline_that_completes_the_prompt_is_refused(corpus_dir: Path) -> None:
    """DeepSeek-R1-Distill's generation prompt ends ``<｜Assistant｜>\\n`` while its render of a turn
    has ``<｜Assistant｜>`` + content: only content that starts with a newline continues the prompt,
    so where the span starts depends on the message's first character. The patch follows that at
    line 38 (a test on the content's first character). After tool results the template writes
    ``<｜tool▁outputs▁end｜>\\n`` whether or not a prompt is asked for, and a turn that does not
    start with a newline there puts the span before that text: no marker follows it (line 31)."""
    original = _read(corpus_dir, "deepseek/DeepSeek-R1-Distill-Qwen-32B.llamacpp-2025-01-30.jinja")
    result = patch_template(original)
    assert not result.verified and not result.changed
    assert "message['content']" in result.reasons[0] and "line 31" in result.reasons[0], result.reasons


@pytest.mark.parametrize(
    "path",
    [
        "nemotron/NVIDIA-Nemotron-3-Nano-30B-A3B.jinja",
        "nemotron/NVIDIA-Nemotron-3-Ultra.jinja",
        "nemotron/trl-nemotron_3_super_training.jinja",
    ],
)
def test_thinking_prefix_inside_one_content_string_follows_the_flag_and_the_text(
    corpus_dir: Path, path: str
) -> None:
    """Nemotron 3 writes ``"<think></think>" ~ content`` (or ``"<think>\\n" ~ reasoning ~ …``) as one
    string, and its prompt ends ``<think></think>`` with thinking off but ``<think>\\n`` with it on.
    The span starts inside that string at a place that depends on the flag and on how the string
    starts; the patch tests both, passes every probe, and the independent judge finds it right on
    random conversations under every flag value (an earlier placement that passed fewer probes was
    wrong on thinking-off tool calls, ``tests/probes/test_flag_probes.py``)."""
    from independent.judge import judge_seeds_under_flag

    original = _read(corpus_dir, path)
    result = patch_template(original)
    assert result.passed and result.changed, result.reasons
    assert "[:8] == " in result.patched or "[:15] == " in result.patched
    assert judge_seeds_under_flag(original, result.patched, 6, "enable_thinking") > 0


@pytest.mark.parametrize("path", ["other/AI21-Jamba-Large-1.6.jinja", "other/axolotl-jamba.jinja"])
def test_end_of_turn_written_by_the_next_message_is_in_the_expected_span(corpus_dir: Path, path: str) -> None:
    """SPEC §3: Jamba writes ``<|eom|>`` when the next message starts; it is still the turn's.

    With ``documents`` the template moves its documents block to the last user message, so
    earlier turns are rewritten; their span starts after the header, not at the ``<|eom|>`` that
    ends the message before, which the same iteration writes first."""
    from templatefix.conversation import Probe
    from templatefix.oracle import expected_turns

    original = _read(corpus_dir, path)
    expectation = expected_turns(original, Probe("plain", tuple(PLAIN_TURNS)))
    first = expectation.turns[0]
    assert first.kind == "exact"
    assert expectation.text[first.start : first.end] == " first answer<|eom|>"
    from templatefix.shapes import make_probe

    documents = make_probe("documents").kwargs
    rewritten = expected_turns(original, Probe("documents", tuple(PLAIN_TURNS), documents))
    turn = rewritten.turns[0]
    assert turn.kind == "rewritten"
    assert rewritten.text[turn.start : turn.end].startswith(" first answer")


def test_header_of_a_turn_whose_prompt_is_not_its_header_stays_out(corpus_dir: Path) -> None:
    """With thinking on, Gemma 4's prompt after a tool result is ``<|channel>thought\\n`` while the
    template renders the answer as a new ``<|turn>model\\n`` turn: a mismatch, placed by rule 3's
    shape. Its header is the one other turns' prompts end with, and stays outside the span."""
    path = "gemma/gemma-4-canonical-2026-07-09.jinja"
    original = _read(corpus_dir, path)
    messages = [
        _user("weather please"),
        _assistant("", tool_calls=[_call("get_weather", {"city": "paris"})]),
        {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": "sunny"},
        _assistant("it is sunny", reasoning_content="the tool said sunny"),
    ]
    case = Case(path, messages, {"tools": _tools("get_weather"), "enable_thinking": True}, turn=3)
    prompt = render(original, messages[:3], add_generation_prompt=True, **case.kwargs)
    final = render(original, messages, **case.kwargs)
    assert not final.startswith(prompt), "the conversation no longer shows the case"
    result = patch_template(original)
    assert result.passed and result.changed, result.reasons
    judged, problems = _judge(original, result.patched, case)
    assert case.turn in judged and not problems, problems
    text, spans = render_with_spans(result.patched, messages, **case.kwargs)
    header = text.rindex("<|turn>model\n")
    assert all(not (start <= header < end) for start, end in merge_spans(spans)), "header in the span"


@pytest.mark.parametrize("path", ["other/AI21-Jamba-Large-1.6.jinja", "other/axolotl-jamba.jinja"])
def test_rewritten_turn_keeps_the_end_of_turn_the_next_message_writes(corpus_dir: Path, path: str) -> None:
    """With documents, Jamba writes them before the last user message, so earlier turns render
    differently in history (rewritten). Their ``<|eom|>`` is still written when the next message
    starts, and is still theirs: with that conversation among the probes the patch is not
    refused, and every span is judged right."""
    from templatefix.conversation import Probe

    original = _read(corpus_dir, path)
    kwargs = {"documents": DOCUMENTS, "tools": _tools("get_weather")}
    probe = Probe("documents_and_calls", tuple(DOCUMENTS_AND_CALLS), kwargs)
    result = patch_template(original, probes=[probe])
    assert result.passed and result.changed, result.reasons
    judged, problems = _judge(original, result.patched, Case(path, DOCUMENTS_AND_CALLS, kwargs, turn=5))
    assert 5 in judged and not problems, problems


#: Templates that write text after their message loop for the turn that may come next (the
#: end-of-sequence token, the next assistant header), each once marked in every render.
AFTER_THE_LOOP = [
    "phi/Phi-3-mini-4k-instruct.jinja",  # eos_token when there is no generation prompt
    "other/axolotl-metharme.jinja",  # the same, after a system prompt of its own
    "other/Magicoder-S-DS-6.7B.jinja",  # "@@ Response" always
    "other/starcoder2-15b-instruct-v0.1.jinja",  # "### Response" always
    "other/Hammer2.1.jinja",  # the next header always
    "other/dolphin-2.9-llama3-8b.gguf.jinja",  # the next header always
    "nemotron/Nemotron-Mini-4B-Instruct.gguf.jinja",
]


@pytest.mark.parametrize("path", AFTER_THE_LOOP)
def test_render_ending_with_a_user_message_marks_only_earlier_turns(corpus_dir: Path, path: str) -> None:
    """No assistant turn owns what a render ending with a user message writes after the earlier
    turns' outputs: the user's text and everything after it hold no span, with or without the
    generation prompt. The answered turn keeps one span from the end of its ``P``, and the
    training render is judged by the P/F prefix rule."""
    original = _read(corpus_dir, path)
    result = patch_template(original)
    assert result.passed and result.changed, result.reasons
    for count in (1, 3):  # a lone question; a question after an answered one
        messages = PLAIN_TURNS[:count]
        for prompt in (False, True):
            full = render(original, messages, add_generation_prompt=prompt)
            text, spans = render_with_spans(result.patched, messages, add_generation_prompt=prompt)
            assert text == full, "the patched template renders differently"
            question = full.rindex(messages[-1]["content"])
            late = [full[a:b] for a, b in merge_spans(spans) if b > question]
            assert not late, f"M[:{count}] add_generation_prompt={prompt}: marked {late!r} after the question"
            if count == 3:  # the answered turn keeps one span, from the end of its P
                asked = render(original, PLAIN_TURNS[:1], add_generation_prompt=True)
                assert [a for a, _ in merge_spans(spans)] == [len(asked)], full[len(asked):]
    judged, problems = _judge(original, result.patched, Case(path, PLAIN_TURNS, turn=3))
    assert 3 in judged and not problems, problems


def test_one_accumulated_output_cannot_be_marked(corpus_dir: Path) -> None:
    """Reka Edge builds the whole conversation in ``ns.out`` and writes it with one ``{{ ns.out }}``.
    Markers go only in the top-level output stream, around whole outputs or at fixed offsets into
    one; here each turn starts at an offset into that single output that moves with the length of
    every message before it (counted from its start) or after it (from its end), however many such
    offsets a condition chooses among. No placement can follow it, so
    the patch is refused, naming the output."""
    from templatefix.analysis.regions import instrumented_for
    from templatefix.conversation import Probe
    from templatefix.oracle import expected_turns

    original = _read(corpus_dir, "other/Reka-Edge.jinja")
    instrumented = instrumented_for(original)
    messages = [c for c in instrumented.atoms if not c.loops]
    assert len(instrumented.atoms) == len(messages) == 1, "the template writes more than one output"
    starts, tails = set(), set()
    for question, answer in (("hi", "fine"), ("a much longer question", "a much longer answer than that")):
        expectation = expected_turns(original, Probe("p", (_user(question), _assistant(answer))))
        (turn,) = expectation.turns
        starts.add(turn.start)
        tails.add(len(expectation.text) - turn.start)
    assert len(starts) == 2 and len(tails) == 2
    result = patch_template(original)
    assert not result.verified and not result.changed
    assert "ns.out" in result.reasons[0], result.reasons


@pytest.mark.parametrize(
    "path", ["gemma/shieldgemma-27b.gguf.jinja", "granite/granite-guardian-3.0-2b.gguf.jinja"]
)
def test_guard_classifier_prompt_renders_no_generated_turn(corpus_dir: Path, path: str) -> None:
    """A guard model's template renders one classification prompt about the last message: the
    assistant message is the text being judged, and what the model generates (its verdict) is in no
    render. So the training render of an assistant turn never continues its generation prompt
    (every turn is a mismatch, SPEC §3): no span can be exact, and marking the judged text would
    train the model to write its input. The patch is refused."""
    original = _read(corpus_dir, path)
    kwargs = {"guideline": "no harm"} if "shieldgemma" in path else {}
    conversations = [
        [_user("is this fine"), _assistant("it is fine")],
        [_user("first"), _assistant("reply one"), _user("second"), _assistant("reply two")],
    ]
    checked = 0
    for messages in conversations:
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = render(original, messages[:index], add_generation_prompt=True, **kwargs)
            final = render(original, messages[: index + 1], **kwargs)
            assert not final.startswith(prompt)
            checked += 1
    assert checked == 3
    result = patch_template(original)
    assert not result.verified and not result.changed


@pytest.mark.parametrize(
    "path", ["command-r/c4ai-command-r-plus.tool_use.jinja", "command-r/c4ai-command-r-v01.tool_use.jinja"]
)
def test_rich_tool_schema_reaches_the_union_separator(corpus_dir: Path, path: str) -> None:
    """Command R writes a parameter whose ``type`` is a list as ``Union[str,int]``: the ``,`` between
    the types is reached by the battery's tool schema with a list of types, so every output is
    reached and the patch is verified (it was unverified code)."""
    result = patch_template(_read(corpus_dir, path))
    assert result.verified, result.reasons
    assert result.status in ("exact", "flagged")
    assert not result.unverified_code
