"""Placing a turn by its shape (SPEC rule 3): from the end of its header through its end-of-turn text.

Where the generation prompt disagrees with the training render, or history renders a turn
differently from what the model generated, the span cannot be read off a prefix render: it runs
from the end of the turn's header (the longest prefix of the generation prompt found before the
turn's first text) through its end-of-turn text, and holds no text of any other message. The end
comes from the trace when one loop iteration rendered the turn alone, else from the end-of-turn
text, the next message's header or the end of the render.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from templatefix.analysis.texts import (
    TRAILING_MARKUP,
    common_prefix_length,
    common_suffix_length,
    locate_texts,
    markup_boundary,
    rstrip_end,
)
from templatefix.errors import RenderError
from templatefix.render import Span


class PrefixRenders(Protocol):
    """Memoised renders of prefixes of one probe conversation (as ``templatefix.oracle`` keeps them)."""

    messages: list[Mapping[str, Any]]

    def __call__(self, count: int, add_generation_prompt: bool) -> str: ...


def place_by_shape(
    renderer: PrefixRenders,
    index: int,
    full: str,
    located: list[list[Span]],
    regions: list[Span | None] | None,
    generation_prompt: str,
    eot: str,
) -> tuple[int, int, int, Span | None, str]:
    """Rule 3's shape in ``R``: from the end of the header through the end-of-turn text.

    Returns ``(start, end_out, end_in, end-of-turn range, how the end was located)``.
    """
    texts = located[index]
    previous_end = max((end for spans in located[:index] for _, end in spans), default=0)
    following = [spans[0][0] for spans in located[index + 1:] if spans]
    next_text = following[0] if following else len(full)

    region = regions[index] if regions else None
    if region is not None and any(
        start < region[1] and region[0] < end
        for other, spans in enumerate(located) if other != index
        for start, end in spans
    ):
        # the iteration also wrote other messages' text (Gemma 4 renders tool results inside the
        # assistant turn): rule 3 forbids that, so locate the turn by its texts instead. (Text of
        # another message written elsewhere, such as a system message moved next to the last
        # user message, says nothing about this iteration.)
        region = None
    if region is not None:
        region_start, region_end = region
        shared = common_prefix_length(generation_prompt, full[region_start:region_end])
        if not markup_boundary(generation_prompt, shared):
            # The iteration writes something before the header (a template's indentation and
            # newlines, the previous turn's end-of-turn token): the header is where the generation
            # prompt's text is, before the first text.
            first_text = min([start for start, _ in texts if start >= region_start] + [region_end])
            region_start = _header_position(full, generation_prompt, region_start, first_text)
    else:
        first_text = texts[0][0] if texts else next_text
        region_start = _header_position(full, generation_prompt, previous_end, first_text)
        region_end = -1

    # A header never ends inside a markup token: "<|im_start|>assistant\n<think>" and a turn
    # that starts "<tool_call>" share "<", which is the model's output, not the header.
    header = markup_boundary(generation_prompt, common_prefix_length(generation_prompt, full[region_start:]))
    if not header and generation_prompt.strip():
        # This turn's generation prompt is not its header (Gemma 4 prompts "<|channel>thought\n"
        # after a tool result; the turn then opens with "<|turn>model\n"): another assistant
        # turn's generation prompt may be.
        lower = region_start
        upper = min([text_start for text_start, _ in texts if text_start >= lower] + [next_text])
        for other in _other_generation_prompts(renderer, index, generation_prompt):
            position = _header_position(full, other, lower, upper)
            length = markup_boundary(other, common_prefix_length(other, full[position:]))
            if length and full.startswith(other[:length], position) and not full[lower:position].strip():
                region_start, header = position, length
                break
    start = region_start + header
    # Nor inside the message's own words: a prompt ending "...user" and an answer "uniform..."
    # share a "u" by chance.
    own_starts = [text_start for text_start, _ in texts if text_start >= region_start]
    if own_starts:
        start = min(start, min(own_starts))

    last_text_end = max((end for _, end in texts if end <= next_text), default=start)
    located_by = "trace"
    eot_range: Span | None = None
    if region is None:
        region_end, located_by = _turn_end(
            renderer, index, full, located, start, last_text_end, next_text, eot
        )
    elif eot and full.startswith(eot, region_end) and region_end + len(eot) <= next_text:
        # the end-of-turn text is written when the next message starts (AI21 Jamba's <|eom|>):
        # it is still this turn's (SPEC §3)
        region_end += len(eot)
    end_out = max(rstrip_end(full, start, region_end), start)
    end_in = max(region_end, end_out)
    if eot and full[:end_out].endswith(eot) and end_out - len(eot) >= last_text_end:
        eot_range = (end_out - len(eot), end_out)
    else:
        markup = TRAILING_MARKUP.search(full, last_text_end, end_out)
        if markup:
            eot_range = (markup.start(), markup.end())
    return start, end_out, end_in, eot_range, located_by


def generation_prompt_of(prompt: str, before: str) -> str:
    """What ``add_generation_prompt`` appends: ``prompt`` (rendered with it) after ``before`` (the
    same conversation without it), from a markup boundary. ``prompt`` usually continues
    ``before``; a template that also writes a preamble when asked (a system block first) holds
    ``before`` further in, and the generation prompt is what follows it there. Where the preamble
    comes after a start both renders share (``<s>`` then a system block), what follows the shared
    start of ``before`` is looked for instead.

    Example:
        >>> generation_prompt_of("<s><sys>S</sys><u>hi</u><a>", "<s><u>hi</u>")
        '<a>'
    """
    cut = common_prefix_length(prompt, before)
    if cut < len(before) and before.strip():
        found = prompt.rfind(before)
        if found > 0:
            cut = found + len(before)
        else:
            rest = before[markup_boundary(before, cut):]
            found = prompt.rfind(rest) if rest.strip() else -1
            if found > cut:
                cut = found + len(rest)
    return prompt[markup_boundary(prompt, cut):]


def _other_generation_prompts(renderer: PrefixRenders, index: int, own: str) -> list[str]:
    """The generation prompts of the conversation's other assistant turns, distinct from ``own``."""
    found: list[str] = []
    for other, message in enumerate(renderer.messages):
        if other == index or message.get("role") != "assistant":
            continue
        try:
            prompt, before = renderer(other, True), renderer(other, False)
        except RenderError:
            continue
        generation_prompt = generation_prompt_of(prompt, before)
        if generation_prompt.strip() and generation_prompt != own and generation_prompt not in found:
            found.append(generation_prompt)
    return found


