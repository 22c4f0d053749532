"""The word rule of the independent checker (``tests/independent/words.py``), under every policy.

- The generator's words are unique and never part of one another (hypothesis).
- Hand-made templates, right and wrong for each policy: the right one passes, each wrong one is
  caught at the word it gets wrong (a user message in a span, a trained tool call under
  ``tool_calls="not_trained"``, trained reasoning, an earlier turn under ``turns="last"``, a
  switched-off message, the analysis channel under ``final_channel_only``).
- A seeded sample per policy: the reference templates and a few corpus ones, patched by
  templatefix under the policy, a few conversations each. ``benchmarks/crosscheck.py
  --all-policies`` runs the whole corpus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from independent.conversations import WORD, Conversation, conversations, random_conversation, switch_off
from independent.sweep import POLICIES, check_template, policy_conversation, policy_name
from independent.words import check_policy, expected_words, judge_words
from support.data import CORPUS_ENV, data_dir

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "templates"

# -- the generator -------------------------------------------------------------------------


def _all_words(conversation: Conversation) -> list[str]:
    return [w.text for w in expected_words(conversation.messages, {}, channels=False)]


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(conversation=conversations())
def test_generated_words_are_unique_and_never_part_of_another(conversation: Conversation) -> None:
    words = _all_words(conversation)
    assert len(words) == len(set(words))
    for word in words:
        assert WORD.fullmatch(word)
        assert [other for other in words if word in other] == [word]


def test_every_field_gets_words() -> None:
    """Over a few seeds every field the rule names carries words."""
    fields = set()
    for seed in range(40):
        for word in expected_words(random_conversation(seed).messages, {}, channels=False):
            fields.add((word.role, word.kind, word.field.split("[")[0].split(".")[0]))
    assert {
        ("system", "text", "content"), ("user", "text", "content"), ("tool", "text", "content"),
        ("assistant", "text", "content"), ("assistant", "name", "tool_calls"),
        ("assistant", "argument", "tool_calls"), ("assistant", "reasoning", "reasoning_content"),
        ("assistant", "reasoning", "thinking"),
    } <= fields


def test_switch_off_leaves_one_assistant_untrained() -> None:
    for seed in range(20):
        conversation = switch_off(random_conversation(seed), "train", seed)
        assistants = [m for m in conversation.messages if m["role"] == "assistant"]
        assert any(m.get("train") is False for m in assistants)
        unchanged = policy_conversation(random_conversation(seed), {}, seed)
        assert unchanged.messages == random_conversation(seed).messages


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy option 'turn'"):
        check_policy({"turn": "last"})
    with pytest.raises(ValueError, match="choose one of"):
        check_policy({"tool_calls": "no"})


# -- hand-made templates -------------------------------------------------------------------

_NL = "{{ '\\n' }}"
_REASONING = "{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}"
_CONTENT = "{{ m.content }}"
_CALLS = (
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }} {{ c.function.arguments | tojson }}"
    "</tool_call>{% endfor %}"
)
_END = "<|im_end|>"
_HEAD = "<|im_start|>assistant" + _NL
_OTHER = (
    "{% else %}<|im_start|>{{ m.role }}" + _NL + "{{ m.content }}<|im_end|>" + _NL + "{% endif %}{% endfor %}"
)
_LOOP = "{% for m in messages %}{% if m.role == 'assistant' %}"


def _template(body: str, prelude: str = "") -> str:
    return prelude + _LOOP + _HEAD + body + _NL + _OTHER


def _gen(text: str) -> str:
    return "{% generation %}" + text + "{% endgeneration %}"


ORIGINAL = _template(_REASONING + _CONTENT + _CALLS + _END)
RIGHT = _template(_gen(_REASONING + _CONTENT + _CALLS + _END))
#: Last-user index, for the ``turns="last"`` patch.
_LAST_USER = (
    "{% set ns = namespace(last=-1) %}{% for m in messages %}{% if m.role == 'user' %}"
    "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
)
_ALL = _REASONING + _CONTENT + _CALLS + _END
RIGHT_BY_POLICY: dict[str, str] = {
    "default": RIGHT,
    "reasoning=not_trained": _template(_REASONING + _gen(_CONTENT + _CALLS + _END)),
    # only answers: a message with tool calls is not one
    "reasoning=final_channel_only": _template(
        "{% if m.tool_calls %}" + _ALL + "{% else %}" + _REASONING + _gen(_CONTENT + _CALLS + _END)
        + "{% endif %}"
    ),
    "tool_calls=not_trained": _template(_gen(_REASONING + _CONTENT) + _CALLS + _gen(_END)),
    "turns=last": _template(
        "{% if loop.index0 > ns.last %}" + _gen(_ALL) + "{% else %}" + _ALL + "{% endif %}", _LAST_USER
    ),
    "turns=last_message": _template("{% if loop.last %}" + _gen(_ALL) + "{% else %}" + _ALL + "{% endif %}"),
    "train_field=train": _template(
        "{% if m.train is false %}" + _ALL + "{% else %}" + _gen(_ALL) + "{% endif %}"
    ),
}


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


#: Two user turns; the second answered by a tool call, its result and a final answer.
CONVERSATION = [
    {"role": "system", "content": "be brief alpha1q"},
    {"role": "user", "content": "hello bravo2q"},
    {"role": "assistant", "content": "hi cedar3q", "reasoning_content": "greet delta4q"},
    {"role": "user", "content": "weather ember5q"},
    {"role": "assistant", "content": "checking fjord6q", "reasoning_content": "call garnet7q",
     "tool_calls": [_call("get_weather_harbor8q", city="indigo9q")]},
    {"role": "tool", "content": "cold juniper10q"},
    {"role": "assistant", "content": "cold alpha11q", "reasoning_content": "answer bravo12q"},
]
POLICY_BY_NAME = {policy_name(p): p for p in POLICIES}


def _messages(policy: dict[str, Any]) -> list[dict[str, Any]]:
    messages = [dict(m) for m in CONVERSATION]
    if policy.get("train_field"):
        messages[4][policy["train_field"]] = False
        messages[6][policy["train_field"]] = True
    return messages


@pytest.mark.parametrize("name", list(RIGHT_BY_POLICY))
def test_hand_made_right_patch_passes(name: str) -> None:
    policy = POLICY_BY_NAME[name]
    verdict = judge_words(ORIGINAL, RIGHT_BY_POLICY[name], _messages(policy), policy)
    assert [str(f) for f in verdict.failures] == []
    assert verdict.inside >= 1 and verdict.outside >= 4


@pytest.mark.parametrize("name", [n for n in RIGHT_BY_POLICY if n != "default"])
def test_default_patch_is_wrong_under_every_other_policy(name: str) -> None:
    """Each policy excludes something the default trains: the default patch is caught there."""
    policy = POLICY_BY_NAME[name]
    failures = judge_words(ORIGINAL, RIGHT, _messages(policy), policy).failures
    assert failures and all(f.rule == "word" and f.expected == "outside" for f in failures)
    excluded = {
        "reasoning=not_trained": {"delta4q", "garnet7q", "bravo12q"},
        "reasoning=final_channel_only": {
            "delta4q", "garnet7q", "bravo12q", "fjord6q", "harbor8q", "indigo9q"
        },
        "tool_calls=not_trained": {"harbor8q", "indigo9q"},
        "turns=last": {"cedar3q", "delta4q"},
        "turns=last_message": {"cedar3q", "delta4q", "fjord6q", "garnet7q", "harbor8q", "indigo9q"},
        "train_field=train": {"fjord6q", "garnet7q", "harbor8q", "indigo9q"},
    }[name]
    assert {f.word for f in failures} == excluded


def test_span_over_a_user_message_is_caught() -> None:
    # A text before the loop: transformers 4.56 drops a span that starts at offset 0 (its tracker
    # reads empty lists as inactive).
    wrong = "<s>" + _LOOP + _HEAD + _gen(_ALL) + _NL + "{% else %}" + _gen(
        "<|im_start|>{{ m.role }}" + _NL + "{{ m.content }}<|im_end|>"
    ) + _NL + "{% endif %}{% endfor %}"
    failures = judge_words("<s>" + ORIGINAL, wrong, CONVERSATION, {}).failures
    assert {f.word for f in failures} == {"alpha1q", "bravo2q", "ember5q", "juniper10q"}
    assert all(f.expected == "outside" for f in failures)


def test_tool_call_trained_under_tool_calls_not_trained_is_caught() -> None:
    """The text beside the call stays trained; only the call's name and argument are wrong."""
    policy = {"tool_calls": "not_trained"}
    failures = judge_words(ORIGINAL, RIGHT, CONVERSATION, policy).failures
    assert [(f.word, f.message, f.expected) for f in failures] == [
        ("harbor8q", 4, "outside"), ("indigo9q", 4, "outside")
    ]
    # and a patch leaving the whole tool-call message out (its text too) is caught on the text
    none = _template("{% if m.tool_calls %}" + _ALL + "{% else %}" + _gen(_ALL) + "{% endif %}")
    failures = judge_words(ORIGINAL, none, CONVERSATION, policy).failures
    assert {(f.word, f.expected) for f in failures} == {("fjord6q", "inside"), ("garnet7q", "inside")}


