"""Stage 2: one label per output piece: always inside, always outside, or inside under a condition.

Each atom (or operand of a chain) is cut into *units* at every span edge seen inside it: a literal
is cut at fixed character offsets; a non-literal part only where the edge sits at a fixed
distance from its start or end with fixed text around it (the header a ``{% set %}`` string
starts with). Each unit is then labelled from its observations: ``in``, ``out``, ``cond`` (a
condition on the loop variables and flags separates them, ``templatefix.patch.conditions``) or
``none`` (never seen writing text). Outputs never seen writing text are filled in from their
neighbours where the template's structure decides (``fill_silent_atoms``,
``fill_boundary_atoms``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from jinja2 import nodes

from templatefix.analysis.instrument import Instrumented
from templatefix.analysis.records import Atom
from templatefix.errors import PatchFailure
from templatefix.patch.conditions import Observation, find_condition, prefix_features
from templatefix.patch.observe import Cut, PartKey, PartRecord, Segment
from templatefix.patch.slices import sliced_expression

_LOG = logging.getLogger("templatefix.patcher")

Label = Literal["in", "out", "cond", "none"]

_ANY_LENGTH = 1 << 60  # a segment that covers the whole part, however long


@dataclass
class Unit:
    """A piece of one atom: a whole part, or a slice ``[lo, hi)`` of a part.

    Attributes:
        atom: the atom's id.
        part: the operand index, ``-1`` for the whole atom.
        lo: slice start (negative: from the end).
        hi: slice end (negative: from the end; ``None``: the end).
        observations: inside/outside, with the scope, for every emission of the slice.
        label: ``in`` | ``out`` | ``cond`` | ``none``.
        condition: the Jinja test that holds exactly when the unit is inside (``cond`` only).
    """

    atom: int
    part: int
    lo: int = 0
    hi: int | None = None
    observations: list[Observation] = field(default_factory=list)
    label: Label = "none"
    condition: str = ""


def part_node(atom: Atom, part: int) -> nodes.Node:
    """The expression node of ``part`` (``-1``: the whole atom, or the value it stands for)."""
    if part < 0:
        return atom.inlined if atom.inlined is not None else atom.node
    return atom.parts[part]


def constant_text(atom: Atom, part: int) -> str | None:
    """The text a part always renders when it is literal text or a string constant."""
    node = part_node(atom, part)
    if isinstance(node, nodes.TemplateData):
        return node.data
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return node.value
    return None


def absolute(anchor: int | None, length: int) -> int:
    """A slice bound (negative: from the end; None: the end) as an offset into a text."""
    if anchor is None:
        return length
    return anchor if anchor >= 0 else max(0, length + anchor)


def where(instrumented: Instrumented, atom: Atom, what: str) -> str:
    """``what`` followed by the atom's source text and line, for a failure message."""
    start, end = instrumented.source.spans[atom.node]
    text = instrumented.source.text[start:end]
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{what} {text!r} at line {instrumented.source.line_of(start)}"


def resolve_units(instrumented: Instrumented, records: dict[PartKey, PartRecord]) -> list[Unit]:
    """Turn observations into labelled units, splitting constants at boundaries.

    Raises:
        PatchFailure: a span edge falls where no slice can express it, or no condition separates
            a unit's inside observations from its outside ones.
    """
    units: list[Unit] = []
    by_atom: dict[int, dict[int, PartRecord]] = {}
    for (atom_id, part), record in records.items():
        # a copy of the segment list: spreading whole emissions over the parts must leave the
        # records as they are, so that they can be labelled again with more observations
        copy = PartRecord(list(record.segments), record.texts, record.cut_texts)
        by_atom.setdefault(atom_id, {})[part] = copy
    for atom_id, parts in sorted(by_atom.items()):
        atom = instrumented.atoms[atom_id]
        if -1 in parts and len(parts) > 1:
            # Some emissions were only seen whole: spread their uniform labels over the parts.
            whole = parts.pop(-1)
            for segment in whole.segments:
                if len(segment.cuts) > 1:
                    raise PatchFailure(where(instrumented, atom, "an assistant span edge falls inside"))
                ranges = segment.emission.part_ranges
                for index in range(len(atom.parts)):
                    # The whole emission had one label, so every character of every part has it;
                    # the part's own text, where the emission's parts are known (prefix tests).
                    text = None
                    if segment.text is not None and ranges is not None and index < len(ranges):
                        text = segment.text[ranges[index][0]:ranges[index][1]]
                    uniform = Segment(
                        [Cut(0, segment.cuts[0].inside)], _ANY_LENGTH, segment.emission, segment.flags,
                        segment.ending, text,
                    )
                    parts.setdefault(index, PartRecord()).segments.append(uniform)
        if any(index >= 0 for index in parts):
            for index in range(len(atom.parts)):
                parts.setdefault(index, PartRecord())
        for part, record in sorted(parts.items()):
            units.extend(_part_units(instrumented, atom, part, record))
    return units


