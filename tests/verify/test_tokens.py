"""Token-mask check (SPEC §5): synthetic tokenizers for each failure kind, real ones for the corpus."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest

from templatefix.environment import mask_rule
from templatefix.errors import TemplatefixError, TemplateRejected
from templatefix.render import render_with_spans
from templatefix.tokens import (
    END_AT_TOKEN_ZERO,
    END_UNMAPPED,
    EOT_OUTSIDE,
    START_UNMAPPED,
    STRADDLE,
    OffsetIndex,
    check_token_masks,
    expected_token_ranges,
    load_fast_tokenizer,
    mask_from_ranges,
    transformers_token_ranges,
    union_ranges,
)

# ----------------------------------------------------------------------------- synthetic tokenizer


@pytest.fixture(scope="module")
def word_tokenizer() -> Any:
    """Whitespace-splitting word tokenizer: drops every space, so span edges can fall on nothing."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "hello", "world", "user", "hi", "XY", "X", "Y", "<eot>", "a:"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<eot>")


USER = [{"role": "user", "content": "hi"}]
TWO_TURNS = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello world"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
]
CLEAN = (
    "{% for m in messages %}{{ m.role }} {% if m.role == 'assistant' %}{% generation %}"
    "{{ m.content }} <eot>{% endgeneration %}{% else %}{{ m.content }}{% endif %} {% endfor %}"
)


def kinds(issues: list) -> list[str]:
    return [issue.kind for issue in issues]


def test_clean_template_has_no_issue(word_tokenizer: Any) -> None:
    assert check_token_masks(CLEAN, word_tokenizer, TWO_TURNS) == []


def real_mask(tokenizer: Any, template: str, messages: list) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, chat_template=template, return_dict=True, return_assistant_tokens_mask=True
    )
    return list(out["assistant_masks"])


def test_span_starting_on_dropped_whitespace(word_tokenizer: Any) -> None:
    template = CLEAN.replace("{{ m.role }} {% if", "{{ m.role }}{% if").replace(
        "{% generation %}{{ m.content }}", "{% generation %} {{ m.content }}"
    )
    issues = check_token_masks(template, word_tokenizer, TWO_TURNS)
    if mask_rule() == "char_to_token":
        assert kinds(issues) == [START_UNMAPPED]
        assert "every later" in issues[0].message and "whitespace" in issues[0].message
        assert str(issues[0]).startswith("start_unmapped: span at chars")
        # transformers really trains nothing here
        assert sum(real_mask(word_tokenizer, template, TWO_TURNS)) == 0
    else:
        # the overlap rule trains every token the span touches: nothing is lost
        assert issues == []
        assert sum(real_mask(word_tokenizer, template, TWO_TURNS)) == 5  # hello world <eot>, hello <eot>


def test_span_ending_on_dropped_whitespace(word_tokenizer: Any) -> None:
    template = "hi {% generation %}hello {% endgeneration %}world hi user"
    issues = check_token_masks(template, word_tokenizer, USER)
    if mask_rule() == "char_to_token":
        assert kinds(issues) == [END_UNMAPPED]
        assert "end of the sequence (3 extra tokens" in issues[0].message
        assert real_mask(word_tokenizer, template, USER) == [0, 1, 1, 1, 1]
    else:
        assert issues == []
        assert real_mask(word_tokenizer, template, USER) == [0, 1, 0, 0, 0]


def test_span_ending_in_token_zero(word_tokenizer: Any) -> None:
    # (the empty dynamic output first: transformers 4.x records no span for a block that opens
    # before anything has been rendered)
    template = "{{ messages[0].content[:0] }}{% generation %}hello{% endgeneration %} world hi"
    issues = check_token_masks(template, word_tokenizer, USER)
    if mask_rule() == "char_to_token":
        assert kinds(issues) == [END_AT_TOKEN_ZERO]
        assert issues[0].token_index == 0
        assert real_mask(word_tokenizer, template, USER) == [1, 1, 1]
    else:
        assert issues == []
        assert real_mask(word_tokenizer, template, USER) == [1, 0, 0]


@pytest.mark.parametrize(
    "template",
    [
        CLEAN,
        "hi {% generation %}hello {% endgeneration %}world hi user",
        "{% generation %}hello{% endgeneration %} world hi",
        "hi X{% generation %}Y hello{% endgeneration %} world {% generation %} hi{% endgeneration %} X",
        "{% for m in messages %} {% generation %} {{ m.content }} {% endgeneration %}{% endfor %}",
    ],
)
def test_replayed_mask_equals_transformers_synthetic(word_tokenizer: Any, template: str) -> None:
    """The replay of the installed transformers' rule gives its exact ``assistant_masks``."""
    text, spans = render_with_spans(template, TWO_TURNS, special_tokens=word_tokenizer.special_tokens_map)
    encoding = word_tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    index = OffsetIndex(encoding["offset_mapping"])
    replay = mask_from_ranges(transformers_token_ranges(index, spans), len(index))
    assert replay == real_mask(word_tokenizer, template, TWO_TURNS)