def _header_position(full: str, generation_prompt: str, lower: int, upper: int) -> int:
    """Where the turn's header starts: the last place in ``full[lower:upper]`` holding the longest
    prefix of the generation prompt. Without any match the turn starts right at ``lower``."""
    for length in range(len(generation_prompt), 0, -1):
        position = full.rfind(generation_prompt[:length], lower, upper)
        if position >= 0:
            return position
    return lower


def _turn_end(
    renderer: PrefixRenders,
    index: int,
    full: str,
    located: list[list[Span]],
    start: int,
    last_text_end: int,
    next_text: int,
    eot: str,
) -> tuple[int, str]:
    """Where turn ``index`` ends in ``R`` without a trace: its end-of-turn text, else the header of
    the next message (as rendered in a prefix), else the end of the render.

    Where the next message's header is not known (its iteration rewrites this turn too), the turn
    ends no later than where ``R`` departs from the text the model generated (``G``) after the
    turn's last text: what ``R`` writes from there to the next message's text (``<res>`` before a
    tool result folded into the turn) is not the model's."""
    if eot:
        position = full.find(eot, last_text_end, next_text)
        if position >= 0:
            end = position + len(eot)
            whitespace = len(full[end:next_text]) - len(full[end:next_text].lstrip())
            return end + whitespace, "end-of-turn"
    following = [j for j in range(index + 1, len(located)) if located[j]]
    if not following:
        return len(full), "end-of-render"
    j = following[0]
    header = _message_header(renderer, j)
    overlap = common_suffix_length(header, full[last_text_end:next_text])
    end = next_text - overlap
    if not header:
        end = min(end, _departure(renderer, index, full, start, last_text_end, end))
    return end, "next-message"


def _departure(renderer: PrefixRenders, index: int, full: str, start: int, lower: int, upper: int) -> int:
    """Where ``R`` from ``start`` departs from the turn's ``G`` (``F = P + G``), moved back out of a
    markup token, when that lies in ``[lower, upper)``; else ``upper``."""
    try:
        prompt, final = renderer(index, True), renderer(index + 1, False)
    except RenderError:
        return upper
    if not final.startswith(prompt):
        return upper
    generated = final[len(prompt):]
    at = markup_boundary(full, start + common_prefix_length(generated, full[start:]))
    return at if lower <= at < upper else upper


def _message_header(renderer: PrefixRenders, index: int) -> str:
    """The text a template writes before message ``index``'s first probe text.

    Taken from a pair of prefix renders ``render(M[:k])``, ``render(M[:k+1])`` where the longer
    extends the shorter, for ``k = index`` first and then any other message of the same role
    (history rewriting can break the prefix property for ``index`` itself, as in gpt-oss).
    """
    role = renderer.messages[index].get("role")
    candidates = [index] + [
        k for k, message in enumerate(renderer.messages) if k != index and message.get("role") == role
    ]
    for k in candidates:
        try:
            shorter, longer = renderer(k, False), renderer(k + 1, False)
        except Exception:  # a prefix the original refuses: try another message of the role
            continue
        if not longer.startswith(shorter):
            continue
        added = longer[len(shorter):]
        first = locate_texts(added, [renderer.messages[k]])[0]
        if first:
            return added[: first[0][0]]
    return ""
