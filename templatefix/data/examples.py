"""Auditing a batch of rows: render with the spans, tokenize in one call, check each example.

``audit_examples`` is the one code path behind ``templatefix audit`` and the dataset transforms
(``templatefix.data.transforms``); ``RenderedBatch`` splits it in its three steps so that
tokenizing one batch overlaps rendering the next.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from templatefix.data.findings import AuditOptions, ExampleAudit
from templatefix.data.history import common_prefix, history_verdicts, shape_of
from templatefix.data.rows import RowError, completion_start, conversation_of, expand_row, parse_row
from templatefix.errors import TemplatefixError
from templatefix.masks.issues import diagnose
from templatefix.masks.ranges import (
    OffsetIndex,
    expected_token_ranges,
    mask_from_ranges,
    transformers_token_ranges,
    union_ranges,
)
from templatefix.render import merge_spans, render, render_with_spans
from templatefix.tokens import require_fast, special_tokens_of


@dataclass
class AuditState:
    """What auditing needs, built once per process: the marked template, the tokenizer, the
    options, and the history verdict per conversation shape (filled as examples come)."""

    template: str
    tokenizer: Any
    options: AuditOptions
    special_tokens: dict[str, Any]
    shapes: dict[tuple, list[tuple[int, str]]] = field(default_factory=dict)

    @classmethod
    def build(cls, template: str, tokenizer: Any, options: AuditOptions | None = None) -> AuditState:
        require_fast(tokenizer)
        return cls(template, tokenizer, options or AuditOptions(), special_tokens_of(tokenizer))


@dataclass
class _Rendered:
    audit: ExampleAudit
    messages: list[dict[str, Any]]
    kwargs: dict[str, Any]
    text: str
    spans: list[tuple[int, int]]
    completion: int | None


def audit_examples(
    rows: Sequence[Any], state: AuditState, *, with_tokens: bool = False
) -> list[ExampleAudit]:
    """Audit a batch of rows (mappings, or JSON lines as ``str``), one ``ExampleAudit`` each.

    This is the one code path behind ``templatefix audit`` and the dataset transforms
    (``templatefix.data.transforms``). The texts are tokenized in one batched call.

    Args:
        rows: the batch.
        state: from ``AuditState.build``.
        with_tokens: also fill ``input_ids`` and ``assistant_masks``.
    """
    batch = RenderedBatch.render(rows, state)
    return batch.finish(batch.encode(state), state, with_tokens=with_tokens)


@dataclass
class RenderedBatch:
    """A batch between its three steps: rendered (``render``), tokenized (``encode``, which runs
    in the tokenizer's native code without the GIL, so it can overlap the next batch's
    rendering), and audited (``finish``)."""

    audits: list[ExampleAudit]
    pending: list[_Rendered]

    @classmethod
    def render(cls, rows: Sequence[Any], state: AuditState) -> RenderedBatch:
        """Parse and render each row with its spans; bad rows and template errors are flagged."""
        audits = [ExampleAudit() for _ in rows]
        pending: list[_Rendered] = []
        for audit, row in zip(audits, rows, strict=True):
            try:
                row = parse_row(row)
                messages, kwargs = conversation_of(row)
            except RowError as error:
                audit.flag("bad_row", str(error))
                continue
            if state.options.expand_turns:
                audit.expanded = expand_row(row, messages)
            try:
                text, spans = render_with_spans(
                    state.template, messages, special_tokens=state.special_tokens, **kwargs
                )
            except TemplatefixError as error:
                audit.flag("template_error", str(error))
                continue
            pending.append(_Rendered(audit, messages, kwargs, text, spans, completion_start(row)))
        return cls(audits, pending)

    def encode(self, state: AuditState) -> list[Any]:
        """Tokenize the rendered texts in one batch (offsets included)."""
        if not self.pending:
            return []
        texts = [item.text for item in self.pending]
        return state.tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)

    def finish(
        self, encodings: list[Any], state: AuditState, *, with_tokens: bool = False
    ) -> list[ExampleAudit]:
        """Check masks, truncation and history from the encodings; the audits in row order."""
        for item, encoding in zip(self.pending, encodings, strict=True):
            _audit_tokens(item, encoding, state, with_tokens)
        return self.audits


def _audit_tokens(item: _Rendered, encoding: Any, state: AuditState, with_tokens: bool) -> None:
    audit, text, spans = item.audit, item.text, item.spans
    offsets = encoding.offsets
    token_index = OffsetIndex(offsets)
    merged = merge_spans(spans)
    actual = union_ranges(transformers_token_ranges(token_index, spans))
    expected = expected_token_ranges(token_index, merged)
    if item.completion is not None:  # TRL trains only the completion of prompt/completion rows
        first = _completion_token(state, item.messages[: item.completion], item.kwargs, text, token_index)
        actual, expected = _clip(actual, first), _clip(expected, first)
    audit.tokens = len(offsets)
    audit.trained = sum(end - start for start, end in expected)
    if with_tokens:
        audit.input_ids = list(encoding.ids)
        audit.assistant_masks = mask_from_ranges(expected, len(offsets))
    if actual != expected:
        issues = diagnose(text, spans, offsets)
        if issues:
            more = f" (+{len(issues) - 1} more)" if len(issues) > 1 else ""
            audit.flag("token_issue", issues[0].message + more)
    max_length = state.options.max_length
    if audit.trained == 0:
        audit.flag("empty_mask", "no token is trained (no span, or spans lost)")
    elif max_length is not None and expected[0][0] >= max_length:
        audit.flag(
            "truncated",
            f"first trained token is #{expected[0][0]}, past --max-length {max_length} "
            f"({len(offsets)} tokens)",
        )
    if state.options.history != "off" and merged:
        _audit_history(item, merged, state)


def _audit_history(item: _Rendered, merged: list[tuple[int, int]], state: AuditState) -> None:
    key = shape_of(item.messages, item.kwargs) if state.options.history == "shape" else None
    verdicts = state.shapes.get(key) if key is not None else None
    if verdicts is None:
        verdicts = history_verdicts(
            state.template, item.messages, item.text, merged, state.special_tokens, item.kwargs
        )
        item.audit.history_checked = True
        if key is not None:
            state.shapes[key] = verdicts
    for message_index, kind in verdicts:
        if item.completion is not None and message_index < item.completion:
            continue
        if kind == "rewritten":
            note = (
                f"assistant message {message_index} is rendered differently from what the model "
                f"generated; train the last turn only or use --expand-turns"
            )
        else:
            note = (
                f"assistant message {message_index}: the render after the generation prompt does "
                f"not start with that prompt; its span cannot be exact"
            )
        item.audit.flag(kind, note)


def _clip(ranges: list[tuple[int, int]], first: int) -> list[tuple[int, int]]:
    return [(max(start, first), end) for start, end in ranges if end > first]


def _completion_token(
    state: AuditState,
    prompt: list[dict[str, Any]],
    kwargs: dict[str, Any],
    text: str,
    token_index: OffsetIndex,
) -> int:
    """First token of the completion: where the prompt's render (with generation prompt) stops
    matching the full render, as TRL's common-prefix rule finds it."""
    if not prompt:
        return 0
    try:
        rendered = render(
            state.template, prompt, add_generation_prompt=True, special_tokens=state.special_tokens, **kwargs
        )
    except TemplatefixError:
        return 0
    cut = common_prefix(text, rendered)
    return (
        bisect_right(token_index.ends, cut)
        if token_index.monotonic
        else sum(1 for _, end in token_index.offsets if end <= cut)
    )
