"""Which characters of a render each message's loop iteration produced, and the instrumented cache.

Example:
    >>> chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    >>> message_regions("{% for m in messages %}<{{ m.content }}>{% endfor %}", chat)
    ('<a><b>', [(0, 3), (3, 6)])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from templatefix.analysis.instrument import Instrumented
from templatefix.analysis.records import Trace
from templatefix.template import ChatTemplate


def message_regions(
    template: ChatTemplate | str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, Any] | None = None,
    **template_kwargs: Any,
) -> tuple[str, list[tuple[int, int] | None]]:
    """The render, and per message the characters its loop iteration produced (None if unknown).

    The iteration for message *j* is the one whose loop item equals message *j* (as the template
    sees it); its region runs to the next iteration of the same loop, or the loop's end. When
    several loops visit the messages, the one that emits text for them wins.

    Example:
        >>> message_regions("{% for m in messages %}[{{ m.content }}]{% endfor %}!",
        ...                 [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
        ('[a][b]!', [(0, 3), (3, 6)])
    """
    instrumented = instrumented_for(template)
    result = instrumented.trace(
        messages,
        add_generation_prompt=add_generation_prompt,
        special_tokens=special_tokens,
        **template_kwargs,
    )
    return result.text, regions_of(instrumented, result)


def regions_of(instrumented: Instrumented, result: Trace) -> list[tuple[int, int] | None]:
    """Per message of a trace, the characters its loop iteration produced (see
    :func:`message_regions`)."""
    chat = result.messages
    regions: list[tuple[int, int] | None] = [None] * len(chat)
    for loop_id in range(len(instrumented.loops)):
        for item, start, end in iteration_bounds(result, loop_id):
            # The very object the template was given; equal copies only when that is unambiguous
            # (two empty assistant messages are equal but are different turns).
            matches = [i for i, message in enumerate(chat) if item is message]
            if not matches and isinstance(item, dict):
                equal = [i for i, message in enumerate(chat) if item == message]
                matches = equal if len(equal) == 1 else []
            for index in matches:
                current = regions[index]
                if current is None or (current[1] - current[0]) < (end - start):
                    regions[index] = (start, end)
    return regions


def iteration_bounds(result: Trace, loop_id: int) -> list[tuple[Any, int, int]]:
    """(item, start, end) for each iteration of one loop, in order."""
    iterations = [it for it in result.iterations if it.loop == loop_id]
    ends = sorted(offset for lid, offset in result.loop_ends if lid == loop_id)
    bounds = []
    for index, it in enumerate(iterations):
        if index + 1 < len(iterations) and iterations[index + 1].index0 > it.index0:
            end = iterations[index + 1].start
        else:
            end = next((offset for offset in ends if offset >= it.start), len(result.text))
        bounds.append((it.item, it.start, end))
    return bounds


def instrumented_for(template: ChatTemplate | str) -> Instrumented:
    """The instrumented template, built once per ``ChatTemplate`` (a text is parsed first).

    The instrumentation, and the analyses that read its tree (``templatefix.conditions``,
    ``templatefix.coverage``, ``templatefix.solve``), work on their own copy of the AST: the
    template's shared AST stays as parsed.
    """
    return ChatTemplate.of(template).resolve(_instrument)


def _instrument(template: ChatTemplate) -> Instrumented:
    return Instrumented(template.source.copy())