def test_text_after_the_tool_results_left_out_is_caught() -> None:
    """Gemma 4's shape: the assistant's text after the tool responses must be inside."""
    original = _template(_CALLS + "{% if m.tool_calls %}<resp>{% endif %}" + _CONTENT + _END)
    wrong = _template(_gen(_CALLS) + "{% if m.tool_calls %}<resp>{% endif %}" + _CONTENT + _END)
    messages = CONVERSATION[:5] + [{"role": "user", "content": "more alpha13q"},
                                   {"role": "assistant", "content": "done bravo14q"}]
    failures = judge_words(original, wrong, messages, {}).failures
    assert {f.word for f in failures} == {"cedar3q", "fjord6q", "bravo14q"}
    assert judge_words(original, _template(_gen(_CALLS + "{% if m.tool_calls %}<resp>{% endif %}" + _CONTENT
                                                 + _END)), messages, {}).failures == []


def test_a_span_cutting_a_word_is_caught() -> None:
    cut = _template(_REASONING + "{{ m.content[:2] }}" + _gen("{{ m.content[2:] }}" + _CALLS + _END))
    failures = judge_words(ORIGINAL, cut, CONVERSATION, {"reasoning": "not_trained"}).failures
    assert {f.word for f in failures} == set()  # "hi ", "ch", "co" are no words: nothing cut
    cut = _template(_REASONING + "{{ m.content[:5] }}" + _gen("{{ m.content[5:] }}" + _CALLS + _END))
    failures = judge_words(ORIGINAL, cut, CONVERSATION, {"reasoning": "not_trained"}).failures
    assert "is partly" in str(failures[0]) and failures[0].word == "cedar3q"