def test_straddling_token(word_tokenizer: Any) -> None:
    template = "hi X{% generation %}Y hello{% endgeneration %} world"
    issues = check_token_masks(template, word_tokenizer, USER)
    assert kinds(issues) == [STRADDLE]
    assert issues[0].token_text == "XY" and issues[0].char_range == (3, 5)
    assert "opening edge" in issues[0].message


def test_eot_outside_span(word_tokenizer: Any) -> None:
    template = "hi {% generation %}hello{% endgeneration %} <eot> world"
    text, _ = render_with_spans(template, USER, special_tokens=word_tokenizer.special_tokens_map)
    expected = [{"span": (3, text.index("<eot>") + 5), "eot": "<eot>"}]
    issues = check_token_masks(template, word_tokenizer, USER, expected=expected)
    assert kinds(issues) == [EOT_OUTSIDE]
    assert check_token_masks(template, word_tokenizer, USER) == []


def test_probe_objects_and_kwargs(word_tokenizer: Any) -> None:
    class Probe:
        messages = tuple(USER)
        kwargs = {"flag": True}

    template = "hi {% if flag %}{% generation %}hello {% endgeneration %}{% endif %}world"
    expected = [END_UNMAPPED] if mask_rule() == "char_to_token" else []
    assert kinds(check_token_masks(template, word_tokenizer, Probe())) == expected
    assert check_token_masks(template, word_tokenizer, Probe(), flag=False) == []


def test_offset_index_matches_tokenizers_char_to_token(word_tokenizer: Any) -> None:
    text = "hello  world hi\n XY X"
    encoding = word_tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    index = OffsetIndex(encoding["offset_mapping"])
    for char in range(len(text) + 2):
        assert index.char_to_token(char) == encoding.char_to_token(char), char


def test_range_helpers() -> None:
    index = OffsetIndex([(0, 2), (2, 3), (3, 6), (6, 6), (6, 8)])
    assert expected_token_ranges(index, [(2, 8)]) == [(1, 5)]
    assert expected_token_ranges(index, [(1, 8)]) == [(1, 5)]
    assert transformers_token_ranges(index, [(1, 8)], "char_to_token") == [(0, 5)]
    assert transformers_token_ranges(index, [(1, 8)], "overlap") == [(0, 5)]
    assert transformers_token_ranges(OffsetIndex([(0, 1), (2, 3)]), [(1, 3)], "char_to_token") == []
    assert transformers_token_ranges(OffsetIndex([(0, 1), (2, 3)]), [(1, 3)], "overlap") == [(1, 2)]
    assert union_ranges([(3, 4), (0, 1), (1, 2)]) == [(0, 2), (3, 4)]
    assert mask_from_ranges([(0, 2), (3, 4)], 5) == [1, 1, 0, 1, 0]


def test_load_fast_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(TemplatefixError, match="not found"):
        load_fast_tokenizer(tmp_path / "missing")
    with pytest.raises(TemplatefixError, match="cannot load tokenizer"):
        load_fast_tokenizer(tmp_path)


# ----------------------------------------------------------------------------- real tokenizers

#: tokenizer dir -> (official corpus template, TRL marked copy)
REAL = {
    "qwen3": ("qwen/Qwen3-Instruct-2507.jinja", "qwen/trl-qwen3_instruct_2507_training.jinja"),
    "qwen2.5": ("qwen/Qwen2.5-7B-Instruct.jinja", "qwen/trl-qwen2_5_training.jinja"),
    "gemma3": ("gemma/gemma-3-4b-it.jinja", "gemma/trl-gemma3_training.jinja"),
    "gemma2": ("gemma/gemma-2-2b-it.jinja", "gemma/trl-gemma_training.jinja"),
    "llama3": ("llama/Llama-3.2-11B-Vision-Instruct.jinja", "llama/trl-llama3_training.jinja"),
    "gpt-oss": ("gpt-oss/openai-gpt-oss-20b.2025-08-08.jinja", "gpt-oss/trl-gptoss_training.jinja"),
}

