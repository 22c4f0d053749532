"""Stage 4: write the markers into the template source.

Each atom's labelled units become edits at source offsets: markers around whole ``{{ }}`` tags or
runs of literal text; a chain split into one tag per run of equally-labelled operands; literal
text cut where a span edge falls inside it; and a role branch (``{% if cond %}{% generation %}…
{% endgeneration %}{% else %}…{% endif %}``) where a unit is inside only under a condition.
Whitespace control (``-``, ``+``, ``trim_blocks``, ``lstrip_blocks``) is carried over so that the
patched template renders byte-identically. A split ``+`` chain keeps what it raises (``'' + x``,
``x + ''`` guards, ``chain_guards``), so the patched template raises where the original raises.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import cast

from jinja2 import nodes

from templatefix.analysis.instrument import Instrumented
from templatefix.analysis.records import Atom
from templatefix.errors import PatchFailure
from templatefix.patch.label import (
    Unit,
    constant_text,
    fill_boundary_atoms,
    fill_none,
    fill_silent_atoms,
    part_node,
)
from templatefix.patch.slices import _literal_slice, _node_text
from templatefix.source import Edit, TemplateSource, Token


@dataclass
class Marker:
    """A ``generation``/``endgeneration`` tag to insert at a source offset."""

    offset: int
    opening: bool
    order: int


def write(source: TemplateSource, instrumented: Instrumented, units: list[Unit]) -> str:
    """The template text with markers placed as ``units`` say (outputs never seen filled in first).

    Args:
        source: the unmarked template.
        instrumented: its instrumented form (the atoms the units refer to).
        units: every labelled unit (``templatefix.patch.label.resolve_units``).

    Returns:
        The patched template text.
    """
    by_atom: dict[int, list[Unit]] = {}
    for unit in units:
        by_atom.setdefault(unit.atom, []).append(unit)
    fill_silent_atoms(instrumented, by_atom)
    fill_boundary_atoms(instrumented, by_atom)
    edits: list[Edit] = []
    markers: list[Marker] = []
    for atom_id, atom_units in sorted(by_atom.items()):
        atom = instrumented.atoms[atom_id]
        labels = {u.label for u in atom_units} - {"none"}
        if not labels or labels == {"out"}:
            continue
        if atom.is_literal:
            _write_literal(source, instrumented, atom, atom_units, markers, edits)
        else:
            _write_expression(source, instrumented, atom, atom_units, markers, edits)
    markers = _cancel_adjacent(source, markers)
    for marker in markers:
        edits.append(Edit(marker.offset, marker.offset, _marker_text(source, marker), marker.order))
    return source.apply(edits)


def _write_literal(
    source: TemplateSource,
    instrumented: Instrumented,
    atom: Atom,
    units: list[Unit],
    markers: list[Marker],
    edits: list[Edit],
) -> None:
    literal = cast(nodes.TemplateData, atom.node)  # ``atom.is_literal``
    token = source.token_at(source.spans[literal][0])
    fill_none(units)
    for (label, condition), run in itertools.groupby(units, key=lambda u: (u.label, u.condition)):
        run_units = list(run)
        start = _data_offset(token, run_units[0].lo)
        end = _data_offset(token, run_units[-1].hi)
        if label == "in":
            markers.append(Marker(start, True, 1))
            markers.append(Marker(_skip_gaps(source, end), False, 0))
        elif label == "cond":
            # Literal text that is assistant output only sometimes: branch on the condition, with
            # the text as a string expression in both branches.
            text = json.dumps(literal.data[run_units[0].lo : run_units[-1].hi], ensure_ascii=False)
            left = "+" if _needs_lstrip_guard(source, start) else ""
            right = "+" if _needs_trim_guard(source, end) else ""
            # Whitespace the lexer strips after the text (lstrip_blocks) would render once a tag
            # separates it from its stripping tag; it never rendered, so it goes.
            edits.append(
                Edit(start, _skip_gaps(source, end), _branch(condition, f"{{{{ {text} }}}}", left, right))
            )


def _branch(condition: str, tag: str, left: str = "", right: str = "") -> str:
    """``tag`` inside generation markers when ``condition`` holds, plain otherwise."""
    return (
        f"{{%{left} if {condition} %}}{{% generation %}}{tag}{{% endgeneration %}}"
        f"{{% else %}}{tag}{{% endif {right}%}}"
    )


def _skip_gaps(source: TemplateSource, offset: int) -> int:
    """Move past whitespace the lexer drops before a tag, so a new tag lands next to that tag.

    (The final newline jinja drops at the end of a template is followed by no tag: stay before it.)
    """
    position = offset
    while position < len(source.text):
        token = source.token_at(position)
        if token.kind != "gap" or token.start != position:
            break
        position = token.end
    if position >= len(source.text):
        return offset
    return position


def _data_offset(token: Token, value_offset: int | None) -> int:
    """Source offset of a character offset in a literal-text token's (normalised) value."""
    if value_offset is None:
        return token.end
    count = 0
    index = 0
    text = token.text
    while count < value_offset and index < len(text):
        index += 2 if text.startswith("\r\n", index) else 1
        count += 1
    return token.start + index


