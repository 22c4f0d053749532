"""``{% generation %}`` markers: the one detector every caller uses.

A marker is a ``generation`` or ``endgeneration`` tag as jinja2's own lexer sees it: a
``block_begin`` (``{%``, ``{%-``, ``{%+``), the name, a ``block_end``. Text inside comments,
strings or ``{% raw %}`` is not a marker.

Example:
    >>> has_markers("{# {% generation %} #}{{ x }}")
    False
    >>> has_markers("{%+ generation %}x{%- endgeneration -%}")
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jinja2

from templatefix.source import TemplateSource

MARKER_NAMES = ("generation", "endgeneration")


def _tags(kinds: Sequence[tuple[str, str]]) -> Iterable[tuple[int, int]]:
    """Index ranges ``(begin, end)`` of the marker tags in a token sequence of ``(kind, text)``
    (whitespace tokens skipped)."""
    for index, (kind, text) in enumerate(kinds):
        if kind != "name" or text not in MARKER_NAMES:
            continue
        begin = index - 1
        while begin >= 0 and kinds[begin][0] == "whitespace":
            begin -= 1
        end = index + 1
        while end < len(kinds) and kinds[end][0] == "whitespace":
            end += 1
        opened = begin >= 0 and kinds[begin][0] == "block_begin"
        if opened and end < len(kinds) and kinds[end][0] == "block_end":
            yield begin, end


def has_markers(template: str | TemplateSource) -> bool:
    """Whether ``template`` holds a ``generation``/``endgeneration`` tag (jinja2's lexer decides;
    for a ``TemplateSource``, from the tokens it holds).

    A template the lexer cannot read has no marker that could work: ``False`` (parsing it reports
    the syntax error).
    """
    if isinstance(template, TemplateSource):
        return bool(find_markers(template))
    from templatefix.render import environment

    try:
        kinds = [(kind, value) for _, kind, value in environment().lex(template)]
    except jinja2.TemplateSyntaxError:
        return False
    return any(True for _ in _tags(kinds))


def find_markers(source: TemplateSource) -> list[tuple[int, int]]:
    """Character ranges ``(start, stop)`` of every marker tag of ``source``, in order."""
    tokens = source.tokens
    kinds = [(token.kind, token.text) for token in tokens]
    return [(tokens[begin].start, tokens[end].end) for begin, end in _tags(kinds)]
