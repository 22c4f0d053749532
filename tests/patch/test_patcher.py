"""The patcher: exact markers, verified by the verifier and cross-checked here independently."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from support.strategies import conversations, tools_for

from templatefix.errors import RenderError, TemplatefixError
from templatefix.jinja.markers import has_markers
from templatefix.patch.api import patch_named_templates, patch_template
from templatefix.patch.strip import strip_generation_markers
from templatefix.probes import probe_battery
from templatefix.render import merge_spans, render, render_with_spans

REFERENCE = sorted((Path(__file__).resolve().parents[2] / "templates").glob("*.jinja"))

#: Official templates of the first families: every one must be patched and pass rules 1–3 on every
#: probe (issue #3); whether the probes also reach every output (SPEC §4, "verified") is measured
#: by tests/probes/test_coverage.py and reported per template.
MUST_VERIFY = [
    "gpt-oss/openai-gpt-oss-20b.2025-08-04.jinja",
    "gpt-oss/openai-gpt-oss-20b.2025-08-05.jinja",
    "gpt-oss/openai-gpt-oss-20b.2025-08-07.jinja",
    "gpt-oss/openai-gpt-oss-20b.2025-08-08.jinja",
    "qwen/Qwen1.5-72B-Chat.jinja",
    "qwen/Qwen2-Instruct.jinja",
    "qwen/Qwen2.5-7B-Instruct.jinja",
    "qwen/Qwen2.5-VL-7B-Instruct.jinja",
    "qwen/Qwen3-0.6B.jinja",
    "qwen/Qwen3.later-revision.jinja",
    "qwen/Qwen3-Instruct-2507.jinja",
    "qwen/Qwen3-Coder.jinja",
    "qwen/Qwen3-VL.jinja",
    "qwen/Qwen3.5-4B.jinja",
    "qwen/Qwen3.5-nothink.jinja",
    "qwen/Qwen3.6.jinja",
    "qwen/QwQ-32B.jinja",
    "gemma/gemma-2-2b-it.jinja",
    "gemma/gemma-3-4b-it.jinja",
    "gemma/gemma-3n-E4B-it.jinja",
    "gemma/gemma-4-31B-it.2026-04-10.jinja",
    "gemma/gemma-4-31B-it-interleaved.2026-04-04.jinja",
    "gemma/gemma-4-31B-it-interleaved.2026-04-10.jinja",
    "gemma/gemma-4-canonical-2026-07-09.jinja",
    # reached through their path conditions (``templatefix.solve``), or their unreachable
    # outputs proven unsatisfiable
    "llama/Llama-3.1-8B-Instruct.jinja",
    "llama/Llama-3.2-11B-Vision-Instruct.jinja",
    "llama/Llama-3.2-90B-Vision-Instruct.gguf.jinja",
    "llama/Llama-4-Scout-17B-16E-Instruct.gguf.jinja",
    "deepseek/DeepSeek-R1.jinja",
    "deepseek/DeepSeek-V3.jinja",
    "deepseek/DeepSeek-V3.1.jinja",
    "mistral/Mistral-Small-3.2-24B-Instruct-2506.jinja",
    "phi/Phi-4-mini-instruct.gguf.jinja",
    "phi/Phi-4-mini-reasoning.gguf.jinja",
]

#: Share of the checkable corpus whose patch must pass rules 1–3 (measured: see CHANGELOG).
MIN_PASSED_SHARE = 0.94


def _read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


def _renders_identically(original: str, patched: str) -> bool:
    """SPEC rule 1 on the probe battery, both with and without the generation prompt."""
    for probe in probe_battery(original):
        for generation_prompt in (False, True):
            try:
                expected = render(
                    original, probe.messages, add_generation_prompt=generation_prompt, **probe.kwargs
                )
            except RenderError:
                continue
            if (
                render(patched, probe.messages, add_generation_prompt=generation_prompt, **probe.kwargs)
                != expected
            ):
                return False
    return True


@pytest.mark.parametrize("path", REFERENCE, ids=[p.stem for p in REFERENCE])
def test_reference_templates_are_patched_and_verified(path: Path) -> None:
    original = _read(path)
    result = patch_template(original)
    assert result.verified, result.reasons
    assert result.changed and has_markers(result.patched)
    assert _renders_identically(original, result.patched)
    # idempotent: the patched template is kept as it is
    again = patch_template(result.patched)
    # passed, not verified: coverage is then measured on the patched template, whose role branches
    # duplicate outputs that no probe may reach on both sides
    assert again.passed and again.patched == result.patched and not again.changed
    # removing the markers keeps the render
    assert _renders_identically(original, strip_generation_markers(result.patched))


@pytest.mark.parametrize("path", REFERENCE, ids=[p.stem for p in REFERENCE])
@pytest.mark.parametrize(
    "policy",
    [
        {"turns": "last"},
        {"turns": "last_message"},
        {"trailing_whitespace": "in"},
        {"reasoning": "not_trained"},
        {"tool_calls": "not_trained"},
        {"reasoning": "final_channel_only"},
    ],
)
def test_policies_are_verified_under_their_own_spans(path: Path, policy: dict[str, str]) -> None:
    result = patch_template(_read(path), **policy)
    assert result.verified, result.reasons
    assert result.policy.to_dict()[next(iter(policy))] == next(iter(policy.values()))


def test_last_turn_policy_marks_one_turn_only() -> None:
    template = _read(REFERENCE[0].parent / "llama3.jinja")
    patched = patch_template(template, turns="last").patched
    messages = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
        {"role": "assistant", "content": "four"},
    ]
    text, spans = render_with_spans(patched, messages)
    merged = merge_spans(spans)
    assert len(merged) == 1 and text[slice(*merged[0])].startswith("four")


def test_shared_expression_is_split_by_role() -> None:
    template = (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    result = patch_template(template)
    assert result.verified, result.reasons
    text, spans = render_with_spans(
        result.patched, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    )
    assert [text[slice(*s)] for s in merge_spans(spans)] == ["yo<|im_end|>"]


def test_header_inside_a_string_literal_is_split() -> None:
    template = (
        "{% for m in messages %}{% if m.role == 'user' %}"
        "{{ '<|start|>user<|message|>' + m.content + '<|end|>' }}"
        '{% else %}{{ "<|start|>assistant<|channel|>final<|message|>" + m.content + "<|return|>" }}'
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<|start|>assistant{% endif %}"
    )
    result = patch_template(template)
    assert result.verified, result.reasons
    assert '"<|start|>assistant"' in result.patched  # cut inside the literal, original quotes kept
    text, spans = render_with_spans(
        result.patched, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    )
    assert [text[slice(*s)] for s in merge_spans(spans)] == ["<|channel|>final<|message|>b<|return|>"]


def test_named_templates_are_each_patched() -> None:
    chatml = _read(REFERENCE[0].parent / "chatml.jinja")
    gemma = _read(REFERENCE[0].parent / "gemma.jinja")
    results = patch_named_templates(
        [{"name": "default", "template": chatml}, {"name": "tool_use", "template": gemma}]
    )
    assert set(results) == {"default", "tool_use"} and all(r.verified for r in results.values())


def test_template_without_assistant_output_is_refused_with_a_reason() -> None:
    result = patch_template("{% for m in messages %}{{ m.role }}{% endfor %}")
    assert not result.verified and not result.changed
    assert "never renders" in result.reasons[0]


def test_markers_inside_a_macro_are_never_placed_there() -> None:
    template = (
        "{% macro turn(m) %}<{{ m.role }}>{{ m.content }}</s>{% endmacro %}"
        "{% for m in messages %}{{ turn(m) }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    result = patch_template(template)
    assert result.passed, result.reasons  # markers at the call site instead
    macro_body = result.patched.split("{% endmacro %}")[0]
    assert "generation" not in macro_body


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations())
def test_patched_reference_templates_render_identically_on_random_conversations(messages: list[dict]) -> None:
    for path in REFERENCE:
        original = _read(path)
        patched = _patched(str(path))
        kwargs = {"tools": tools_for(messages)}
        for generation_prompt in (False, True):
            try:
                expected = render(original, messages, add_generation_prompt=generation_prompt, **kwargs)
            except RenderError:
                continue
            assert render(patched, messages, add_generation_prompt=generation_prompt, **kwargs) == expected


_PATCHED: dict[str, str] = {}


def _patched(path: str) -> str:
    if path not in _PATCHED:
        _PATCHED[path] = patch_template(_read(Path(path))).patched
    return _PATCHED[path]


def _patch_corpus_file(path: str) -> tuple[str, str, bool, bool, str]:
    """(name, status, passed, renders identically, first reason); crashes become 'crash'.

    ``passed`` is rules 1–3 on every probe; ``verified`` also asks the probes to reach every output
    (SPEC §4), which ``tests/probes/test_coverage.py`` measures.
    """
    text = _read(Path(path))
    try:
        result = patch_template(text)
    except TemplatefixError as error:
        return path, "refused", False, True, str(error)
    except Exception as error:  # noqa: BLE001 - a crash is what this test looks for
        return path, "crash", False, False, f"{type(error).__name__}: {error}"
    identical = _renders_identically(text, result.patched) if result.passed else True
    return path, result.status, result.passed, identical, (result.reasons or [""])[0]


def test_corpus_acceptance(corpus_dir: Path) -> None:
    root = corpus_dir / "templates"
    paths = sorted(str(p) for p in root.rglob("*.jinja"))
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        rows = list(pool.map(_patch_corpus_file, paths, chunksize=4))
    by_name = {os.path.relpath(path, root): row for path, *row in [(r[0], *r[1:]) for r in rows]}
    crashes = [name for name, row in by_name.items() if row[0] == "crash"]
    assert not crashes, crashes
    # a patch that passed renders exactly like the original, checked here without the verifier
    assert not [name for name, row in by_name.items() if row[1] and not row[2]]
    # every official gpt-oss, Qwen and Gemma template verified: rules 1–3 on every probe AND every
    # output that writes text reached (SPEC §4)
    verified = ("exact", "flagged")
    missing = [name for name in MUST_VERIFY if name in by_name and by_name[name][0] not in verified]
    assert not missing, {name: (by_name[name][0], by_name[name][3]) for name in missing}
    uncheckable = [name for name, row in by_name.items() if "rejects every probe" in row[3]]
    passed = sum(1 for row in by_name.values() if row[1])
    share = passed / (len(by_name) - len(uncheckable))
    print(
        f"\ncorpus: {passed}/{len(by_name) - len(uncheckable)} checkable templates pass ({share:.1%})"
    )
    assert share >= MIN_PASSED_SHARE


#: Phi-3's shape: the end-of-sequence token after the message loop, without a generation prompt.
EOS_AFTER_LOOP = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}"
)
ASKED = [{"role": "user", "content": "hi"}]
ANSWERED = [*ASKED, {"role": "assistant", "content": "yo"}]


def _marked(template: str, messages: list[dict], prompt: bool = False) -> list[str]:
    text, spans = render_with_spans(template, messages, add_generation_prompt=prompt, eos_token="</s>")
    return [text[slice(*span)] for span in merge_spans(spans)]


def test_text_after_the_loop_is_marked_only_when_an_assistant_turn_ends_the_conversation() -> None:
    """The eos token ends the last assistant turn (F = P + "yo<|end|>\\n</s>"), but after a user
    message no assistant turn owns it: a prompt render has no span."""
    result = patch_template(EOS_AFTER_LOOP, special_tokens={"eos_token": "</s>"})
    assert result.verified, result.reasons
    assert _marked(result.patched, ANSWERED) == ["yo<|end|>\n</s>"]
    assert _marked(result.patched, ASKED) == []
    assert _marked(result.patched, ASKED, prompt=True) == []
    assert _marked(result.patched, [*ANSWERED, {"role": "user", "content": "more"}]) == ["yo<|end|>"]


@pytest.mark.parametrize(
    "reassign",
    [
        "{% if messages[0].role == 'system' %}{% set messages = messages[1:] %}{% endif %}",
        "{% set messages = messages | selectattr('role', 'ne', 'tool') | list %}",
    ],
)
def test_reassigned_messages_are_asked_as_the_template_sees_them(reassign: str) -> None:
    """Where the template assigns ``messages`` itself, how the conversation ends is read from the
    list it sees at the output: the eos token is marked only when that list ends with an
    assistant message, also for a system prompt alone (an empty list after the slice)."""
    result = patch_template(reassign + EOS_AFTER_LOOP, special_tokens={"eos_token": "</s>"})
    assert result.verified, result.reasons
    system = {"role": "system", "content": "be brief"}
    assert _marked(result.patched, ANSWERED) == ["yo<|end|>\n</s>"]
    assert _marked(result.patched, [system, *ANSWERED]) == ["yo<|end|>\n</s>"]
    assert _marked(result.patched, ASKED) == []
    assert _marked(result.patched, [system]) == []
    assert _marked(result.patched, [*ANSWERED, {"role": "user", "content": "more"}]) == ["yo<|end|>"]
    if "selectattr" in reassign:  # tool messages are dropped: the assistant still ends the list
        tool = {"role": "tool", "content": "sunny"}
        assert _marked(result.patched, [*ANSWERED, tool]) == ["yo<|end|>\n</s>"]


#: Text parts joined by a separator that every role's parts share (Llama Guard's shape).
PARTS_SEPARATOR = (
    "{%- for m in messages -%}<|{{ m.role }}|>"
    "{%- for p in m.content | selectattr('type', 'equalto', 'text') -%}{{ p.text }}"
    "{%- if not loop.last %}{{ '\\n\\n' }}{% endif -%}{%- endfor -%}<|end|>"
    "{%- endfor -%}{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def test_a_separator_between_parts_is_marked_only_in_assistant_turns() -> None:
    """The probes give users two text parts too, so the separator is seen outside there."""
    result = patch_template(PARTS_SEPARATOR)
    assert result.verified, result.reasons

    def two(a: str, b: str) -> list[dict]:
        return [{"type": "text", "text": a}, {"type": "text", "text": b}]

    messages = [
        {"role": "user", "content": two("ua", "ub")},
        {"role": "assistant", "content": two("aa", "ab")},
    ]
    assert _marked(result.patched, messages) == ["aa\n\nab<|end|>"]


#: Gemma 4's shape: an assistant's iteration writes its calls, then the tool results that answer
#: them (later messages), then its own text.
FOLDED_RESULTS = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'user' -%}<u>{{ m.content }}</u>"
    "{%- elif m.role == 'assistant' -%}<a>"
    "{%- for c in m.tool_calls or [] -%}<call>{{ c.function.name }}"
    "{%- if c.function.arguments is string -%}{{ c.function.arguments }}"
    "{%- else -%}{{ c.function.arguments | tojson }}{%- endif -%}</call>{%- endfor -%}"
    "{%- if m.tool_calls -%}{%- for t in messages[loop.index0 + 1:] -%}"
    "{%- if t.role == 'tool' -%}<res>{{ t.content }}</res>{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- if m.content is string -%}{{ m.content }}"
    "{%- else -%}{%- for p in m.content -%}{{ p.text }}{%- endfor -%}{%- endif -%}</a>"
    "{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}<a>{%- endif -%}"
)


def test_text_written_after_the_tool_results_stays_the_turns_in_every_render() -> None:
    """The calls, then the answer after the tool results: both are the turn's, the results and
    their markup are not (SPEC §7), also when the conversation ends with a tool result or a
    user's question (a prompt render)."""
    result = patch_template(FOLDED_RESULTS)
    assert result.verified, result.reasons
    call = {
        "role": "assistant", "content": "textword",
        "tool_calls": [{"type": "function", "function": {"name": "fname", "arguments": {"q": "argword"}}}],
    }
    tool = {"role": "tool", "content": "resultword"}
    expected = ['<call>fname{"q": "argword"}</call>', "textword</a>"]
    for tail in ([], [{"role": "user", "content": "more"}], [{"role": "assistant", "content": "bword"}]):
        marked = _marked(result.patched, [*ASKED, call, tool, *tail])
        assert marked[:2] == expected, tail
        assert not any("resultword" in piece or "<res>" in piece for piece in marked)