def _write_expression(
    source: TemplateSource,
    instrumented: Instrumented,
    atom: Atom,
    units: list[Unit],
    markers: list[Marker],
    edits: list[Edit],
) -> None:
    begin, end = _tag_tokens(source, atom.node)
    fill_none(units)
    open_start = source.tokens[begin].start
    close_end = source.tokens[end].start + len(source.tokens[end].text.rstrip())
    if all(u.label == "in" for u in units):
        markers.append(Marker(open_start, True, 1))
        markers.append(Marker(source.tokens[end].end, False, 0))
        return
    # The tag is split into one tag per run of equally-labelled parts; whitespace control of the
    # original tag goes on whatever tag ends up outermost, so the render is unchanged.
    left_mod = source.tokens[begin].text[2:3] if source.tokens[begin].text[2:3] in "-+" else ""
    right_mod = "-" if source.tokens[end].text.startswith("-") else ""
    block_left = "-" if left_mod == "-" else ("+" if _needs_lstrip_guard(source, open_start) else "")
    block_right = "-" if right_mod == "-" else ("+" if _needs_trim_guard(source, close_end) else "")
    runs = [(key, list(run)) for key, run in itertools.groupby(units, key=lambda u: (u.label, u.condition))]
    guards = chain_guards(source, atom, [run for _, run in runs])
    pieces = []
    for index, ((label, condition), run) in enumerate(runs):
        first, last = index == 0, index == len(runs) - 1
        expression = _run_expression(source, atom, run, *guards[index])
        plain = f"{{{{{left_mod if first else ''} {expression} {right_mod if last else ''}}}}}"
        if label == "out":
            pieces.append(plain)
        elif label == "in" and (first or last):
            # Outer markers go in as separate tags, so they can merge with a neighbour's.
            if first:
                markers.append(Marker(open_start, True, 1))
            else:
                pieces.append("{% generation %}")
            pieces.append(plain)
            if last:
                markers.append(Marker(source.tokens[end].end, False, 0))
            else:
                pieces.append("{% endgeneration %}")
        elif label == "in":
            pieces.append(f"{{% generation %}}{{{{ {expression} }}}}{{% endgeneration %}}")
        else:
            tag = f"{{{{ {expression} }}}}"
            pieces.append(_branch(condition, tag, block_left if first else "", block_right if last else ""))
    edits.append(Edit(open_start, close_end, "".join(pieces)))


