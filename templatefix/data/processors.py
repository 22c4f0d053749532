"""Exact assistant masks for processors (vision-language models), after image-token expansion.

A processor renders the chat template, then expands each image placeholder into many tokens
(Gemma 3: ``<start_of_image>`` becomes ``\\n\\n<start_of_image>`` + 256 ``<image_soft_token>`` +
``<end_of_image>\\n\\n``; Qwen2.5-VL: one ``<|image_pad|>`` per patch group). The spans are
character ranges of the text *before* expansion, so a mask computed from the expanded text's
offsets comes out empty or shifted unless it accounts for the expansion (transformers 4.56 does
not: its ``assistant_masks`` for Gemma 3 with an image are all zeros; 5.18+ corrects the shift
with ``return_text_replacement_offsets``).

``expanded_mask`` needs no processor internals: it tokenizes the rendered text, aligns those
tokens with the processor's expanded ``input_ids`` (equal runs map one to one; the tokens an
expansion inserts take the characters they replaced), and sets 1 on exactly the tokens inside
the spans. ``processor_mask`` does this for one conversation and compares with transformers' own
mask; ``AssistantMaskCollator`` gives TRL batches with labels from the exact mask.

Example:
    >>> result = processor_mask(processor, messages)  # doctest: +SKIP
    >>> result.issue, sum(result.assistant_masks)  # doctest: +SKIP
    ('empty', 6)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, cast

from templatefix.data.resolve import resolve_template
from templatefix.errors import TemplatefixError
from templatefix.masks.ranges import ranges_from_mask
from templatefix.render import Span, merge_spans, render_with_spans
from templatefix.tokens import normalize_messages

#: ``ProcessorMask.issue`` values.
EMPTY = "empty"
SHIFTED = "shifted"
DIFFERS = "differs"


@dataclass(frozen=True)
class ProcessorMask:
    """One conversation through a processor.

    Attributes:
        input_ids: the processor's tokens (image placeholders expanded).
        assistant_masks: 1 on exactly the tokens inside the spans.
        transformers_masks: ``processor.apply_chat_template(..., return_assistant_tokens_mask=True)``'s
            mask (``None`` when not computed).
        issue: ``None`` when transformers' mask is exact; ``"empty"`` (nothing trained),
            ``"shifted"`` (as many tokens trained, at other positions) or ``"differs"``.
        message: one line describing the issue (``""`` when none).
    """

    input_ids: list[int]
    assistant_masks: list[int]
    transformers_masks: list[int] | None
    issue: str | None
    message: str


def _tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def expanded_mask(text: str, spans: Sequence[Span], tokenizer: Any, expanded_ids: Sequence[int]) -> list[int]:
    """The exact assistant mask over ``expanded_ids`` (the processor's tokens of ``text``).

    Args:
        text: the rendered conversation (before expansion).
        spans: its generation spans (``render_with_spans``).
        tokenizer: the processor's (fast) tokenizer.
        expanded_ids: the token ids the processor produced for ``text`` (without padding).

    Returns:
        0/1 per expanded token: 1 when the characters it stands for lie inside a span. A token an
        expansion inserted stands for the characters it replaced (an image placeholder); a token
        inserted between two characters counts as inside only when a span holds both sides.

    Example:
        >>> expanded_mask("ab", [(1, 2)], tokenizer, [1, 99, 99, 2])  # doctest: +SKIP
        [0, 0, 0, 1]
    """
    encoding = _tokenizer_of(tokenizer).backend_tokenizer.encode(text, add_special_tokens=False)
    ids, offsets = encoding.ids, encoding.offsets
    merged = merge_spans(spans)

    def inside(start: int, end: int) -> int:
        if start == end:
            return int(any(s < start < e for s, e in merged))
        return int(any(s <= start and end <= e for s, e in merged))

    mask: list[int] = []
    matcher = SequenceMatcher(None, list(ids), list(expanded_ids), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            mask.extend(inside(*offsets[i]) for i in range(i1, i2))
        elif tag in ("replace", "insert"):
            start = offsets[i1][0] if i1 < len(offsets) else len(text)
            end = offsets[i2 - 1][1] if i2 > i1 else start
            mask.extend([inside(start, end)] * (j2 - j1))
    return mask


def classify(transformers_mask: Sequence[int], exact: Sequence[int]) -> tuple[str | None, str]:
    """``(issue, message)`` comparing transformers' mask with the exact one.

    Example:
        >>> classify([0, 0, 0, 0], [0, 1, 1, 0])[0], classify([0, 0, 1, 1], [0, 1, 1, 0])[0]
        ('empty', 'shifted')
    """
    actual, expected = list(transformers_mask), list(exact)
    if actual == expected:
        return None, ""
    if not any(actual) and any(expected):
        return EMPTY, f"transformers' assistant_masks are empty; the spans train {sum(expected)} tokens"
    runs_actual, runs_expected = ranges_from_mask(actual), ranges_from_mask(expected)
    if [e - s for s, e in runs_actual] == [e - s for s, e in runs_expected]:
        moved = runs_actual[0][0] - runs_expected[0][0]
        return SHIFTED, (
            f"transformers' assistant_masks are shifted by {moved} tokens (image-token expansion): "
            f"first trained token {runs_actual[0][0]}, should be {runs_expected[0][0]}"
        )
    wrong = sum(a != e for a, e in zip(actual, expected, strict=False)) + abs(len(actual) - len(expected))
    return DIFFERS, f"transformers' assistant_masks differ from the spans on {wrong} tokens"


def _flat(value: Any) -> list[int]:
    value = value.tolist() if hasattr(value, "tolist") else value
    while isinstance(value, list) and value and isinstance(value[0], list):
        value = value[0]
    return [int(v) for v in value]


def processor_mask(
    processor: Any,
    messages: Sequence[Mapping[str, Any]],
    template: str | None = None,
    *,
    compare: bool = True,
    **template_kwargs: Any,
) -> ProcessorMask:
    """Tokens and exact assistant mask of one conversation through ``processor`` (images expanded),
    with transformers' own mask compared.

    Args:
        processor: a transformers processor (or a plain fast tokenizer: nothing is expanded).
        messages: the conversation; image parts hold the images (``{"type": "image", "image": ...}``).
        template: a marked template; default: the processor's, patched when it has no markers.
        compare: also ask transformers for its ``assistant_masks`` and classify the difference.

    Raises:
        RenderError / TemplateRejected: the template failed on the conversation.
        TemplatefixError: the template has no markers and cannot be patched.
    """
    template = resolve_template(template, processor).template
    messages = normalize_messages(messages)
    tokenizer = _tokenizer_of(processor)
    special = tokenizer.special_tokens_map
    text, spans = render_with_spans(template, messages, special_tokens=special, **template_kwargs)
    out = processor.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True,
        return_assistant_tokens_mask=compare, **template_kwargs,
    )
    ids = _flat(out["input_ids"])
    exact = expanded_mask(text, spans, tokenizer, ids)
    if not compare:
        return ProcessorMask(ids, exact, None, None, "")
    actual = _flat(out["assistant_masks"])
    issue, message = classify(actual, exact)
    return ProcessorMask(ids, exact, actual, issue, message)


@dataclass
class AssistantMaskCollator:
    """A TRL-ready data collator for vision-language models: pads a batch through the processor and
    sets ``labels`` from the exact assistant mask (``-100`` elsewhere).

    Examples hold ``messages`` and, as in TRL's vision datasets, optionally ``images`` (filling
    the ``{"type": "image"}`` parts in order). Use it with ``SFTTrainer(data_collator=collator,
    args=SFTConfig(remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}))``;
    leave ``assistant_only_loss`` off, the collator does the masking.

    Attributes:
        processor: the processor.
        template: a marked template; default: the processor's, patched when it has no markers.
    """

    processor: Any
    template: str | None = None

    def __post_init__(self) -> None:
        self.template = resolve_template(self.template, self.processor, strict=True).template

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        conversations = [with_images(e["messages"], e.get("images") or []) for e in examples]
        tokenizer = _tokenizer_of(self.processor)
        out = self.processor.apply_chat_template(
            conversations, chat_template=self.template, tokenize=True, return_dict=True,
            return_tensors="pt", padding=True,
        )
        labels = torch.full_like(out["input_ids"], -100)
        for row, messages in enumerate(conversations):
            special = tokenizer.special_tokens_map
            template = cast(str, self.template)  # resolved in __post_init__
            text, spans = render_with_spans(template, messages, special_tokens=special)
            keep = out["attention_mask"][row].bool()
            ids = out["input_ids"][row][keep].tolist()
            mask = torch.tensor(expanded_mask(text, spans, tokenizer, ids), dtype=torch.bool)
            positions = keep.nonzero().flatten()
            if len(positions) != len(mask):
                raise TemplatefixError(f"example {row}: {len(mask)} mask values for {len(positions)} tokens")
            chosen = positions[mask]
            labels[row, chosen] = out["input_ids"][row, chosen]
        out["labels"] = labels
        return dict(out)


def _without_none(part: Any) -> Any:
    return {k: v for k, v in part.items() if v is not None} if isinstance(part, dict) else part


def with_images(messages: Sequence[Mapping[str, Any]], images: Sequence[Any]) -> list[dict[str, Any]]:
    """Messages whose ``{"type": "image"}`` parts get ``images`` in order (TRL's dataset layout).

    Example:
        >>> with_images([{"role": "user", "content": [{"type": "image"}]}], ["img"])[0]["content"]
        [{'type': 'image', 'image': 'img'}]
    """
    remaining = list(images)
    result = []
    for message in normalize_messages(messages):
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                part = dict(part) if isinstance(part, Mapping) else part
                if isinstance(part, dict) and part.get("type") == "image" and part.get("image") is None:
                    if remaining:
                        part["image"] = remaining.pop(0)
                parts.append(_without_none(part))
            message = {**message, "content": parts}
        result.append(message)
    return result