def test_text_written_after_the_tool_results_passes_the_independent_judge() -> None:
    from independent.conversations import random_conversation
    from independent.sweep import judge_both

    patched = patch_template(FOLDED_RESULTS).patched
    judged = 0
    for seed in range(40):
        training, other = judge_both(FOLDED_RESULTS, patched, random_conversation(seed), {}, prefix_rule=True)
        assert not other, [str(f) for f in other]
        if training is not None:
            assert not training, [str(f) for f in training]
            judged += 1
    assert judged >= 20


def test_prompt_renders_are_observed_only_when_a_placement_marks_past_the_question() -> None:
    """The cheap look that decides whether prompt renders are observed: a patched ChatML template
    marks nothing after the last user message; an unconditionally marked eos token does."""
    from templatefix.patch.observe import marks_after_prompt_text

    chatml = _read(REFERENCE[0].parent / "chatml.jinja")
    probes = probe_battery(chatml)
    assert not marks_after_prompt_text(patch_template(chatml).patched, probes)
    always = EOS_AFTER_LOOP.replace("{{ eos_token }}", "{% generation %}{{ eos_token }}{% endgeneration %}")
    assert marks_after_prompt_text(always, probes, {"eos_token": "</s>"})


def test_eos_after_messages_the_template_does_not_write_stays_the_turns() -> None:
    """A template that writes no tool messages renders ``[user, assistant, tool]`` exactly as
    ``[user, assistant]``: the eos token there is still the assistant turn's (SPEC §3), while
    after a user message or a system prompt it is no turn's."""
    template = (
        "{% for m in messages %}{% if m.role != 'tool' %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% else %}{{ eos_token }}{% endif %}"
    )
    result = patch_template(template, special_tokens={"eos_token": "</s>"})
    assert result.verified, result.reasons
    tool = {"role": "tool", "content": "sunny"}
    assert _marked(result.patched, [*ANSWERED, tool]) == ["yo<|end|></s>"]
    assert _marked(result.patched, ASKED) == []
    assert _marked(result.patched, [{"role": "system", "content": "be brief"}]) == []