def _run_expression(
    source: TemplateSource, atom: Atom, run: list[Unit], lead: bool = False, trail: bool = False
) -> str:
    """The expression a run of units writes; ``lead``/``trail`` add ``'' + `` / `` + ''`` guards
    (``chain_guards``).

    The run's operands are joined back along the chain's own tree, with parentheses where jinja's
    precedence (``~`` binds tighter than ``+``) would otherwise regroup them: the operands of
    ``(a + b) ~ c`` are written ``(a + b) ~ c``, never ``a + b ~ c``.
    """
    merged: list[Unit] = []
    for unit in run:  # neighbouring slices of one literal read better as one literal
        if merged and merged[-1].part == unit.part and merged[-1].hi == unit.lo:
            merged[-1] = Unit(unit.atom, unit.part, merged[-1].lo, unit.hi)
        else:
            merged.append(unit)
    run = merged
    if len(run) == 1 and run[0].part < 0 and run[0].lo == 0 and run[0].hi is None:
        start, end = source.spans[part_node(atom, -1)]
        return source.text[start:end]  # the whole expression in a tag of its own
    parents = _leaf_parents(part_node(atom, -1))
    leaves: dict[int, list[str]] = {}
    for unit in run:
        node = part_node(atom, unit.part)
        if unit.lo == 0 and unit.hi is None:
            text = _node_text(source, node)
        else:
            written_alone = unit.part < 0 or parents[unit.part] is not nodes.Add
            macros = _macros(source)
            as_text = written_alone and not _anchored(node, macros)
            text = _literal_slice(source, node, unit.lo, unit.hi, as_text=as_text)
            if not (written_alone or _anchored(node, macros) or _always_text(source, atom, node, macros)):
                # an operand of `'<A>' + x` (``chain_guards``): `'' + x` raises where `+` raises
                bounds = f"{unit.lo or ''}:{'' if unit.hi is None else unit.hi}"
                text = f"('' + {_node_text(source, node)})[{bounds}]"
        leaves.setdefault(max(unit.part, 0), []).append(text)
    joined = {
        part: (texts[0], "leaf") if len(texts) == 1 else (" + ".join(texts), "+")
        for part, texts in leaves.items()
    }
    if lead:
        first = min(joined)
        joined[first] = (f"'' + {joined[first][0]}", "+")
    text, kind = _rejoin(part_node(atom, -1), joined) if len(parents) > 1 else joined[0]
    if trail:
        text = f"({text}) + ''" if kind == "~" else f"{text} + ''"
    return text


def _leaves(whole: nodes.Node) -> list[nodes.Node]:
    """The operands of the chain ``whole``, in ``flatten_chain``'s order, as nodes of ``whole``."""
    if isinstance(whole, nodes.Add):
        return [*_leaves(whole.left), *_leaves(whole.right)]
    if isinstance(whole, nodes.Concat):
        return [leaf for child in whole.nodes for leaf in _leaves(child)]
    return [whole]


def _adds(whole: nodes.Node) -> list[tuple[nodes.Add, int, int, int]]:
    """Each ``+`` of the chain with operand indices: its first, the first of its right side, and
    one past its last."""
    found: list[tuple[nodes.Add, int, int, int]] = []

    def walk(node: nodes.Node, first: int) -> int:
        if isinstance(node, nodes.Add):
            middle = walk(node.left, first)
            end = walk(node.right, middle)
            found.append((node, first, middle, end))
            return end
        if isinstance(node, nodes.Concat):
            for child in node.nodes:
                first = walk(child, first)
            return first
        return first + 1

    walk(whole, 0)
    return found


def _leaf_parents(whole: nodes.Node) -> list[type | None]:
    """For each operand of the chain (``flatten_chain``'s order), the type of the node whose operand
    it is: ``nodes.Add``, ``nodes.Concat``, or ``None`` when the expression is not a chain."""
    parents: list[type | None] = []

    def walk(node: nodes.Node, parent: type | None) -> None:
        if isinstance(node, nodes.Add):
            walk(node.left, nodes.Add)
            walk(node.right, nodes.Add)
        elif isinstance(node, nodes.Concat):
            for child in node.nodes:
                walk(child, nodes.Concat)
        else:
            parents.append(parent)

    walk(whole, None)
    return parents


def _rejoin(whole: nodes.Node, leaves: dict[int, tuple[str, str]]) -> tuple[str, str]:
    """The chain ``whole`` restricted to the operands in ``leaves`` (index -> (text, kind)), as text
    and the kind of its top node (``"+"``, ``"~"`` or ``"leaf"``)."""
    counter = [0]

    def walk(node: nodes.Node, in_add: bool) -> tuple[str, str] | None:
        if isinstance(node, nodes.Add):
            left, right = walk(node.left, True), walk(node.right, True)
            if left is None or right is None:
                return left or right
            right_text = f"({right[0]})" if right[1] == "+" else right[0]
            return f"{left[0]} + {right_text}", "+"
        if isinstance(node, nodes.Concat):
            items = [item for item in (walk(child, False) for child in node.nodes) if item is not None]
            if not items:
                return None
            if len(items) == 1 and not in_add:
                return items[0]  # written alone, it is converted with str() as `~` would
            # an operand of `+` stays a `~` (so a str), even when only one of its operands is left
            texts = [f"({text})" if kind == "+" else text for text, kind in items]
            return " ~ ".join(texts if len(texts) > 1 else [*texts, "''"]), "~"
        index = counter[0]
        counter[0] += 1
        return leaves.get(index)

    result = walk(whole, False)
    assert result is not None
    return result


