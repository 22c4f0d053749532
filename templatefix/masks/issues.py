"""Naming each disagreement between the spans and a token mask (``TokenIssue``).

``diagnose`` replays transformers' lossy cases (a span starting or ending on a character no token
covers, a span ending in token 0), finds tokens straddling a span edge and any other token whose
mask differs from what the spans mean; ``eot_issues`` finds end-of-turn texts left untrained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from templatefix.environment import mask_rule
from templatefix.masks.ranges import (
    OffsetIndex,
    Offsets,
    expected_token_ranges,
    mask_from_ranges,
    transformers_token_ranges,
)
from templatefix.render import Span, merge_spans

#: Issue kinds, in the order they are reported for one span.
IDS_DIFFER = "ids_differ"
START_UNMAPPED = "start_unmapped"
END_UNMAPPED = "end_unmapped"
END_AT_TOKEN_ZERO = "end_at_token_zero"
STRADDLE = "straddle"
EOT_OUTSIDE = "eot_outside"
MISMATCH = "mismatch"
ISSUE_KINDS = (IDS_DIFFER, START_UNMAPPED, END_UNMAPPED, END_AT_TOKEN_ZERO, STRADDLE, EOT_OUTSIDE, MISMATCH)


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
                    END_AT_TOKEN_ZERO, 0, token_text(0), (offsets[0][0], offsets[0][1]),
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
