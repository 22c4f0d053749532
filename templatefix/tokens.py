"""Token-level check of generation spans (SPEC §5).

transformers turns character spans into ``assistant_masks`` with ``char_to_token`` on each span's
first and last character. That is lossy: a token straddling a span edge is trained although part
of it is prompt; a span whose first character maps to no token is dropped together with every
later span; a span whose last character maps to no token, or whose last token is token 0, is
masked to the end of the sequence. This module computes the mask the spans *mean* (a token is
trained iff all its characters lie in a span) independently from the tokenizer's offsets, compares
it with the mask transformers produces, and names every disagreement.

Example:
    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> tok = AutoTokenizer.from_pretrained("tokenizers/qwen3")  # doctest: +SKIP
    >>> check_token_masks(template, tok, [{"role": "user", "content": "hi"},
    ...                                   {"role": "assistant", "content": "hello"}])  # doctest: +SKIP
    []

The helpers ``expected_token_ranges`` and ``transformers_token_ranges`` work on plain offset
lists so that ``templatefix.audit`` can run them on batches without calling transformers.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from templatefix.environment import MaskRule, mask_rule
from templatefix.errors import SourceError
from templatefix.render import Span, merge_spans, render_with_spans

Offsets = Sequence[tuple[int, int]]
TokenRange = tuple[int, int]  # [first, last+1) token indices

#: Issue kinds, in the order they are reported for one span.
IDS_DIFFER = "ids_differ"
START_UNMAPPED = "start_unmapped"
END_UNMAPPED = "end_unmapped"
END_AT_TOKEN_ZERO = "end_at_token_zero"
STRADDLE = "straddle"
EOT_OUTSIDE = "eot_outside"
MISMATCH = "mismatch"
ISSUE_KINDS = (IDS_DIFFER, START_UNMAPPED, END_UNMAPPED, END_AT_TOKEN_ZERO, STRADDLE, EOT_OUTSIDE, MISMATCH)

_TEMPLATE_ARGS = ("tools", "documents", "add_generation_prompt")


@dataclass(frozen=True)
class TokenIssue:
    """One disagreement between the spans and transformers' ``assistant_masks``.

    Attributes:
        kind: one of ``ISSUE_KINDS``.
        token_index: the token concerned (``None`` when no token maps, e.g. ``start_unmapped``).
        token_text: the token's characters in the rendered text (``""`` when none).
        char_range: character range in the rendered text (the token's, or the span edge's).
        message: one line saying what is wrong and, when the template causes it, how to avoid it.
    """

    kind: str
    token_index: int | None
    token_text: str
    char_range: tuple[int, int]
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "token_index": self.token_index,
            "token_text": self.token_text,
            "char_range": list(self.char_range),
            "message": self.message,
        }


# --------------------------------------------------------------------------- offsets arithmetic


class OffsetIndex:
    """Fast ``char_to_token`` over a token offset list, matching ``tokenizers`` exactly.

    ``tokenizers`` returns the first token whose ``[start, end)`` contains the character. With
    non-decreasing ends (every tokenizer we know) that is the first token with ``end > c``,
    found by bisection; otherwise we scan.

    Example:
        >>> index = OffsetIndex([(0, 2), (2, 3), (4, 6)])
        >>> index.char_to_token(2), index.char_to_token(3), index.char_to_token(5)
        (1, None, 2)
    """

    __slots__ = ("offsets", "starts", "ends", "monotonic")

    def __init__(self, offsets: Offsets) -> None:
        self.offsets = offsets
        self.starts = list(map(itemgetter(0), offsets))
        self.ends = list(map(itemgetter(1), offsets))
        # non-decreasing starts and ends (offsets are never negative); sorting a sorted list is linear
        self.monotonic = self.starts == sorted(self.starts) and self.ends == sorted(self.ends)

    def __len__(self) -> int:
        return len(self.offsets)

    def char_to_token(self, char: int) -> int | None:
        if char < 0:
            return None
        if self.monotonic:
            token = bisect_right(self.ends, char)
            if token < len(self.ends) and self.starts[token] <= char:
                return token
            return None
        for token, (start, end) in enumerate(self.offsets):
            if start <= char < end:
                return token
        return None


def transformers_token_ranges(
    index: OffsetIndex, raw_spans: Sequence[Span], rule: MaskRule | None = None
) -> list[TokenRange]:
    """The token ranges ``apply_chat_template`` sets to 1, replaying its loop exactly.

    Takes the *raw* spans in recorded order (transformers does not merge them). Ranges may
    overlap; use ``union_ranges`` to normalise. ``rule`` is the installed transformers' rule
    (``templatefix.environment.mask_rule()``) unless given:

    - ``"char_to_token"``: each span's first and last characters are mapped to tokens; a span
      whose first character no token covers stops the loop (it and every later span are
      dropped); one whose last character no token covers (or that ends in token 0) is masked to
      the end of the sequence.
    - ``"overlap"``: every token that overlaps a span, in one pass over tokens and spans.

    Example:
        >>> index = OffsetIndex([(0, 2), (2, 3), (3, 6)])
        >>> transformers_token_ranges(index, [(2, 6)], "char_to_token")
        [(1, 3)]
        >>> transformers_token_ranges(OffsetIndex([(0, 1), (2, 3)]), [(1, 3)], "char_to_token")
        []
        >>> transformers_token_ranges(OffsetIndex([(0, 1), (2, 3)]), [(1, 3)], "overlap")
        [(1, 2)]
    """
    if (rule or mask_rule()) == "overlap":
        return _overlap_ranges(index, raw_spans)
    ranges: list[TokenRange] = []
    count = len(index)
    for start_char, end_char in raw_spans:
        start_token = index.char_to_token(start_char)
        if start_token is None:
            break
        end_token = index.char_to_token(end_char - 1)
        ranges.append((start_token, end_token + 1 if end_token else count))
    return ranges


def _overlap_ranges(index: OffsetIndex, raw_spans: Sequence[Span]) -> list[TokenRange]:
    if index.monotonic:  # tokens overlapping [s, e): end > s and start < e, found by bisection
        found = ((bisect_right(index.ends, s), bisect_left(index.starts, e)) for s, e in raw_spans)
        return union_ranges(found)
    ranges: list[TokenRange] = []
    span = 0
    for token, (token_start, token_end) in enumerate(index.offsets):
        while span < len(raw_spans) and token_start >= raw_spans[span][1]:
            span += 1
        if span == len(raw_spans):
            break
        if token_end > raw_spans[span][0]:
            if ranges and ranges[-1][1] == token:
                ranges[-1] = (ranges[-1][0], token + 1)
            else:
                ranges.append((token, token + 1))
    return ranges


def expected_token_ranges(index: OffsetIndex, merged_spans: Sequence[Span]) -> list[TokenRange]:
    """Token ranges whose characters lie entirely inside one of ``merged_spans``.

    A zero-width token (``start == end``) counts as inside when it sits strictly within a span.

    Example:
        >>> expected_token_ranges(OffsetIndex([(0, 2), (2, 3), (3, 6)]), [(1, 6)])
        [(1, 3)]
    """
    ranges: list[TokenRange] = []
    if index.monotonic:
        for span_start, span_end in merged_spans:
            first = bisect_left(index.starts, span_start)
            last = bisect_right(index.ends, span_end)
            while first < last and index.starts[first] == index.ends[first] == span_start:
                first += 1  # zero-width token on the opening edge
            while last > first and index.starts[last - 1] == index.ends[last - 1] == span_end:
                last -= 1
            if first < last:
                ranges.append((first, last))
        return union_ranges(ranges)
    mask = [0] * len(index)
    for token, (start, end) in enumerate(index.offsets):
        for span_start, span_end in merged_spans:
            inside = span_start <= start and end <= span_end
            if start == end:
                inside = span_start < start < span_end
            if inside:
                mask[token] = 1
                break
    return ranges_from_mask(mask)


def union_ranges(ranges: Iterable[TokenRange]) -> list[TokenRange]:
    """Sorted union of half-open ranges; empty ones vanish.

    Example:
        >>> union_ranges([(5, 7), (0, 2), (2, 3), (6, 9), (4, 4)])
        [(0, 3), (5, 9)]
    """
    merged: list[list[int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def mask_from_ranges(ranges: Iterable[TokenRange], length: int) -> list[int]:
    """0/1 list of ``length`` with ones on ``ranges``.

    Example:
        >>> mask_from_ranges([(1, 3)], 4)
        [0, 1, 1, 0]
    """
    mask = [0] * length
    for start, end in ranges:
        mask[start:end] = [1] * (min(end, length) - start)
    return mask


def ranges_from_mask(mask: Sequence[int]) -> list[TokenRange]:
    """Inverse of ``mask_from_ranges``.

    Example:
        >>> ranges_from_mask([0, 1, 1, 0, 1])
        [(1, 3), (4, 5)]
    """
    ranges: list[TokenRange] = []
    start = None
    for position, value in enumerate(mask):
        if value and start is None:
            start = position
        elif not value and start is not None:
            ranges.append((start, position))
            start = None
    if start is not None:
        ranges.append((start, len(mask)))
    return ranges


# --------------------------------------------------------------------------- diagnosis


def _show(text: str, limit: int = 40) -> str:
    shown = repr(text if len(text) <= limit else text[:limit] + "…")
    return shown


def diagnose(
    text: str,
    raw_spans: Sequence[Span],
    offsets: Offsets,
    actual_mask: Sequence[int] | None = None,
) -> list[TokenIssue]:
    """Name every disagreement between the spans and the token mask.

    ``actual_mask`` is transformers' ``assistant_masks``; when omitted it is replayed from the
    offsets (``transformers_token_ranges``), which gives the same result.

    Example:
        >>> diagnose("ab cd", [(1, 5)], [(0, 2), (2, 3), (3, 5)])[0].kind
        'straddle'
    """
    index = OffsetIndex(offsets)
    count = len(index)
    merged = merge_spans(raw_spans)
    expected = mask_from_ranges(expected_token_ranges(index, merged), count)
    if actual_mask is None:
        actual = mask_from_ranges(transformers_token_ranges(index, raw_spans), count)
    else:
        actual = list(actual_mask)
    issues: list[TokenIssue] = []
    explained: set[int] = set()

    def token_text(token: int) -> str:
        start, end = offsets[token]
        return text[start:end]

    # Replay transformers' char_to_token loop on the raw spans to name its lossy cases (the
    # overlap rule has none: it never drops a span nor masks to the end).
    for start_char, end_char in raw_spans if mask_rule() == "char_to_token" else ():
        if end_char <= start_char:
            continue  # empty spans are handled by the mismatch pass (they rarely matter)
        start_token = index.char_to_token(start_char)
        if start_token is None:
            dropped = [t for t in range(count) if expected[t] and offsets[t][0] >= start_char]
            explained.update(dropped)
            issues.append(TokenIssue(
                START_UNMAPPED, None, "", (start_char, start_char + 1),
                f"span at chars {start_char}-{end_char} starts on {_show(text[start_char])}, which no "
                f"token covers (the tokenizer drops it): transformers drops this span and every later "
                f"one ({len(dropped)} tokens untrained); keep dropped whitespace outside the span edges",
            ))
            break
        end_token = index.char_to_token(end_char - 1)
        if end_token is None or end_token == 0:
            rest = [t for t in range(start_token, count) if not expected[t]]
            explained.update(rest)
            if end_token is None:
                issues.append(TokenIssue(
                    END_UNMAPPED, None, "", (end_char - 1, end_char),
                    f"span at chars {start_char}-{end_char} ends on {_show(text[end_char - 1])}, which "
                    f"no token covers: transformers masks to the end of the sequence ({len(rest)} extra "
                    f"tokens trained); end the span on a character the tokenizer keeps",
                ))
            else:
                issues.append(TokenIssue(
                    END_AT_TOKEN_ZERO, 0, token_text(0), tuple(offsets[0]),
                    f"span at chars {start_char}-{end_char} ends in token 0, which transformers reads as "
                    f"missing and masks to the end of the sequence ({len(rest)} extra tokens trained); "
                    f"do not end a span inside the first token",
                ))

    # Tokens straddling a span edge.
    for span_start, span_end in merged:
        for edge in (span_start, span_end):
            token = index.char_to_token(edge - 1) if edge == span_end else index.char_to_token(edge)
            if token is None:
                continue
            start, end = offsets[token]
            if start < edge < end or (edge == span_end and start < span_start) or (
                edge == span_start and end > span_end
            ):
                if token in explained:
                    continue
                explained.add(token)
                side = "opening" if edge == span_start else "closing"
                trained = "trained" if actual[token] else "untrained"
                issues.append(TokenIssue(
                    STRADDLE, token, text[start:end], (start, end),
                    f"token {token} {_show(text[start:end])} (chars {start}-{end}) straddles the span's "
                    f"{side} edge at char {edge} and is {trained}: the mask cannot follow the span; move "
                    f"the {{% {'generation' if side == 'opening' else 'endgeneration'} %}} edge to a token "
                    f"boundary (e.g. put the adjoining whitespace on one side of it)",
                ))

    for token in range(count):
        if actual[token] != expected[token] and token not in explained:
            start, end = offsets[token]
            issues.append(TokenIssue(
                MISMATCH, token, text[start:end], (start, end),
                f"token {token} {_show(text[start:end])} (chars {start}-{end}) has assistant mask "
                f"{actual[token]} but the spans say {expected[token]}",
            ))
    return issues


def eot_issues(
    text: str,
    offsets: Offsets,
    actual_mask: Sequence[int],
    expected: Any,
) -> list[TokenIssue]:
    """End-of-turn texts that are not trained.

    ``expected`` is the oracle's ``ProbeExpectation`` (its ``.turns``) or any iterable of turns
    (objects or mappings). A turn gives its end-of-turn text as ``end_of_turn`` (or ``eot``) and
    where it lies either as ``end_of_turn_range`` or as the turn's ``span`` (the text is then
    looked up at the span's end). Turns with ``trained`` false are skipped.

    Example:
        >>> eot_issues("a<e>", [(0, 1), (1, 4)], [1, 0], [{"eot": "<e>", "span": (0, 4)}])[0].kind
        'eot_outside'
    """
    index = OffsetIndex(offsets)
    issues: list[TokenIssue] = []
    turns = getattr(expected, "turns", expected)
    for number, turn in enumerate(turns):
        if _field(turn, "trained") is False:
            continue
        eot = _field(turn, "end_of_turn", "eot", "eot_text")
        if not eot:
            continue
        where = _field(turn, "end_of_turn_range")
        if where is not None:
            position = int(where[0])
        else:
            span = _field(turn, "span", "expected_span")
            if span is None:
                continue
            position = text.rfind(eot, int(span[0]), int(span[1]))
            if position < 0:
                position = text.find(eot, int(span[1]))
            if position < 0:
                continue
        first = index.char_to_token(position)
        last = index.char_to_token(position + len(eot) - 1)
        if first is None or last is None:
            continue
        untrained = [t for t in range(first, last + 1) if not actual_mask[t]]
        if untrained:
            token = untrained[0]
            start, end = offsets[token]
            label = _field(turn, "message_index")
            which = f"message {label}" if label is not None else f"assistant turn {number}"
            issues.append(TokenIssue(
                EOT_OUTSIDE, token, text[start:end], (position, position + len(eot)),
                f"end-of-turn {eot!r} of {which} (chars {position}-{position + len(eot)}) is not "
                f"trained, so the model never learns to stop; put it inside {{% generation %}}",
            ))
    return issues


def _field(item: Any, *names: str) -> Any:
    for name in names:
        if isinstance(item, Mapping):
            if item.get(name) is not None:
                return item[name]
        elif getattr(item, name, None) is not None:
            return getattr(item, name)
    return None


# --------------------------------------------------------------------------- public check


def normalize_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Drop ``None`` values from each message, as ``apply_chat_template`` does before rendering.

    Example:
        >>> normalize_messages([{"role": "assistant", "content": "x", "tool_calls": None}])
        [{'role': 'assistant', 'content': 'x'}]
    """
    return [{key: value for key, value in message.items() if value is not None} for message in messages]