def _tag_tokens(source: TemplateSource, node: nodes.Node) -> tuple[int, int]:
    """Indices of the ``{{`` and ``}}`` tokens around an output expression."""
    start, end = source.spans[node]
    begin = source.token_index_at(start)
    while begin > 0 and source.tokens[begin].kind != "variable_begin":
        begin -= 1
    close = source.token_index_at(max(end - 1, start))
    while close < len(source.tokens) - 1 and source.tokens[close].kind != "variable_end":
        close += 1
    return begin, close


def _needs_lstrip_guard(source: TemplateSource, offset: int) -> bool:
    """A block tag at ``offset`` would strip the spaces before it on its line (lstrip_blocks)."""
    line_start = source.text.rfind("\n", 0, offset) + 1
    prefix = source.text[line_start:offset]
    return bool(prefix) and not prefix.strip(" \t")


def _needs_trim_guard(source: TemplateSource, offset: int) -> bool:
    """A block tag ending at ``offset`` would eat a newline that renders today (trim_blocks).

    A newline the lexer already drops (a gap before a ``{%-``) needs no guard.
    """
    if not source.text.startswith(("\n", "\r"), offset):
        return False
    token = source.token_at(offset)
    return not (token.kind == "gap" and token.start == offset)


def _marker_text(source: TemplateSource, marker: Marker) -> str:
    """The tag text, with whitespace control that keeps the render unchanged."""
    keyword = "generation" if marker.opening else "endgeneration"
    token = source.token_at(marker.offset) if marker.offset < len(source.text) else None
    tag = token if token is not None and token.start == marker.offset else None  # a token starts here
    modifier = tag.text[2:3] if tag is not None and tag.text[2:3] in "-+" else ""
    if tag is not None and tag.kind in ("block_begin", "comment_begin"):
        # Right before a tag that strips (or keeps) the whitespace before it: do as it does, so
        # the whitespace is treated the same whichever of the two tags comes first.
        left = modifier
    elif tag is not None and tag.kind == "variable_begin" and modifier == "-":
        left = "-"
    else:
        left = "+" if _needs_lstrip_guard(source, marker.offset) else ""
    right = "+" if _needs_trim_guard(source, marker.offset) else ""
    return f"{{%{left} {keyword} {right}%}}"


def _cancel_adjacent(source: TemplateSource, markers: list[Marker]) -> list[Marker]:
    """Drop an ``endgeneration`` immediately followed by a ``generation`` (only stripped space between)."""
    ordered = sorted(markers, key=lambda m: (m.offset, m.order))
    result: list[Marker] = []
    for marker in ordered:
        if marker.opening and result and not result[-1].opening:
            between = source.text[result[-1].offset : marker.offset]
            if not between or _is_gap(source, result[-1].offset, marker.offset):
                result.pop()
                continue
        result.append(marker)
    return result


def _is_gap(source: TemplateSource, start: int, end: int) -> bool:
    position = start
    while position < end:
        token = source.token_at(position)
        if token.kind != "gap" or token.start != position:
            return False
        position = token.end
    return position == end