def test_changed_render_is_a_failure_not_a_word_check() -> None:
    changed = RIGHT.replace(_END + "{% endgeneration %}", _END + "x{% endgeneration %}")
    failures = judge_words(ORIGINAL, changed, CONVERSATION, {}).failures
    assert [f.rule for f in failures] == ["render"]
    rejecting = "{{ raise_exception('no') }}"
    assert judge_words(rejecting, RIGHT, CONVERSATION, {}).skipped


# -- harmony channels (final_channel_only) ----------------------------------------------------

_H_ANALYSIS = (
    "{% if m.thinking %}<|start|>assistant<|channel|>analysis<|message|>{{ m.thinking }}<|end|>{% endif %}"
)
_H_CALLS = (
    "{% for c in m.tool_calls or [] %}<|start|>assistant to=functions.{{ c.function.name }}"
    "<|channel|>commentary json<|message|>{{ c.function.arguments | tojson }}<|call|>{% endfor %}"
)
_H_FINAL = (
    "{% if m.content %}<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|return|>{% endif %}"
)
_H_OTHER = "{% else %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endif %}{% endfor %}"


def _harmony(body: str) -> str:
    return _LOOP + body + _H_OTHER


HARMONY = _harmony(_H_ANALYSIS + _H_CALLS + _H_FINAL)
HARMONY_MESSAGES = [
    {"role": "user", "content": "weather alpha1q"},
    {"role": "assistant", "thinking": "think bravo2q", "content": "",
     "tool_calls": [_call("get_weather_cedar3q", city="delta4q")]},
    {"role": "tool", "content": "cold ember5q"},
    {"role": "assistant", "thinking": "answer fjord6q", "content": "cold garnet7q"},
]


def test_final_channel_only_reads_the_channel() -> None:
    policy = {"reasoning": "final_channel_only"}
    right = _harmony(_H_ANALYSIS + _H_CALLS + _gen(_H_FINAL))
    assert judge_words(HARMONY, right, HARMONY_MESSAGES, policy).failures == []
    # reasoning not trained, calls trained: right for not_trained, wrong for final_channel_only
    calls_in = _harmony(_H_ANALYSIS + _gen(_H_CALLS + _H_FINAL))
    assert judge_words(HARMONY, calls_in, HARMONY_MESSAGES, {"reasoning": "not_trained"}).failures == []
    failures = judge_words(HARMONY, calls_in, HARMONY_MESSAGES, policy).failures
    assert {(f.word, f.expected) for f in failures} == {("cedar3q", "outside"), ("delta4q", "outside")}


