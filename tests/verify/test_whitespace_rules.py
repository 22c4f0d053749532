"""SPEC §2 on whitespace: a turn whose generated text G is only whitespace owes nothing; whitespace at
the end of G may be in the span or out."""

from __future__ import annotations

from templatefix.conversation import Probe
from templatefix.oracle import expected_turns
from templatefix.patch.api import patch_template
from templatefix.render import merge_spans, render_with_spans
from templatefix.verify import verify

# The header is written with the user message; a reply is "\n" + content + "</s>", and an empty
# reply generates only the "\n" that is inside every other reply.
TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'user' %}<u>{{ m.content }}</u><a>"
    "{% else %}{{ '\\n' }}{{ m.content }}{% if m.content %}</s>{% endif %}{% endif %}{% endfor %}"
)
MARKED = (
    "{% for m in messages %}{% if m.role == 'user' %}<u>{{ m.content }}</u><a>"
    "{% else %}{% generation %}{{ '\\n' }}{{ m.content }}{% if m.content %}</s>{% endif %}{% endgeneration %}"
    "{% endif %}{% endfor %}"
)
MARKED_PAST_THE_TURN = (
    "{% for m in messages %}{% if m.role == 'user' %}<u>{{ m.content }}</u>"
    "{% generation %}<a>{% endgeneration %}"
    "{% else %}{% generation %}{{ '\\n' }}{{ m.content }}{% if m.content %}</s>{% endif %}{% endgeneration %}"
    "{% endif %}{% endfor %}"
)
EMPTY_REPLY = Probe(
    "empty_reply",
    (
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "three"},
    ),
)


def test_the_oracle_says_a_whitespace_turn_is_blank() -> None:
    turns = expected_turns(TEMPLATE, EMPTY_REPLY).turns
    assert [turn.blank for turn in turns] == [True, False]
    assert turns[0].end_in - turns[0].start == 1  # the "\n"


def test_a_span_over_the_whitespace_alone_is_accepted() -> None:
    report = verify(MARKED, TEMPLATE, probes=[EMPTY_REPLY])
    assert report.verified, report.failures()


def test_a_span_past_the_whitespace_is_still_wrong() -> None:
    report = verify(MARKED_PAST_THE_TURN, TEMPLATE, probes=[EMPTY_REPLY])
    assert not report.verified


def test_the_patcher_needs_no_condition_for_whitespace_owed_nothing() -> None:
    result = patch_template(TEMPLATE, probes=[EMPTY_REPLY])
    assert result.verified, result.reasons
    assert result.patched.count("{% if") == TEMPLATE.count("{% if")  # no role branch was needed


# Qwen1.5's layout: the last message has no end-of-turn text, so a reply's own trailing whitespace
# ends G, and it is written by the same {{ }} as the reply's words.
NO_FINAL_END = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content }}"
    "{% if not loop.last or add_generation_prompt %}{{ '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TRAILING = Probe(
    "trailing",
    (
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
        {"role": "assistant", "content": "four \n"},
    ),
)


def test_trailing_whitespace_inside_the_reply_may_stay_in_the_span() -> None:
    result = patch_template(NO_FINAL_END, probes=[TRAILING, EMPTY_REPLY])
    assert result.verified, result.reasons
    text, spans = render_with_spans(result.patched, list(TRAILING.messages))
    assert [text[a:b] for a, b in merge_spans(spans)] == ["two", "four \n"]