def _part_units(instrumented: Instrumented, atom: Atom, part: int, record: PartRecord) -> list[Unit]:
    cut_points = sorted({cut.offset for segment in record.segments for cut in segment.cuts if cut.offset > 0})
    if not cut_points or constant_text(atom, part) is not None or len(record.texts) == 1:
        anchors: list[int] = cut_points  # a literal, or text that never changes
    else:
        found = slice_anchors(record)
        if found is None:
            message = where(instrumented, atom, "an assistant span edge falls inside")
            raise PatchFailure(f"{message}, at a place that depends on the text: {_edge_examples(record)}")
        anchors = found
    units = []
    lows: list[int] = [0, *anchors]
    highs: list[int | None] = [*anchors, None]
    for lo, hi in zip(lows, highs, strict=True):
        unit = Unit(atom.id, part, lo, hi)
        for segment in record.segments:
            start, end = absolute(lo, segment.length), absolute(hi, segment.length)
            if start >= min(end, segment.length):
                continue
            inside = [cut.inside for cut in segment.cuts if cut.offset <= start][-1]
            unit.observations.append(
                Observation(inside, segment.emission, segment.flags, segment.ending, segment.text)
            )
        _classify(unit, instrumented, atom, [a for a in anchors if a > 0])
        units.append(unit)
    return units


def slice_anchors(record: PartRecord) -> list[int] | None:
    """Where to slice a non-literal part so every boundary seen inside it is a slice bound.

    Each boundary must sit at a fixed distance from the start of the text, with the same text
    before it, or from the end, with the same text after it, in at least two emissions (so the
    fixed text holds no message's own words, which differ between messages): the header at the
    front of a ``{% set %}`` string, the ``\\n\\n`` a macro appends. Distances from the end become
    negative slice bounds. Returns None when some boundary has no such anchor.
    """
    starts: set[int] = set()
    ends: set[int] = set()
    for cut_text in record.cut_texts:
        text = cut_text.text
        for offset in cut_text.offsets:
            tail = len(text) - offset
            # distinct texts (the same message rendered in several probes counts once)
            cut_here = {c.text for c in record.cut_texts if offset in c.offsets}
            cut_as_tail = {c.text for c in record.cut_texts if (len(c.text) - tail) in c.offsets}
            before = ({t[:offset] for t in cut_here}, [t[:offset] for t in record.texts])
            after = ({t[len(t) - tail :] for t in cut_as_tail}, [t[len(t) - tail :] for t in record.texts])
            if _fixed(*before, len(cut_here), -1):
                starts.add(offset)
            elif tail > 0 and _fixed(*after, len(cut_as_tail), 0):
                ends.add(-tail)
            else:
                return None
    anchors = sorted(starts) + sorted(ends)
    for cut_text in record.cut_texts:  # the anchors must keep their order in every emission
        positions = [absolute(anchor, len(cut_text.text)) for anchor in anchors]
        if positions != sorted(positions) or not cut_text.offsets <= set(positions):
            return None
    return anchors