def split_probe(probe_or_messages: Any, template_kwargs: Mapping[str, Any]) -> tuple[list, dict[str, Any]]:
    """``(messages, kwargs)`` from a ``Probe`` (``.messages``, ``.kwargs``), a mapping with
    ``messages``, or a plain message list; explicit ``template_kwargs`` win."""
    if hasattr(probe_or_messages, "messages"):
        messages = probe_or_messages.messages
        kwargs = dict(getattr(probe_or_messages, "kwargs", None) or {})
    elif isinstance(probe_or_messages, Mapping):
        messages = probe_or_messages["messages"]
        kwargs = {k: v for k, v in probe_or_messages.items() if k != "messages"}
    else:
        messages, kwargs = probe_or_messages, {}
    kwargs.update(template_kwargs)
    return normalize_messages(messages), kwargs


def special_tokens_of(tokenizer: Any) -> dict[str, Any]:
    """The variables ``apply_chat_template`` gives templates for the tokenizer's special tokens."""
    return dict(tokenizer.special_tokens_map)


def check_token_masks(
    template: str,
    tokenizer: Any,
    probe_or_messages: Any,
    expected: Any = None,
    **template_kwargs: Any,
) -> list[TokenIssue]:
    """Compare transformers' ``assistant_masks`` with the spans, token by token (SPEC §5).

    Renders with markers (``render_with_spans``), asks ``tokenizer.apply_chat_template`` for its
    mask, encodes the rendered text with offsets, and returns one ``TokenIssue`` per disagreement
    (empty list: the mask is exactly the spans). ``expected`` (the oracle's ``ProbeExpectation``
    from ``templatefix.oracle.expected_turns``, or its turns) adds a check that each trained
    turn's end-of-turn text is trained.

    Raises:
        RenderError / TemplateRejected: the template failed on (or refused) the conversation.
        TemplatefixError: the tokenizer is not a fast tokenizer (offsets are needed).
    """
    require_fast(tokenizer)
    messages, kwargs = split_probe(probe_or_messages, template_kwargs)
    special_tokens = special_tokens_of(tokenizer)
    text, raw_spans = render_with_spans(template, messages, special_tokens=special_tokens, **kwargs)
    out = tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        **kwargs,
    )
    actual_ids = list(out["input_ids"])
    actual_mask = list(out["assistant_masks"])
    encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    ids = list(encoding["input_ids"])
    offsets = [tuple(pair) for pair in encoding["offset_mapping"]]
    if ids != actual_ids:
        pairs = enumerate(zip(ids, actual_ids, strict=False))
        first = next((i for i, (a, b) in pairs if a != b), min(len(ids), len(actual_ids)))
        start, end = offsets[first] if first < len(offsets) else (len(text), len(text))
        return [TokenIssue(
            IDS_DIFFER, first, text[start:end], (start, end),
            f"apply_chat_template's token ids differ from encoding the rendered text from token {first} "
            f"({len(actual_ids)} vs {len(ids)} tokens): the two renders disagree, so no mask can be checked",
        )]
    issues = diagnose(text, raw_spans, offsets, actual_mask)
    if expected is not None:
        issues.extend(eot_issues(text, offsets, actual_mask, expected))
    return issues