# -- keeping what a split chain raises ------------------------------------------------------------
#
# SPEC rule 1 covers errors. Splitting ``{{ a + b }}`` into ``{{ a }}{{ b }}`` changes the render
# whenever ``+`` is not string concatenation: ``'x' + [..]`` raises TypeError and ``'x' + undefined``
# raises UndefinedError, but ``{{ [..] }}`` and ``{{ undefined }}`` render. (``~`` needs nothing:
# it converts each operand with ``str``, which never raises, so ``{{ a ~ b }}`` and
# ``{{ a }}{{ b }}`` agree on every value.)
#
# The values a template sees are JSON data, ``Undefined``, and what the template makes of them. A
# split keeps the original's behaviour exactly, with every operand evaluated once and in the
# original order, when each ``+`` it removes, ``L + x``, is replaced by one that behaves the same:
#
# * *string-valued* expressions are a str whenever they evaluate at all: a string literal, a
#   ``~``, a ``+`` with a string-valued side, a conditional of two of them, a filter or string
#   method that only returns strings, a call of one of the template's macros;
# * both ``L`` and ``x`` string-valued: ``L + x`` is concatenation, nothing to add;
# * ``L`` string-valued: ``s + x`` with ``s`` a plain str depends only on ``x``'s type (a str
#   concatenates, ``Undefined`` raises UndefinedError, anything else TypeError), so the piece that
#   starts with ``x`` starts with ``'' + x``. When that piece goes on with ``x + 'lit'`` it already
#   behaves so, and needs nothing;
# * ``x`` a string literal: ``L + 'lit'`` depends only on ``L``'s type, so the piece that ends with
#   ``L`` ends with ``L + ''`` (a literal cannot raise, so moving the check before it keeps the order).
#
# After such a guard every partial sum is a str, so every later ``+`` keeps its meaning. An operand
# cut in two is sliced as it is when it is string-valued (``x[:3]`` + ``x[3:]``), as text where it
# is written as text (``(x ~ '')[:3]``), and otherwise not at all. The pieces are joined back along
# the chain's own tree (``~`` binds tighter than ``+``). Anything else (``a + b`` with neither side
# string-valued, a ``+`` whose right side is a chain of its own that is not string-valued, an
# operand that may be an HTML-escaping ``Markup``, whose ``+`` escapes the other side) is not split:
# ``PatchFailure`` says why, rather than writing a template that renders where the original raises.

#: Filters whose result is always a plain str when they return at all (transformers' ``tojson``
#: returns ``json.dumps``'s str).
_STRING_FILTERS = frozenset(
    {"string", "trim", "tojson", "join", "upper", "lower", "capitalize", "title", "replace", "center",
     "striptags", "truncate", "wordwrap", "format", "urlencode"}
)
#: String methods: on anything but a str they are undefined, and calling that raises.
_STRING_METHODS = frozenset({"strip", "lstrip", "rstrip", "upper", "lower", "title", "capitalize", "replace"})
#: Filters that make HTML-escaping ``Markup`` strings.
_MARKUP_FILTERS = frozenset({"safe", "e", "escape", "forceescape", "urlize", "xmlattr"})


def chain_guards(source: TemplateSource, atom: Atom, runs: list[list[Unit]]) -> list[tuple[bool, bool]]:
    """For each run of a split chain: (start it with ``'' + ``, end it with `` + ''``).

    Raises:
        PatchFailure: the chain cannot be split without changing what it renders or raises.
    """
    guards = [[False, False] for _ in runs]
    whole = part_node(atom, -1)
    macros = _macros(source)
    leaves = _leaves(whole)  # compared by identity with the chain's own nodes
    concats = [whole] if isinstance(whole, nodes.Concat) else list(whole.find_all(nodes.Concat))

    def text_valued(node: nodes.Node) -> bool:
        """A str whenever it evaluates: string-valued, a variable the template sets to a str just
        before the output, or a ``+`` with such a side."""
        if isinstance(node, nodes.Name):
            return _set_to_text_before(source, atom, node.name, macros)
        if isinstance(node, nodes.Add):
            return text_valued(node.left) or text_valued(node.right)
        return _anchored(node, macros)

    parents = _leaf_parents(whole)
    if len(runs) > 1 and "+" in atom.operators and _may_be_markup(source, whole):
        _refuse(source, whole, "an operand may be an HTML-escaping Markup string, whose '+' escapes")
    for index in range(1, len(runs)):
        before, after = runs[index - 1][-1], runs[index][0]
        if before.part == after.part:  # a cut inside one operand
            if after.part >= 0:
                # inside the right side of a `+`, before more of that side: the `+` now runs
                # before the rest is evaluated, so unless its left side is a str it could raise
                # first, with another exception type (as a cut between `~` operands, below)
                for add, _, right_lo, right_hi in _adds(whole):
                    if right_lo <= after.part < right_hi - 1 and not text_valued(add.left):
                        why = "it cuts the right side of a '+' whose left side is not a string"
                        _refuse(source, whole, why)
            if after.part < 0 or constant_text(atom, after.part) is not None:
                continue  # a literal: its slices are string literals
            operand = part_node(atom, after.part)
            if parents[after.part] is not nodes.Add or _anchored(operand, macros):
                continue  # written as text, or a str whenever it evaluates: sliced like a literal
            if isinstance(operand, nodes.Name) and _set_to_text_before(source, atom, operand.name, macros):
                continue  # a variable the template always sets to a str just before
            sibling, on_right = _add_sibling(whole, operand)
            if sibling is not None and (
                (on_right and text_valued(sibling))
                or (not on_right and isinstance(sibling, nodes.Const) and _anchored(sibling))
            ):
                # `'<A>' + x` (or `x + '</A>'`): its slices are written `('' + x)[lo:hi]`, which
                # raises as the `+` does. The side beside it is evaluated first, or cannot raise:
                # in `x + (y + '!')` the original raises y's error before the `+` raises x's.
                continue
            _refuse(source, whole, "it cuts an operand of '+' that is not a string literal")
        node, first = _add_at(whole, before.part)
        if node is None:
            # operands of `~`: str() each, which never raises. But a `+` whose right side holds
            # this `~` now runs before the rest of its right side is evaluated: unless its left
            # side is a str, the `+` could raise first, with another exception type.
            for add, _, right_lo, right_hi in _adds(whole):
                inside = right_lo <= before.part and after.part < right_hi
                if inside and not text_valued(add.left):
                    _refuse(source, whole, "it cuts the right side of a '+' whose left side is not a string")
            continue
        left, right = text_valued(node.left), text_valued(node.right)
        if not (left and right) and any(node in concat.find_all(nodes.Add) for concat in concats):
            # a guard goes at the end of a piece, outside the `~` that holds this `+`
            _refuse(source, whole, "it cuts a '+' written inside a '~'")
        if left and right:
            continue  # str + str whenever both evaluate
        if left and leaves[after.part] is node.right:
            # `x + 'lit'` written in the same run already raises as `L + x` would
            parent = _parent_add(whole, node)
            guards[index][0] = not (
                parent is not None
                and constant_text(atom, after.part + 1) is not None
                and after.part + 1 < len(leaves)
                and leaves[after.part + 1] is parent.right
                and after.part + 1 in {unit.part for unit in runs[index]}
            )
        elif (
            isinstance(node.right, nodes.Const)
            and right
            and sorted({unit.part for unit in runs[index - 1]}) == list(range(first, before.part + 1))
        ):
            guards[index - 1][1] = True
        elif left:
            _refuse(source, whole, "the right side of its '+' is not one operand")
        else:
            _refuse(source, whole, "neither side of its '+' is known to be a string")
    return [(start, end) for start, end in guards]


