"""Token ranges from offsets: the mask transformers computes and the mask the spans mean.

Everything here works on plain offset lists (``(start, end)`` per token), so the audit
(``templatefix.data.audit``) runs it on batches without calling transformers.

- ``transformers_token_ranges``: what ``apply_chat_template`` sets to 1, replaying its rule;
- ``expected_token_ranges``: the tokens whose characters all lie inside a span;
- ``union_ranges``, ``mask_from_ranges``, ``ranges_from_mask``: conversions.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from operator import itemgetter

from templatefix.environment import MaskRule, mask_rule
from templatefix.render import Span

Offsets = Sequence[tuple[int, int]]
TokenRange = tuple[int, int]  # [first, last+1) token indices


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