# --------------------------------------------------------------------------- tokenizers


def require_fast(tokenizer: Any) -> None:
    """Raise a one-line error unless ``tokenizer`` is a fast (Rust) tokenizer with offsets."""
    from templatefix.errors import TemplatefixError

    if not getattr(tokenizer, "is_fast", False):
        raise TemplatefixError(
            f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer: token offsets are needed "
            f"(provide a tokenizer.json)"
        )


def load_fast_tokenizer(path: str | Path) -> Any:
    """Load a tokenizer (a local directory, or a Hub id such as ``Qwen/Qwen3-8B``) with
    ``AutoTokenizer``; one-line errors if missing or slow.

    Example:
        >>> load_fast_tokenizer("/nonexistent")  # doctest: +SKIP
        SourceError: tokenizer directory not found: /nonexistent
    """
    directory = Path(path)
    is_hub_id = not directory.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) is not None
    if not directory.is_dir() and not is_hub_id:
        raise SourceError(f"tokenizer directory not found: {path} (give a local tokenizer directory)")
    from transformers import AutoTokenizer

    try:
        # A Hub id goes through huggingface_hub (HF_TOKEN, HF_ENDPOINT, offline mode honoured).
        tokenizer = AutoTokenizer.from_pretrained(str(path) if is_hub_id else str(directory))
    except Exception as error:  # noqa: BLE001 - any load failure is a bad source
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SourceError(f"cannot load tokenizer from {path}: {message}") from None
    require_fast(tokenizer)
    return tokenizer