def _fixed(pieces: set[str], sides: list[str], cut: int, edge: int) -> bool:
    """Whether the text on one side of a cut is fixed text, not a message's own words: the same
    (``pieces``) in at least two distinct texts the edge cuts, or the same side of at least two
    distinct texts of the part (``sides``: each distinct text's side at that offset, cut there
    or not; an edge seen once, after a prefix other emissions start with too, such as
    ``<think></think>`` before a reply that only one probe gave under its flag). Probe texts
    never share their words, so text two of them share is the template's; in the second case
    the piece must also end, at the cut (``edge``: its last character, -1, or first, 0), in
    markup or space, not in a word two texts may start alike. Whitespace a text starts with is
    no word either: a generation prompt that ends with ``\n`` takes the first ``\n`` of a reply
    that starts with one, so the edge sits after it in that reply alone.
    """
    if len(pieces) != 1:
        return False
    (piece,) = pieces
    if cut >= 2 or (edge < 0 and piece.isspace()):
        return True
    return sides.count(piece) >= 2 and not piece[edge].isalnum()


def _edge_examples(record: PartRecord) -> str:
    """Where span edges cut the part's texts, in words (for a refusal that says why)."""
    by_offset: dict[int, str] = {}
    for cut_text in sorted(record.cut_texts, key=lambda c: (sorted(c.offsets), c.text)):
        offset = min(cut_text.offsets)
        by_offset.setdefault(
            offset, f"after {cut_text.text[:offset][-20:]!r} (before {cut_text.text[offset:][:20]!r})"
        )
    shown = " or ".join(list(by_offset.values())[:3])
    cut, total = len({c.text for c in record.cut_texts}), len(record.texts)
    return f"cut {shown} in {cut} of its {total} texts" + (", not in the others" if cut < total else "")


def _classify(unit: Unit, instrumented: Instrumented, atom: Atom, anchors: list[int] | None = None) -> None:
    """Label ``unit`` from its observations.

    Prompt renders (conversations ending with another message than an assistant's) add what they
    write after their last assistant turn, outside (``templatefix.patch.observe``). When no
    condition separates the inside observations from the outside ones with them, the unit is
    labelled from the renders users train on alone (ending with an assistant message), as it was
    before prompt renders were observed: right where training happens, possibly marked in some
    prompt render.

    A unit cut from a piece at fixed offsets (``anchors``) may also be told apart by how the
    piece's own text starts (``conditions.prefix_features``), tried last.

    Raises:
        PatchFailure: no condition separates the inside observations even then.
    """
    labels = {o.inside for o in unit.observations}
    if not labels:
        unit.label = "none"
    elif labels == {True}:
        unit.label = "in"
    elif labels == {False}:
        unit.label = "out"
    else:
        condition = find_condition(unit.observations, instrumented.source, instrumented, atom)
        if condition is None:
            training = [o for o in unit.observations if o.ending.last_role == "assistant"]
            if len(training) < len(unit.observations):
                _LOG.debug("no condition separates prompt renders; labelling from training renders")
                unit.observations = training
                _classify(unit, instrumented, atom, anchors)
                return
        if condition is None and anchors:
            extra = prefix_features(
                unit.observations, lambda n: _sliced(instrumented, atom, unit.part, n), anchors,
                _template_texts(instrumented),
            )
            if extra:
                condition = find_condition(unit.observations, instrumented.source, instrumented, atom, extra)
        if condition is None and _LOG.isEnabledFor(logging.DEBUG):
            for observation in unit.observations:  # what no condition could separate
                _LOG.debug(
                    "inside=%s scope=%r flags=%r", observation.inside, observation.scope, observation.flags
                )
        if condition is None:
            raise PatchFailure(
                where(instrumented, atom, "no condition on the loop variables separates assistant output in")
            )
        unit.label, unit.condition = "cond", condition


def _sliced(instrumented: Instrumented, atom: Atom, part: int, length: int) -> str:
    """The piece's expression cut to its first ``length`` characters, as the writer slices it."""
    return sliced_expression(instrumented.source, part_node(atom, part), 0, length)


