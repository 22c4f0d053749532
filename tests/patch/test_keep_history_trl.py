"""The keep-history variant through TRL: ``SFTTrainer(assistant_only_loss=True)`` trains every turn of a
multi-turn reasoning conversation exactly, checked label by label.

The official Qwen3 and gpt-oss templates drop earlier reasoning; their keep-history variants write
each turn as when it is last. For every token of the prepared example, the label must be the token
when its characters lie inside a turn's generated text G (SPEC §2, computed from the variant's own
renders, end-of-turn token in, trailing newline out), and -100 otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("datasets")

from support.sft import prepare  # noqa: E402

import templatefix  # noqa: E402
from templatefix.render import render  # noqa: E402

pytestmark = [pytest.mark.trl, pytest.mark.corpus, pytest.mark.tokenizers]

QWEN3_CONVERSATION = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "reasoning_content": "Two and two make four.", "content": "4."},
    {"role": "user", "content": "Which city is the capital of France?"},
    {
        "role": "assistant",
        "reasoning_content": "I should look it up.",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "lookup", "arguments": {"q": "France"}}}],
    },
    {"role": "tool", "content": "Paris is the capital"},
    {"role": "assistant", "reasoning_content": "The tool says Paris.", "content": "Paris."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "reasoning_content": "Three and three make six.", "content": "6."},
]
GPT_OSS_CONVERSATION = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "thinking": "Two and two make four.", "content": "4."},
    {"role": "user", "content": "Which city is the capital of France?"},
    {
        "role": "assistant",
        "thinking": "I should look it up.",
        "tool_calls": [{"type": "function", "function": {"name": "lookup", "arguments": {"q": "France"}}}],
    },
    {"role": "tool", "content": "Paris is the capital"},
    {"role": "assistant", "thinking": "The tool says Paris.", "content": "Paris."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "thinking": "Three and three make six.", "content": "6."},
]
CASES = {
    "qwen3": ("qwen/Qwen3-0.6B.jinja", QWEN3_CONVERSATION, "reasoning_content"),
    "gpt-oss": ("gpt-oss/openai-gpt-oss-20b.2025-08-08.jinja", GPT_OSS_CONVERSATION, "thinking"),
}


def generated_ranges(template: str, messages: list[dict], special: dict) -> list[tuple[int, int]]:
    """Each assistant message's G in the full render (SPEC §2), asserting it is prefix-preserving;
    the trailing whitespace of G stays out (the default policy)."""
    full = render(template, messages, special_tokens=special)
    ranges = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(template, messages[:index], add_generation_prompt=True, special_tokens=special)
        turn = render(template, messages[: index + 1], special_tokens=special)
        assert turn.startswith(prompt)
        generated = turn[len(prompt) :]
        assert full.startswith(prompt + generated), f"message {index} is rewritten in the variant"
        ranges.append((len(prompt), len(prompt) + len(generated.rstrip())))
    return ranges


@pytest.mark.parametrize("name", sorted(CASES))
def test_sft_trains_every_turn_of_a_reasoning_conversation(
    corpus_dir: Path, tokenizers_dir: Path, tmp_path: Path, name: str
) -> None:
    official_name, messages, reasoning_key = CASES[name]
    official = (corpus_dir / "templates" / official_name).read_text(encoding="utf-8")
    result = templatefix.patch_template(official, keep_history=True)
    assert result.verified and result.rewrites and result.rewritten_turns == 0, result.reasons
    template = result.patched

    tokenizer, (example,) = prepare(tokenizers_dir, name, template, [{"messages": messages}], tmp_path)
    special = dict(tokenizer.special_tokens_map)
    text = render(template, messages, special_tokens=special)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert list(example["input_ids"]) == encoded["input_ids"]
    ranges = generated_ranges(template, messages, special)
    assert len(ranges) == sum(m["role"] == "assistant" for m in messages)
    for position, ((start, end), token, label) in enumerate(
        zip(encoded["offset_mapping"], example["input_ids"], example["labels"], strict=True)
    ):
        inside = any(low <= start and end <= high for low, high in ranges)
        straddles = any(start < low < end or start < high < end for low, high in ranges)
        assert not straddles, f"token {position} {text[start:end]!r} straddles a span edge"
        expected = token if inside else -100
        assert label == expected, f"token {position} {text[start:end]!r}: label {label}, expected {expected}"

    trained = tokenizer.decode(
        [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != -100]
    )
    for message in messages:
        if message["role"] == "assistant":
            assert message[reasoning_key] in trained  # every turn's reasoning is trained
            assert message.get("content", "") in trained
        elif message["role"] in ("user", "system", "tool"):
            assert message["content"] not in trained
    # the original template drops the earlier reasoning: the default patch cannot train it
    earlier = messages[[m["role"] for m in messages].index("assistant")][reasoning_key]
    assert earlier not in render(official, messages, special_tokens=special)