def test_content_in_another_channel_is_outside_under_final_channel_only() -> None:
    """Content written in the analysis channel (gpt-oss does so beside a call) is not final."""
    body = "<|start|>assistant<|channel|>analysis<|message|>{{ m.content }}<|end|>" + _H_CALLS
    original = _harmony("{% if m.tool_calls %}" + body + "{% else %}" + _H_FINAL + "{% endif %}")
    patched = _harmony("{% if m.tool_calls %}" + body + "{% else %}" + _gen(_H_FINAL) + "{% endif %}")
    messages = [dict(m) for m in HARMONY_MESSAGES]
    messages[1] = {**messages[1], "content": "let me look harbor8q"}
    assert judge_words(original, patched, messages, {"reasoning": "final_channel_only"}).failures == []
    wrong = _harmony("{% if m.tool_calls %}" + _gen(body) + "{% else %}" + _gen(_H_FINAL) + "{% endif %}")
    failures = judge_words(original, wrong, messages, {"reasoning": "final_channel_only"}).failures
    assert {f.word for f in failures} == {"harbor8q", "cedar3q", "delta4q"}


# -- a seeded sample per policy ------------------------------------------------------------

REFERENCES = sorted(p.name for p in REFERENCE_DIR.glob("*.jinja"))
CORPUS_SAMPLE = (
    "qwen/Qwen2.5-7B-Instruct.jinja",
    "qwen/Qwen3-8B.jinja",
    "gpt-oss/openai-gpt-oss-20b.2025-08-08.jinja",
    "llama/Meta-Llama-3-8B-Instruct.jinja",
)
CONVERSATIONS = 3


def _sample() -> list[Any]:
    corpus, _ = data_dir(CORPUS_ENV, "corpus")
    names = [f"templates/{n}" for n in REFERENCES]
    if corpus is not None:
        names += [n for n in CORPUS_SAMPLE if (corpus / "templates" / n).is_file()]
    params = []
    for name in names:
        for policy in POLICIES:
            params.append(pytest.param(name, policy, id=f"{name}-{policy_name(policy)}"))
    return params


@pytest.mark.parametrize(("name", "policy"), _sample())
def test_policy_sample(name: str, policy: dict[str, Any]) -> None:
    """Where templatefix calls a patch verified under a policy, the word rule agrees."""
    if name.startswith("templates/"):
        path = REFERENCE_DIR / name.removeprefix("templates/")
    else:
        corpus, _ = data_dir(CORPUS_ENV, "corpus")
        assert corpus is not None
        path = corpus / "templates" / name
    with open(path, encoding="utf-8", newline="") as handle:
        text = handle.read()
    outcome = check_template(name, text, CONVERSATIONS, max_findings=1, policy=policy)
    if outcome.status == "policy-unknown":
        pytest.skip(f"templatefix does not know this policy: {outcome.detail}")
    if outcome.status not in ("verified", "unverified-code"):
        pytest.skip(f"templatefix does not call it verified ({outcome.status}): nothing is promised")
    assert outcome.judged > 0
    assert not outcome.findings, outcome.first_failure()


#: Content parts are written by their own output, which the probes reach only in turns of one
#: assistant message: "the last message" and "the last turn" fit the same observations there.
_PARTS = (
    "{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>assistant\n"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for p in m.content %}{{ p.text }}{% endfor %}"
    "{% endif %}{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }}</tool_call>{% endfor %}"
    "<|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_turns_last_means_the_last_turn_where_probes_cannot_tell() -> None:
    from templatefix.patch.api import patch_template

    policy = {"turns": "last"}
    result = patch_template(_PARTS, **policy)
    assert result.verified, result.reasons
    messages = [
        {"role": "user", "content": "weather ember5q"},
        {"role": "assistant", "content": [{"type": "text", "text": "checking fjord6q"}],
         "tool_calls": [_call("get_weather_harbor8q", city="indigo9q")]},
        {"role": "tool", "content": "cold juniper10q"},
        {"role": "assistant", "content": "cold alpha11q"},
    ]
    verdict = judge_words(_PARTS, result.patched, messages, policy)
    assert [str(f) for f in verdict.failures] == []
    assert verdict.inside >= 3


def test_final_channel_only_leaves_parts_beside_a_call_untrained() -> None:
    """Under ``final_channel_only`` a message with tool calls is not trained, also when its text is
    a list of parts written by the same output as a final answer's parts."""
    from templatefix.patch.api import patch_template

    policy = {"reasoning": "final_channel_only"}
    result = patch_template(_PARTS, **policy)
    assert result.verified, result.reasons
    messages = [
        {"role": "user", "content": "weather ember5q"},
        {"role": "assistant", "content": [{"type": "text", "text": "checking fjord6q"}],
         "tool_calls": [_call("get_weather_harbor8q", city="indigo9q")]},
        {"role": "tool", "content": "cold juniper10q"},
        {"role": "assistant", "content": [{"type": "text", "text": "cold alpha11q"}]},
    ]
    verdict = judge_words(_PARTS, result.patched, messages, policy)
    assert [str(f) for f in verdict.failures] == []
    assert verdict.inside >= 1 and verdict.outside >= 4