TOOL_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "one-turn": ([
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello, how can I help?"},
    ], {}),
    "system-multi": ([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And  3+3 ?\n"},
        {"role": "assistant", "content": " 6 \n\n"},
    ], {}),
    "tools": ([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
        {"role": "tool", "name": "get_weather", "content": "{\"temp\": 21}"},
        {"role": "assistant", "content": "It is 21°C in Paris."},
    ], {"tools": TOOLS}),
    "reasoning": ([
        {"role": "user", "content": "Is 7 prime?"},
        {"role": "assistant", "reasoning_content": "7 has no divisors but 1 and 7.", "content": "Yes."},
        {"role": "user", "content": "And 9?"},
        {"role": "assistant", "reasoning_content": "9 = 3*3.", "content": "No, 9 = 3 × 3."},
    ], {}),
    "empty-assistant": ([
        {"role": "user", "content": "Say nothing."},
        {"role": "assistant", "content": ""},
    ], {}),
}


def _corpus_root() -> Path | None:
    value = os.environ.get("TEMPLATEFIX_CORPUS")
    if not value:
        return None
    for candidate in (Path(value), Path.cwd() / value, Path(__file__).resolve().parents[2] / value):
        if (candidate / "templates").is_dir():
            return candidate
    return None


@functools.cache
def template_for(tokenizer_name: str) -> tuple[str, str]:
    """``(which, text)``: the patched official template when the patcher verifies it, else TRL's
    marked copy. ``which`` ("patched"/"trl") goes into the test id."""
    from templatefix.patch.api import patch_template

    root = _corpus_root()
    if root is None:
        return "no-corpus", ""
    official, trl = REAL[tokenizer_name]
    official_path = root / "templates" / official
    if official_path.is_file():
        result = patch_template(official_path.read_text(encoding="utf-8"))
        if result.passed and "generation" in result.patched:
            return "patched", result.patched
    return "trl", (root / "templates" / trl).read_text(encoding="utf-8")


def real_params() -> list[Any]:
    """One param per real tokenizer, its id saying which template it runs on."""
    return [pytest.param(name, id=f"{name}-{template_for(name)[0]}") for name in sorted(REAL)]


@pytest.mark.corpus
@pytest.mark.tokenizers
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("tokenizer_name", real_params())
def test_real_tokenizer_masks_match_spans(
    corpus_dir: Path, load_tokenizer: Any, tokenizer_name: str, conversation: str
) -> None:
    tokenizer = load_tokenizer(tokenizer_name)
    which, template = template_for(tokenizer_name)
    messages, kwargs = CONVERSATIONS[conversation]
    try:
        issues = check_token_masks(template, tokenizer, messages, **kwargs)
    except TemplateRejected:
        pytest.skip(f"{which} template for {tokenizer_name} rejects {conversation}")
    assert issues == [], f"[{which}] " + "; ".join(issue.message for issue in issues)


@pytest.mark.corpus
@pytest.mark.tokenizers
@pytest.mark.parametrize("tokenizer_name", real_params())
def test_replayed_mask_equals_transformers(
    corpus_dir: Path, load_tokenizer: Any, tokenizer_name: str
) -> None:
    """The offset replay (used by `audit` instead of apply_chat_template) gives transformers' mask,
    also for spans that start/end mid-token (here: every span shifted by one character)."""
    tokenizer = load_tokenizer(tokenizer_name)
    _, template = template_for(tokenizer_name)
    for name, (messages, kwargs) in CONVERSATIONS.items():
        try:
            text, spans = render_with_spans(
                template, messages, special_tokens=tokenizer.special_tokens_map, **kwargs
            )
        except TemplateRejected:
            continue
        out = tokenizer.apply_chat_template(
            messages, chat_template=template, return_dict=True, return_assistant_tokens_mask=True, **kwargs
        )
        encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        assert encoding["input_ids"] == out["input_ids"], name
        index = OffsetIndex(encoding["offset_mapping"])
        replay = mask_from_ranges(transformers_token_ranges(index, spans), len(index))
        assert replay == out["assistant_masks"], name
        for char in {s for span in spans for s in span} | {0, 1, len(text) - 1}:
            for shifted in (c for c in (char - 1, char, char + 1) if c >= 0):
                assert index.char_to_token(shifted) == encoding.char_to_token(shifted), (name, shifted)


@pytest.mark.tokenizers
def test_oracle_expectation_flags_untrained_end_of_turn(load_tokenizer: Any) -> None:
    """With the oracle's expectation, an end-of-turn token left outside the span is named."""
    oracle = pytest.importorskip("templatefix.oracle")
    conversation = pytest.importorskip("templatefix.conversation")
    tokenizer = load_tokenizer("qwen3")
    good = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
        "{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    bad = good.replace("<|im_end|>{% endgeneration %}", "{% endgeneration %}<|im_end|>")
    probe = conversation.Probe("two", (dict(TWO_TURNS[0]), dict(TWO_TURNS[1])), {})
    for template, wanted in ((good, []), (bad, [EOT_OUTSIDE])):
        expectation = oracle.expected_turns(template, probe, None, tokenizer.special_tokens_map)
        assert kinds(check_token_masks(template, tokenizer, probe, expected=expectation)) == wanted
