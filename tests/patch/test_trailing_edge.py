"""A turn that ends with its own words has an edge that is an interval, not a point (SPEC §2).

Its trailing whitespace may be in or out of the span. When stopping after the last word cuts the
message's text at a place that depends on it (``'A: ' + content + '\\n\\n'`` with content that
ends in whitespace), the patcher ends such turns after all their trailing whitespace instead,
a place the template's structure holds. The verifier and the independent judge decide.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from independent.conversations import random_conversation
from independent.judge import judge

import templatefix
from templatefix.conversation import Probe
from templatefix.oracle import expected_turns

#: Every turn ends with ``content + '\n\n'``: no end-of-turn token.
QA_PLUS = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'Q: ' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'A: ' + message['content'] + '\\n\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'A: ' }}{% endif %}"
)
QA_TILDE = QA_PLUS.replace("' + message['content'] + '", "' ~ message['content'] ~ '")
#: The content alone in its tag, the whitespace as literal text after it.
QA_LITERAL = (
    "{% for m in messages %}{% if m.role == 'user' %}### User:\n{{ m.content }}\n\n"
    "{% else %}### Assistant:\n{{ m.content }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)
#: The generation prompt disagrees with the training render (a mismatch, placed by its shape), and
#: the last turn has no end-of-turn text: its content's own trailing whitespace may be in or out.
MISMATCH_OPEN = (
    "{% for m in messages %}{% if m.role == 'user' %}{{ '<u>\\n' + m.content + '\\n' }}{% else %}"
    "{{ '<a>\\n' }}{{- m.content -}}{% if not loop.last %}{{ '\\n<end>\\n' }}{% endif %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<a>\\nSteps:\\n' }}{% endif %}"
)

TEMPLATES = {"plus": QA_PLUS, "tilde": QA_TILDE, "literal": QA_LITERAL}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_open_end_templates_verify(name: str) -> None:
    result = templatefix.patch_template(TEMPLATES[name])
    assert result.status == "exact", result.reasons
    assert "{% generation %}" in result.patched


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_open_end_patches_pass_the_independent_judge(name: str) -> None:
    template = TEMPLATES[name]
    patched = templatefix.patch_template(template).patched
    owed = 0
    for seed in range(12):
        verdict = judge(template, patched, random_conversation(seed))
        assert verdict.ok, [str(f) for f in verdict.failures]
        owed += verdict.owed
    assert owed >= 6  # conversations the template renders no assistant text for owe nothing


def test_mismatching_turn_with_open_end_is_placed_and_flagged() -> None:
    result = templatefix.patch_template(MISMATCH_OPEN)
    assert result.status == "flagged", result.reasons
    assert result.passed and result.verified


def test_shape_placed_turn_ending_with_words_has_an_open_end() -> None:
    probe = Probe(
        "trailing",
        ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "  echo105 \n"}),
    )
    expectation = expected_turns(MISMATCH_OPEN, probe)
    (turn,) = expectation.turns
    assert turn.kind == "mismatch"
    assert turn.open_end
    assert expectation.text[turn.start:turn.end_out] == "  echo105"
    assert expectation.text[turn.end_out:turn.end_in] == " \n"


_whitespace = st.text(alphabet=" \n\t", max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lead=_whitespace,
    trail=_whitespace,
    word=st.sampled_from(["alpha", "be ta", "gamma\ndelta"]),
    turns=st.integers(min_value=1, max_value=3),
)
def test_any_trailing_whitespace_is_judged_by_the_verifier(
    lead: str, trail: str, word: str, turns: int
) -> None:
    patched = templatefix.patch_template(QA_PLUS).patched
    messages: list[dict[str, str]] = []
    for index in range(turns):
        messages.append({"role": "user", "content": f"question{index}"})
        messages.append({"role": "assistant", "content": f"{lead}{word}{index}{trail}"})
    report = templatefix.verify(patched, original=QA_PLUS, probes=[Probe("drawn", tuple(messages))])
    assert report.passed, report.failures()