def _add_sibling(whole: nodes.Node, operand: nodes.Node) -> tuple[nodes.Node | None, bool]:
    """The other side of the ``+`` whose side ``operand`` is (compared by identity), and whether
    ``operand`` is its right side; ``(None, False)`` when it is no side of a ``+``."""
    for add, _, _, _ in _adds(whole):
        if add.left is operand:
            return add.right, False
        if add.right is operand:
            return add.left, True
    return None, False


def _refuse(source: TemplateSource, node: nodes.Node, why: str) -> None:
    start, end = source.spans[node]
    expression = " ".join(source.text[start:end].split())
    if len(expression) > 80:
        expression = expression[:77] + "..."
    raise PatchFailure(
        f"line {source.line_of(start)}: a span edge falls inside {{{{ {expression} }}}}, and splitting it "
        f"there could change what the template raises ({why})"
    )


def _run_parts(run: list[Unit]) -> list[int]:
    return sorted({unit.part for unit in run})


def _add_at(whole: nodes.Node, boundary: int) -> tuple[nodes.Add | None, int]:
    """The ``+`` between operands ``boundary`` and ``boundary + 1`` of the chain (``None`` when they
    are operands of ``~``), and the index of its first operand."""
    return next(((add, first) for add, first, middle, _ in _adds(whole) if middle == boundary + 1), (None, 0))


def _parent_add(whole: nodes.Node, node: nodes.Node) -> nodes.Add | None:
    """The ``+`` whose left side is ``node`` in the chain ``whole``."""
    for candidate in (whole, *whole.find_all(nodes.Add)):
        if isinstance(candidate, nodes.Add) and candidate.left is node:
            return candidate
    return None


def _anchored(node: nodes.Node, macros: frozenset[str] = frozenset()) -> bool:
    """``node`` is a str whenever it evaluates without raising (``macros``: the template's macro
    names; a macro returns the text it wrote)."""
    if isinstance(node, nodes.Const):
        return isinstance(node.value, str)
    if isinstance(node, nodes.Concat):
        return True
    if isinstance(node, nodes.Add):
        return _anchored(node.left, macros) or _anchored(node.right, macros)
    if isinstance(node, nodes.CondExpr):
        return node.expr2 is not None and _anchored(node.expr1, macros) and _anchored(node.expr2, macros)
    if isinstance(node, nodes.Filter):
        return node.name in _STRING_FILTERS
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
        return node.node.attr in _STRING_METHODS
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name):
        return node.node.name in macros
    return False


