"""Slices of an output piece's value, written in the template's own terms.

A span edge inside a piece is written as a slice of it: a string literal is cut from its own
source bytes (escapes kept), any other expression is sliced as ``(expr ~ '')[lo:hi]`` or
``expr[lo:hi]``. ``templatefix.patch.writer`` writes these slices; ``templatefix.patch.label``
reads the same text when it tells a piece apart by how it starts.
"""

from __future__ import annotations

import json

from jinja2 import nodes

from templatefix.source import TemplateSource

_SLICEABLE = (nodes.Name, nodes.Getattr, nodes.Getitem, nodes.Call)

_PRIMARY = (
    nodes.Name,
    nodes.Const,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Call,
    nodes.Filter,
    nodes.List,
    nodes.Dict,
)


def _node_text(source: TemplateSource, node: nodes.Node) -> str:
    start, end = source.spans[node]
    text = source.text[start:end]
    if isinstance(node, _PRIMARY) or (text.startswith("(") and text.endswith(")")):
        return text
    return f"({text})"


def _literal_slice(
    source: TemplateSource, node: nodes.Node, lo: int, hi: int | None, as_text: bool = True
) -> str:
    """A string literal for ``value[lo:hi]``, cut from the original literal's bytes when possible.

    A part that is not a literal but always renders the same text is sliced. Where it is written
    as text (alone, or an operand of ``~``) the slice is of that text, ``(x ~ '')[lo:hi]``, so
    that a value that is not a string renders (or fails) as before: ``{{ x }}`` renders ``''`` for
    an undefined ``x``, where ``x[:3]`` would raise. An operand of ``+`` is sliced as it is,
    ``x[lo:hi]``: ``+`` needs it to be a string already (``chain_guards``).
    """
    if not (isinstance(node, nodes.Const) and isinstance(node.value, str)):
        text = _node_text(source, node)
        if as_text:
            text = f"({text} ~ '')"
        elif not isinstance(node, _SLICEABLE) and not text.startswith("("):
            text = f"({text})"  # `x | trim[:3]` would slice the filter's name
        return f"{text}[{lo or ''}:{'' if hi is None else hi}]"  # hi < 0: from the end
    value: str = node.value
    piece = value[lo:hi]
    start, end = source.spans[node]
    raw = source.text[start:end]
    quote = raw[:1]
    if len(raw) >= 2 and raw[-1] == quote and quote in "'\"":
        body = raw[1:-1]
        raw_lo = _raw_index(body, value, lo)
        raw_hi = len(body) if hi is None else _raw_index(body, value, hi)
        if raw_lo is not None and raw_hi is not None:
            return f"{quote}{body[raw_lo:raw_hi]}{quote}"
    return json.dumps(piece, ensure_ascii=False)


def sliced_expression(source: TemplateSource, node: nodes.Node, lo: int, hi: int | None) -> str:
    """``node``'s value cut to ``[lo:hi]``, written as the writer writes a slice of it."""
    return _literal_slice(source, node, lo, hi)


def _decode(body: str) -> str | None:
    try:
        return body.encode("ascii", "backslashreplace").decode("unicode-escape")
    except UnicodeDecodeError:
        return None


def _raw_index(body: str, value: str, offset: int) -> int | None:
    """Index into a literal's source body whose decoded prefix is ``value[:offset]``."""
    for index in range(len(body) + 1):
        decoded = _decode(body[:index])
        if decoded is not None and decoded == value[:offset]:
            return index
    return None
