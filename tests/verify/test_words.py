"""SPEC §7, the word rule (``templatefix.words``), and the verifier that applies it by rule."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from support.strategies import random_probes

from templatefix.analysis.expectations import ProbeExpectation, TurnExpectation
from templatefix.errors import RenderError
from templatefix.patch.api import patch_template
from templatefix.policy import Policy
from templatefix.render import merge_spans, render_with_spans
from templatefix.shapes import make_probe
from templatefix.words import check_words, probe_words

verify_module = importlib.import_module("templatefix.verify")  # the module, not the function

REFERENCE = Path(__file__).resolve().parents[2] / "templates"

CALL = {
    "id": "call00001", "type": "function", "function": {"name": "look_kilo111", "arguments": {"q": "echo105"}}
}
CONVERSATION = [
    {"role": "system", "content": "alpha101"},
    {"role": "user", "content": [{"type": "text", "text": "bravo102"}]},
    {"role": "assistant", "content": "charlie103", "reasoning_content": "delta104", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call00001", "name": "look_kilo111", "content": "foxtrot106"},
    {"role": "assistant", "content": [{"type": "text", "text": t} for t in ("golf107", "hotel108")]},
]
TOOLS = [{"type": "function", "function": {"name": "look_kilo111", "description": "india109"}}]


def _owners(policy: Policy) -> dict[str, tuple[str, bool | None]]:
    return {w.text: (w.field, w.inside) for w in probe_words(CONVERSATION, {"tools": TOOLS}, policy)}


def test_every_field_has_its_owner_and_policy_side():
    owners = _owners(Policy())
    assert owners["alpha101"] == ("content", False)
    assert owners["bravo102"] == ("content[0]", False)
    assert owners["charlie103"] == ("content", True)
    assert owners["delta104"] == ("reasoning", True)
    assert owners["echo105"] == ("tool_calls[0].arguments", True)
    assert owners["foxtrot106"] == ("content", False)
    assert owners["hotel108"] == ("content[1]", True)
    assert owners["india109"] == ("tools", False)
    # a tool's name is given by its definition, the call and the result: not judged
    assert "kilo111" not in owners


@pytest.mark.parametrize(
    ("policy", "outside"),
    [
        (Policy(reasoning="not_trained"), {"delta104"}),
        (Policy(tool_calls="not_trained"), {"echo105"}),
        (Policy(reasoning="final_channel_only"), {"charlie103", "delta104", "echo105"}),
        (Policy(turns="last"), set()),
        (Policy(turns="last_message"), {"charlie103", "delta104", "echo105"}),
    ],
)
def test_policies_leave_their_fields_outside(policy: Policy, outside: set[str]):
    assistant_words = {"charlie103", "delta104", "echo105", "golf107", "hotel108"}
    owners = _owners(policy)
    assert {word for word in assistant_words if owners[word][1] is False} == outside
    assert {word for word in assistant_words if owners[word][1]} == assistant_words - outside


def test_a_word_on_the_wrong_side_is_named_with_its_message_field_and_side():
    text = "S alpha101 U bravo102 A charlie103"
    assert check_words(text, [(24, 34)], CONVERSATION[:3]) == []
    problems = [p.describe() for p in check_words(text, [(11, 34)], CONVERSATION[:3])]
    assert problems == [
        "word 'bravo102' of message 1 (user) content[0] is inside a span at offset 13; it must be outside"
    ]
    problems = [p.describe() for p in check_words(text, [(28, 34)], CONVERSATION[:3])]
    assert problems == [
        "word 'charlie103' of message 2 (assistant) content is outside a span at offset 24; it must be inside"
    ]


def test_a_word_cut_by_a_span_edge_is_wrong_either_way():
    text = "U bravo102 A charlie103"
    messages = [{"role": "user", "content": "bravo102"}, {"role": "assistant", "content": "charlie103"}]
    assert len(check_words(text, [(6, 23)], messages)) == 1  # user word touched
    assert len(check_words(text, [(15, 23)], messages)) == 1  # assistant word cut


def test_verifier_judges_words_by_rule_not_by_the_oracle(monkeypatch: pytest.MonkeyPatch):
    """An oracle that wrongly expects the whole render marked: spans agree with it, words do not."""
    # text before the block: transformers 4.x records no span for a block opening at offset 0
    template = (
        "> {% generation %}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% endgeneration %}"
    )
    probe = make_probe("single_turn")

    def whole_render(reference, probe, policy=None, special_tokens=None):
        text = render_with_spans(template, list(probe.messages))[0]
        turn = TurnExpectation(
            message_index=1, kind="exact", trained=True, start=2, end_out=len(text), end_in=len(text),
            end=len(text), end_of_turn="", end_of_turn_range=None, located_by="prefix",
        )
        return ProbeExpectation(probe.name, text, [turn], {})

    monkeypatch.setattr(verify_module, "expected_turns", whole_render)
    report = verify_module.verify(template, probes=[probe])
    assert not report.passed
    expected = "words: word 'alpha101' of message 0 (user) content is inside"
    assert any(expected in line for line in report.failures())


REFERENCE_TEMPLATES = sorted(REFERENCE.glob("*.jinja"))
POLICIES = [
    Policy(),
    Policy(turns="last"),
    Policy(turns="last_message"),
    Policy(reasoning="not_trained"),
    Policy(reasoning="final_channel_only"),
    Policy(tool_calls="not_trained"),
]


@pytest.mark.parametrize("path", REFERENCE_TEMPLATES, ids=[p.stem for p in REFERENCE_TEMPLATES])
@pytest.mark.parametrize("policy_index", range(len(POLICIES)))
def test_reference_templates_place_every_word_under_every_policy(path: Path, policy_index: int):
    """Random conversations no probe generator made, judged by the word rule alone."""
    policy = POLICIES[policy_index]
    result = patch_template(path.read_text(encoding="utf-8"), policy=policy)
    assert result.verified, result.reasons

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(random_probes())
    def check(probe):
        try:
            text, spans = render_with_spans(result.patched, list(probe.messages), **dict(probe.kwargs))
        except RenderError:  # the template refuses the conversation: nothing to judge
            return
        problems = check_words(text, merge_spans(spans), probe.messages, probe.kwargs, policy)
        assert problems == [], [p.describe() for p in problems]

    check()


def _inside(text: str, spans: list[tuple[int, int]], piece: str) -> bool:
    position = text.index(piece)
    return any(start <= position and position + len(piece) <= end for start, end in merge_spans(spans))


def _outside(text: str, spans: list[tuple[int, int]], piece: str) -> bool:
    position = text.index(piece)
    return not any(start < position + len(piece) and position < end for start, end in merge_spans(spans))


@pytest.mark.parametrize(
    "path", ["gemma/gemma-4-31B-it.2026-04-10.jinja", "gemma/gemma-4-canonical-2026-07-09.jinja"]
)
def test_gemma4_text_after_the_tool_responses_is_trained(corpus_dir: Path, path: str):
    result = patch_template((corpus_dir / "templates" / path).read_text(encoding="utf-8"))
    assert result.passed, result.reasons
    probe = make_probe("tool_calls_multi")
    text, spans = render_with_spans(result.patched, list(probe.messages), **dict(probe.kwargs))
    answer = probe.messages[2]["content"]
    responses = [probe.messages[3]["content"], probe.messages[4]["content"]]
    assert text.index(answer) > text.index(responses[-1]), "the template no longer shows the case"
    assert _inside(text, spans, answer)
    if text.startswith("<turn|>", text.index(answer) + len(answer)):
        assert _inside(text, spans, answer + "<turn|>")
    assert all(_outside(text, spans, response) for response in responses)
    for call in probe.messages[2]["tool_calls"]:
        assert _inside(text, spans, call["function"]["arguments"]["query"])


def test_qwen25_tool_calls_not_trained_keeps_the_text_and_leaves_the_calls_out(corpus_dir: Path):
    original = (corpus_dir / "templates" / "qwen/Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
    result = patch_template(original, tool_calls="not_trained")
    assert result.passed, result.reasons
    probe = make_probe("tool_calls_multi")
    text, spans = render_with_spans(result.patched, list(probe.messages), **dict(probe.kwargs))
    message = probe.messages[2]
    assert _inside(text, spans, message["content"])
    calls_start = text.index("<tool_call>", text.index(message["content"]))
    calls_end = text.index("<|im_end|>", calls_start) + len("<|im_end|>")
    assert _outside(text, spans, text[calls_start:calls_end])  # calls and the end of turn after them
    assert _inside(text, spans, probe.messages[5]["content"] + "<|im_end|>")


def test_gpt_oss_final_channel_only_leaves_the_commentary_out(corpus_dir: Path):
    path = corpus_dir / "templates" / "gpt-oss/openai-gpt-oss-20b.2025-08-08.jinja"
    original = path.read_text(encoding="utf-8")
    result = patch_template(original, reasoning="final_channel_only")
    assert result.passed, result.reasons
    probe = make_probe("reasoning_tool_calls")
    text, spans = render_with_spans(result.patched, list(probe.messages), **dict(probe.kwargs))
    arguments = probe.messages[1]["tool_calls"][0]["function"]["arguments"]["query"]
    assert _outside(text, spans, arguments)
    assert _inside(text, spans, "<|channel|>final<|message|>" + probe.messages[-1]["content"] + "<|return|>")