def _always_text(source: TemplateSource, atom: Atom, node: nodes.Node, macros: frozenset[str]) -> bool:
    """A variable the template sets to a str just before the atom's output."""
    return isinstance(node, nodes.Name) and _set_to_text_before(source, atom, node.name, macros)


def _set_to_text_before(source: TemplateSource, atom: Atom, name: str, macros: frozenset[str]) -> bool:
    """``name`` holds a str at the atom's output: in the statements before that output (in the same
    body), ``{% set name = … %}`` with a string-valued expression, or an if/else whose every branch
    ends up doing so."""

    def sets(statements: list[nodes.Node]) -> bool:
        found = False
        for statement in statements:
            if isinstance(statement, nodes.Assign) and isinstance(statement.target, nodes.Name):
                if statement.target.name == name:
                    found = _anchored(statement.node, macros)
            elif isinstance(statement, nodes.If):
                branches = [statement.body, *(e.body for e in statement.elif_), statement.else_]
                if all(sets(branch) for branch in branches):
                    found = True
                elif any(_assigns(branch, name) for branch in branches):
                    found = False
            elif _assigns([statement], name):
                found = False
        return found

    where = source.spans.get(atom.output)

    def is_output(statement: nodes.Node) -> bool:
        return isinstance(statement, nodes.Output) and source.spans.get(statement) == where

    for holder in (source.ast, *source.ast.find_all(nodes.Node)):
        for field in ("body", "else_"):
            statements = getattr(holder, field, None)
            if isinstance(statements, list) and any(is_output(s) for s in statements):
                index = next(i for i, s in enumerate(statements) if is_output(s))
                return sets(statements[:index])
    return False


def _assigns(statements: list[nodes.Node], name: str) -> bool:
    """Some statement in ``statements`` (or nested in them) assigns ``name``."""
    for statement in statements:
        for node in (statement, *statement.find_all(nodes.Node)):
            if isinstance(node, (nodes.Assign, nodes.AssignBlock, nodes.For)):
                target = node.target
                names = {n.name for n in (target, *target.find_all(nodes.Name)) if isinstance(n, nodes.Name)}
                if name in names:
                    return True
    return False


def _macros(source: TemplateSource) -> frozenset[str]:
    return frozenset(macro.name for macro in source.ast.find_all(nodes.Macro))


def _may_be_markup(source: TemplateSource, node: nodes.Node) -> bool:
    """``node`` uses a Markup filter, or a variable some ``{% set %}``/loop fills from one."""
    tainted = _markup_names(source)
    for child in (node, *node.find_all(nodes.Node)):
        if isinstance(child, nodes.Filter) and child.name in _MARKUP_FILTERS:
            return True
        if isinstance(child, nodes.Name) and child.name in tainted:
            return True
    return False


def _markup_names(source: TemplateSource) -> frozenset[str]:
    """Names assigned (``{% set %}``, ``{% for %}``, macro parameters) from anything that may be Markup."""
    tree = source.ast
    names: set[str] = set()

    def taints(value: nodes.Node) -> bool:
        return any(
            (isinstance(child, nodes.Filter) and child.name in _MARKUP_FILTERS)
            or (isinstance(child, nodes.Name) and child.name in names)
            for child in (value, *value.find_all(nodes.Node))
        )

    def targets(target: nodes.Node) -> set[str]:
        return {n.name for n in (target, *target.find_all(nodes.Name)) if isinstance(n, nodes.Name)}

    changed = True
    while changed:
        before = len(names)
        for assign in tree.find_all(nodes.Assign):
            if taints(assign.node):
                names |= targets(assign.target)
        for loop in tree.find_all(nodes.For):
            if taints(loop.iter):
                names |= targets(loop.target)
        for call in tree.find_all(nodes.Call):
            if any(taints(arg) for arg in (*call.args, *(k.value for k in call.kwargs))):
                for macro in tree.find_all(nodes.Macro):
                    names |= {arg.name for arg in macro.args}
        changed = len(names) != before
    return frozenset(names)