def _template_texts(instrumented: Instrumented) -> list[str]:
    """The template's own string literals and literal text."""
    found: list[str] = []
    for node in instrumented.source.ast.find_all((nodes.Const, nodes.TemplateData)):
        value = node.data if isinstance(node, nodes.TemplateData) else cast(nodes.Const, node).value
        if isinstance(value, str) and value:
            found.append(value)
    return found


# -- outputs never seen writing text -----------------------------------------------------------


def fill_silent_atoms(instrumented: Instrumented, by_atom: dict[int, list[Unit]]) -> None:
    """An output never seen producing text, between two inside outputs of the same tag run, is
    inside too (``<|START_THINKING|>{{ message.tool_plan }}<|END_THINKING|>`` with an empty plan)."""
    siblings: dict[int, list[Atom]] = {}
    for atom in instrumented.atoms:
        siblings.setdefault(id(atom.output), []).append(atom)
    for atoms in siblings.values():
        for previous, atom, following in zip(atoms, atoms[1:], atoms[2:], strict=False):
            units = by_atom.get(atom.id, [])
            if any(u.label != "none" for u in units):
                continue
            before = [u.label for u in by_atom.get(previous.id, []) if u.label != "none"]
            after = [u.label for u in by_atom.get(following.id, []) if u.label != "none"]
            if before and after and before[-1] == "in" and after[0] == "in":
                by_atom[atom.id] = [Unit(atom.id, -1, label="in")]


def fill_boundary_atoms(instrumented: Instrumented, by_atom: dict[int, list[Unit]]) -> None:
    """An output never seen producing text, right where the header ends (outside before it,
    inside after it), is the model's: the span starts where the generation prompt ends.

    Neighbours are found in source order, in the same output tag first, then among the
    statements around it (``{{ header }}`` … ``{{ content }}`` … ``{% for call %}``).
    """
    parents: dict[int, tuple[list[nodes.Node], int]] = {}

    def walk(body: list[nodes.Node]) -> None:
        for index, node in enumerate(body):
            parents[id(node)] = (body, index)
            for name in ("body", "else_"):
                children = getattr(node, name, None)
                if isinstance(children, list) and not isinstance(node, (nodes.Macro, nodes.CallBlock)):
                    walk(children)
            for branch in getattr(node, "elif_", None) or []:
                walk(branch.body)

    walk(instrumented.source.ast.body)
    atoms_in: dict[int, list[Atom]] = {}
    for atom in instrumented.atoms:
        atoms_in.setdefault(id(atom.output), []).append(atom)

    def labels(atoms: list[Atom]) -> list[str]:
        found: list[str] = []
        for atom in sorted(atoms, key=lambda a: a.id):
            found.extend(u.label for u in by_atom.get(atom.id, []) if u.label != "none")
        return found

    def subtree_atoms(node: nodes.Node) -> list[Atom]:
        outputs = [node] if isinstance(node, nodes.Output) else list(node.find_all(nodes.Output))
        return [atom for output in outputs for atom in atoms_in.get(id(output), [])]

    def neighbour(atom: Atom, step: int) -> str | None:
        siblings = atoms_in[id(atom.output)]
        position = siblings.index(atom)
        near = siblings[:position] if step < 0 else siblings[position + 1 :]
        found = labels(near)
        if found:
            return found[-1] if step < 0 else found[0]
        if id(atom.output) not in parents:
            return None
        body, index = parents[id(atom.output)]
        index += step
        while 0 <= index < len(body):
            found = labels(subtree_atoms(body[index]))
            if found:
                return found[-1] if step < 0 else found[0]
            index += step
        return None

    for atom in instrumented.atoms:
        if any(u.label != "none" for u in by_atom.get(atom.id, [])):
            continue
        if neighbour(atom, -1) == "out" and neighbour(atom, 1) == "in":
            by_atom[atom.id] = [Unit(atom.id, -1, label="in")]


def fill_none(units: list[Unit]) -> None:
    """Units never seen with text take their neighbour's label, so runs stay long."""
    previous: Any = next((u.label for u in units if u.label != "none"), "out")
    for unit in units:
        if unit.label == "none":
            unit.label = previous
            unit.condition = ""
        else:
            previous = unit.label
