"""Stage 1: render the probes through the instrumented template and record what each output did.

For every probe conversation (and each prefix of it that ends with an assistant message) the
oracle says where the assistant spans must be, and the instrumented trace says which output of
the template wrote which characters. Each emission's characters are cut into runs that are
inside or outside the expected spans; the runs are collected per output piece (an atom, or one
operand of a ``+``/``~`` chain) together with the loop variables and flags in force.

Example:
    >>> label_range([(2, 5)], 0, 8)
    [Cut(offset=0, inside=False), Cut(offset=2, inside=True), Cut(offset=5, inside=False)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import nodes

from templatefix.errors import InternalDisagreement, RenderError, RenderLimitExceeded
from templatefix.policy import Policy
from templatefix.trace import Atom, Emission, Instrumented, Trace

#: ``(atom id, part index)``; part ``-1`` is the whole atom.
PartKey = tuple[int, int]


@dataclass(frozen=True)
class Cut:
    """From ``offset`` (relative to the text's start) on, the text is ``inside`` a span or not."""

    offset: int
    inside: bool


@dataclass
class Segment:
    """One emission of one output piece, cut into inside/outside runs.

    Attributes:
        cuts: where each run starts, first at offset 0.
        length: the emitted text's length.
        emission: the emission (loop variables, loop state, branches taken).
        flags: the template arguments of the probe (``enable_thinking``…).
    """

    cuts: list[Cut]
    length: int
    emission: Emission
    flags: dict[str, Any]


@dataclass(frozen=True)
class CutText:
    """An emitted text that a span edge cuts: where (offsets > 0) and the text itself."""

    offsets: frozenset[int]
    text: str


@dataclass
class PartRecord:
    """Every emission of one output piece."""

    segments: list[Segment] = field(default_factory=list)
    texts: set[str] = field(default_factory=set)  # distinct texts emitted
    cut_texts: list[CutText] = field(default_factory=list)  # emissions that a span edge cuts


@dataclass
class Observations:
    """What the probes showed: the records per output piece, and what was seen at all."""

    records: dict[PartKey, PartRecord] = field(default_factory=dict)
    samples: int = 0
    saw_turn: bool = False
    saw_assistant_text: bool = False


@dataclass(frozen=True)
class Sample:
    """A conversation to observe: a probe, or a prefix of it that ends with an assistant message."""

    name: str
    messages: tuple[dict[str, Any], ...]
    kwargs: Mapping[str, Any]


def samples(probe: Any) -> Iterable[Sample]:
    """The probe, and each prefix of it that ends with an assistant message."""
    messages = tuple(probe.messages)
    yield Sample(probe.name, messages, probe.kwargs)
    for index, message in enumerate(messages[:-1]):
        if message.get("role") == "assistant":
            yield Sample(f"{probe.name}[:{index + 1}]", messages[: index + 1], probe.kwargs)


def observe(
    template: str,
    instrumented: Instrumented,
    probes: Sequence[Any],
    policy: Policy,
    special_tokens: Mapping[str, Any] | None = None,
) -> Observations:
    """Trace every sample of every probe and record its emissions, labelled by the oracle.

    A sample the original template rejects is skipped.

    Raises:
        RenderLimitExceeded: a render went past its bound.
        InternalDisagreement: the trace of a conversation the template accepts fails, or differs
            from the plain render (a bug in the instrumentation); such a sample is never dropped.
    """
    from templatefix.oracle import expected_turns

    seen = Observations()
    for probe in probes:
        for sample in samples(probe):
            try:
                expectation = expected_turns(template, sample, policy, special_tokens)
            except RenderLimitExceeded:
                raise
            except RenderError:
                continue  # the original refuses this conversation: nothing to observe
            traced = trace_agreeing(instrumented, sample, expectation.text, special_tokens)
            spans = [t.span for t in expectation.turns if t.span and t.span[1] > t.span[0]]
            # Where a turn without an end-of-turn token may end: through the whitespace G ends with.
            ends = {t.end_out: t.end_in for t in expectation.turns if t.span and t.open_end}
            # Whitespace a turn generated alone is owed nothing: outputs that wrote only that
            # are free to be marked or not, so they say nothing about their label.
            free = [(t.start, t.end_in) for t in expectation.turns if t.blank and t.end_in > t.start]
            seen.saw_turn = seen.saw_turn or bool(expectation.turns)
            seen.saw_assistant_text = seen.saw_assistant_text or spans_hold_assistant_text(
                expectation.text, spans, sample
            )
            seen.samples += 1
            record_emissions(instrumented, traced, spans, dict(sample.kwargs), seen.records, free, ends)
    return seen


def trace_agreeing(
    instrumented: Instrumented, sample: Sample, text: str, special_tokens: Mapping[str, Any] | None
) -> Trace:
    """The instrumented trace of ``sample``, which must render ``text`` as the plain render did.

    Raises:
        RenderLimitExceeded: the trace went past a render bound.
        InternalDisagreement: the trace fails or renders other text.
    """
    try:
        traced = instrumented.trace(sample.messages, special_tokens=special_tokens, **dict(sample.kwargs))
    except RenderLimitExceeded:
        raise
    except RenderError as error:
        raise InternalDisagreement(
            f"the instrumented trace fails on {sample.name}, which the template renders: {error}"
        ) from error
    if traced.text != text:
        raise InternalDisagreement(
            f"the instrumented trace renders {sample.name} differently from the template"
        )
    return traced


def spans_hold_assistant_text(text: str, spans: list[tuple[int, int]], sample: Sample) -> bool:
    """Does some span contain words the assistant wrote (content, reasoning, tool-call names)?"""
    words: list[str] = []
    for message in sample.messages:
        if message.get("role") != "assistant":
            continue
        for key in ("content", "reasoning_content", "thinking"):
            value = message.get(key)
            if isinstance(value, str) and value.strip():
                words.append(value.strip())
            elif isinstance(value, list):
                words.extend(
                    p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
        for call in message.get("tool_calls") or []:
            name = (call.get("function") or {}).get("name") if isinstance(call, dict) else None
            if isinstance(name, str):
                words.append(name)
    return any(word and word in text[start:end] for start, end in spans for word in words)


def label_range(spans: Sequence[tuple[int, int]], start: int, end: int) -> list[Cut]:
    """Inside/outside runs of ``[start, end)``, as cuts relative to ``start``."""
    points = {start}
    for span_start, span_end in spans:
        if start < span_start < end:
            points.add(span_start)
        if start < span_end < end:
            points.add(span_end)
    result: list[Cut] = []
    for point in sorted(points):
        inside = any(s <= point < e for s, e in spans)
        if not result or result[-1].inside != inside:
            result.append(Cut(point - start, inside))
    return result


def record_emissions(
    instrumented: Instrumented,
    traced: Trace,
    spans: list[tuple[int, int]],
    flags: dict[str, Any],
    records: dict[PartKey, PartRecord],
    free: Sequence[tuple[int, int]] = (),
    ends: Mapping[int, int] | None = None,
) -> None:
    """Add each non-empty emission of ``traced`` to ``records``, per part when a span edge cuts
    a chain (``'<|im_start|>' + role + '\\n' + content``) and the parts' texts are known.
    Emissions that lie within a ``free`` range (whitespace a turn generated alone) are left out.

    ``ends`` maps a span end to how far the whitespace that ends the turn reaches. A piece that is
    not constant text (``{{ message.content }}``) and ends a turn with its own trailing whitespace
    cannot be cut before that whitespace; SPEC §2 allows it in, so the piece is recorded as
    inside up to its end."""
    for emission in traced.emissions:
        if emission.end == emission.start:
            continue
        if any(start <= emission.start and emission.end <= end for start, end in free):
            continue
        atom = instrumented.atoms[emission.atom]
        whole_cuts = label_range(spans, emission.start, emission.end)
        if len(atom.parts) > 1 and (len(whole_cuts) > 1 or emission.part_ranges is None):
            if emission.part_ranges is None:
                # Operands weren't strings: the atom can only be taken whole.
                record = records.setdefault((atom.id, -1), PartRecord())
                record.segments.append(Segment(whole_cuts, emission.end - emission.start, emission, flags))
                continue
            for index, (lo, hi) in enumerate(emission.part_ranges):
                if hi == lo:
                    continue
                record = records.setdefault((atom.id, index), PartRecord())
                cuts = _keep_trailing_whitespace(
                    traced.text,
                    label_range(spans, emission.start + lo, emission.start + hi),
                    emission.start + lo,
                    emission.start + hi,
                    ends,
                    _constant(atom, index),
                )
                _add(record, spans, traced, emission, lo, hi, flags, cuts)
            continue
        record = records.setdefault((atom.id, -1), PartRecord())
        cuts = _keep_trailing_whitespace(
            traced.text, whole_cuts, emission.start, emission.end, ends, _constant(atom, -1)
        )
        _add(record, spans, traced, emission, 0, emission.end - emission.start, flags, cuts)


def _constant(atom: Atom, part: int) -> bool:
    """Whether the piece always renders the same text (literal text or a string constant)."""
    node = (atom.inlined if atom.inlined is not None else atom.node) if part < 0 else atom.parts[part]
    return isinstance(node, nodes.TemplateData) or (
        isinstance(node, nodes.Const) and isinstance(node.value, str)
    )


def _keep_trailing_whitespace(
    text: str, cuts: list[Cut], start: int, end: int, ends: Mapping[int, int] | None, constant: bool
) -> list[Cut]:
    """Drop a final inside→outside cut of a non-constant piece when all that follows it in the
    piece is the whitespace the turn may end with, all of it (see ``record_emissions``)."""
    if constant or not ends or len(cuts) < 2 or cuts[-1].inside or not cuts[-2].inside:
        return cuts
    edge = start + cuts[-1].offset
    reach = ends.get(edge)
    if reach is None or end != reach or text[edge:end].strip():
        return cuts
    return cuts[:-1]


def _add(
    record: PartRecord,
    spans: list[tuple[int, int]],
    traced: Trace,
    emission: Emission,
    lo: int,
    hi: int,
    flags: dict[str, Any],
    cuts: list[Cut] | None = None,
) -> None:
    """Record the text ``[lo, hi)`` of ``emission`` (relative offsets)."""
    start, end = emission.start + lo, emission.start + hi
    if cuts is None:
        cuts = label_range(spans, start, end)
    record.segments.append(Segment(cuts, hi - lo, emission, flags))
    text = traced.text[start:end]
    record.texts.add(text)
    if len(cuts) > 1:
        record.cut_texts.append(CutText(frozenset(c.offset for c in cuts if c.offset > 0), text))
