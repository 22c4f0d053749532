"""Stage 1: render the probes through the instrumented template and record what each output did.

For every probe conversation (and each prefix of it that ends with an assistant message) the
oracle says where the assistant spans must be, and the instrumented trace says which output of
the template wrote which characters. Each emission's characters are cut into runs that are
inside or outside the expected spans; the runs are collected per output piece (an atom, or one
operand of a ``+``/``~`` chain) together with the loop variables and flags in force.

The prompts (prefixes that end with another message: a system prompt, a user's question, a
tool result) can be observed too, without and with the generation prompt:
no assistant turn owns what such a render writes after its last assistant turn, so text a
template writes after the loop for the turn that may come next (Phi-3's ``eos_token``, an
unconditional ``### Response`` header) is seen outside there, and the condition stage finds what
separates it (how the conversation ends, :class:`Ending`). The patcher observes them only when a
first placement marks such text (:func:`marks_after_prompt_text`).

Example:
    >>> label_range([(2, 5)], 0, 8)
    [Cut(offset=0, inside=False), Cut(offset=2, inside=True), Cut(offset=5, inside=False)]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from jinja2 import nodes

from templatefix.analysis.instrument import Instrumented
from templatefix.analysis.records import Atom, Emission, Trace
from templatefix.errors import InternalDisagreement, RenderError, RenderLimitExceeded
from templatefix.policy import Policy
from templatefix.template import ChatTemplate

if TYPE_CHECKING:
    from templatefix.conversation import Probe

#: ``(atom id, part index)``; part ``-1`` is the whole atom.
PartKey = tuple[int, int]


@dataclass(frozen=True)
class Cut:
    """From ``offset`` (relative to the text's start) on, the text is ``inside`` a span or not."""

    offset: int
    inside: bool


@dataclass(frozen=True)
class Ending:
    """How a rendered conversation ends, which outputs after the message loop can test.

    Attributes:
        last_role: the role of the conversation's last message (``None`` for no message).
        add_generation_prompt: whether the render asked for the generation prompt.
    """

    last_role: str | None = "assistant"
    add_generation_prompt: bool = False

    @classmethod
    def of(cls, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> Ending:
        """The ending of ``messages`` rendered with or without the generation prompt."""
        role = messages[-1].get("role") if messages else None
        return cls(role if isinstance(role, str) else None, add_generation_prompt)


@dataclass
class Segment:
    """One emission of one output piece, cut into inside/outside runs.

    Attributes:
        cuts: where each run starts, first at offset 0.
        length: the emitted text's length.
        emission: the emission (loop variables, loop state, branches taken).
        flags: the template arguments of the probe (``enable_thinking``…).
        ending: how the rendered conversation ends.
        text: the emitted text (``None`` when only the whole atom's text is known).
    """

    cuts: list[Cut]
    length: int
    emission: Emission
    flags: dict[str, Any]
    ending: Ending = field(default_factory=Ending)
    text: str | None = None


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
    """What the probes showed: the records per output piece, and what was seen at all.

    ``whitespace_in``: a turn that ends with the message's own words (no end-of-turn token) is
    labelled through all the whitespace that ends it (SPEC §2 allows it in or out), instead of
    stopping after its last word. ``open_whitespace``: some such turn ended with whitespace, so
    labelling with ``whitespace_in`` places that edge elsewhere.
    """

    records: dict[PartKey, PartRecord] = field(default_factory=dict)
    samples: int = 0
    saw_turn: bool = False
    saw_assistant_text: bool = False
    done: set[str] = field(default_factory=set)  # the samples observed, as :func:`_sample_key`
    whitespace_in: bool = False
    open_whitespace: bool = False


@dataclass(frozen=True)
class Sample:
    """A conversation to observe: a probe, or a prefix of it.

    Attributes:
        name: the probe's name, with the prefix length for a prefix.
        messages: the conversation.
        kwargs: the template arguments of the probe.
        add_generation_prompt: render with the generation prompt (only prompt samples do).
    """

    name: str
    messages: tuple[dict[str, Any], ...]
    kwargs: Mapping[str, Any]
    add_generation_prompt: bool = False

    @property
    def ending(self) -> Ending:
        return Ending.of(self.messages, self.add_generation_prompt)


def samples(probe: Any) -> Iterable[Sample]:
    """The probe, and each prefix of it that ends with an assistant message."""
    messages = tuple(probe.messages)
    yield Sample(probe.name, messages, probe.kwargs)
    for index, message in enumerate(messages[:-1]):
        if message.get("role") == "assistant":
            yield Sample(f"{probe.name}[:{index + 1}]", messages[: index + 1], probe.kwargs)


def prompt_samples(probe: Any) -> Iterable[Sample]:
    """Each non-empty prefix of the probe (the probe included) whose last message is not an
    assistant's (a system prompt, a user's question, a tool result), without and then with the
    generation prompt."""
    messages = tuple(probe.messages)
    for count in range(1, len(messages) + 1):
        if messages[count - 1].get("role") != "assistant":
            for prompt in (False, True):
                yield Sample(f"{probe.name}[:{count}]", messages[:count], probe.kwargs, prompt)


def observe(
    template: ChatTemplate | str,
    instrumented: Instrumented,
    probes: Sequence[Probe],
    policy: Policy,
    special_tokens: Mapping[str, Any] | None = None,
    seen: Observations | None = None,
    prompts: bool = False,
) -> Observations:
    """Trace every sample of every probe and record its emissions, labelled by the oracle.

    The samples are :func:`samples` (the training renders), or with ``prompts`` the
    :func:`prompt_samples`; they are added to ``seen`` when given. A sample the original template
    rejects is skipped, and one already observed (probes share prefixes) is not observed again.

    Raises:
        RenderLimitExceeded: a render went past its bound.
        InternalDisagreement: the trace of a conversation the template accepts fails, or differs
            from the plain render (a bug in the instrumentation); such a sample is never dropped.
    """
    template = ChatTemplate.of(template)
    seen = seen if seen is not None else Observations()
    for probe in probes:
        for sample in prompt_samples(probe) if prompts else samples(probe):
            key = _sample_key(sample)
            if key is not None:
                if key in seen.done:
                    continue
                seen.done.add(key)
            _observe_sample(template, instrumented, sample, policy, special_tokens, seen)
    return seen


def marks_after_prompt_text(
    patched: str, probes: Sequence[Probe], special_tokens: Mapping[str, Any] | None = None
) -> bool:
    """Whether ``patched`` marks text in some prompt render (:func:`prompt_samples`) past the start
    of the first text of a message that follows the last assistant turn: text no turn owns.

    A cheap look (plain renders, no oracle) that says when prompt renders need observing at all.
    A message whose text the render does not hold bounds nothing.
    """
    from templatefix.analysis.texts import locate_texts
    from templatefix.oracle import remembered_render_with_spans

    done: set[str] = set()
    for probe in probes:
        for sample in prompt_samples(probe):
            key = _sample_key(sample)
            if key is not None:
                if key in done:
                    continue
                done.add(key)
            messages = list(sample.messages)
            try:
                text, spans = remembered_render_with_spans(
                    patched, messages, sample.kwargs, sample.add_generation_prompt, special_tokens
                )
            except RenderLimitExceeded:
                raise
            except RenderError:
                continue  # the original refuses it too: rule 1 is the verifier's to judge
            last_turn = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
            after = [found[0][0] for found in locate_texts(text, messages)[last_turn + 1 :] if found]
            if after and any(end > min(after) for _, end in spans):
                return True
    return False


def _sample_key(sample: Sample) -> str | None:
    """What makes two samples render alike (``None`` for arguments that are not plain data)."""
    try:
        return json.dumps(
            [list(sample.messages), dict(sample.kwargs), sample.add_generation_prompt], sort_keys=True
        )
    except (TypeError, ValueError):
        return None


def _observe_sample(
    template: ChatTemplate,
    instrumented: Instrumented,
    sample: Sample,
    policy: Policy,
    special_tokens: Mapping[str, Any] | None,
    seen: Observations,
) -> None:
    """Trace one sample and add its emissions to ``seen`` (nothing if the original rejects it).

    A sample that ends with another message than an assistant's (a prompt render) contributes
    what it writes after its last assistant turn: text no turn owns, so outside. Before that, it
    contributes only the outputs outside every loop (written once for the whole conversation),
    labelled by the oracle: one that falls in the last turn's output there is that turn's (the
    messages after it write nothing, as Phi-3's tool messages). The loops' outputs there are what
    the prefixes ending with those turns show. With the generation prompt, the render must
    continue the one without it (else which turn owns what is unknown and the sample is skipped).
    """
    from templatefix.oracle import expected_turns, remembered_render

    prompt_render = sample.ending.last_role != "assistant"
    try:
        expectation = expected_turns(
            template, Sample(sample.name, sample.messages, sample.kwargs), policy, special_tokens
        )
        text = expectation.text
        if sample.add_generation_prompt:
            text = remembered_render(template.text, sample.messages, sample.kwargs, True, special_tokens)
            if not text.startswith(expectation.text):
                return
    except RenderLimitExceeded:
        raise
    except RenderError:
        return  # the original refuses this conversation: nothing to observe
    traced = trace_agreeing(instrumented, sample, text, special_tokens)
    seen.samples += 1
    labelled = (span for t in expectation.turns for span in _labelled_spans(t, seen.whitespace_in))
    spans = [span for span in labelled if span[1] > span[0]]
    seen.open_whitespace = seen.open_whitespace or any(
        t.open_end and t.end_in > t.end_out for t in expectation.turns if t.spans
    )
    # Where a turn without an end-of-turn token may end: through the whitespace G ends with.
    ends = {t.end_out: t.end_in for t in expectation.turns if t.spans and t.open_end}
    # Whitespace a turn generated alone is owed nothing: outputs that wrote only that
    # are free to be marked or not, so they say nothing about their label.
    free = [(t.start, t.end_in) for t in expectation.turns if t.blank and t.end_in > t.start]
    if prompt_render:
        # A turn's later piece (Gemma 4's answer after the tool results) is the turn's own too.
        owned = max(
            (max(t.start, t.end_out, t.end_in, *(end for _, end in t.spans)) for t in expectation.turns),
            default=0,
        )
        flags, ending = dict(sample.kwargs), sample.ending
        record_emissions(instrumented, traced, [], flags, seen.records, ending=ending, since=owned)
        once = [e for e in traced.emissions if e.start < owned and not instrumented.atoms[e.atom].loops]
        record_emissions(
            instrumented, replace(traced, emissions=once), spans, flags, seen.records, free, ends, ending
        )
        return
    seen.saw_turn = seen.saw_turn or bool(expectation.turns)
    seen.saw_assistant_text = seen.saw_assistant_text or spans_hold_assistant_text(text, spans, sample)
    record_emissions(instrumented, traced, spans, dict(sample.kwargs), seen.records, free, ends)


def _labelled_spans(turn: Any, whitespace_in: bool) -> list[tuple[int, int]]:
    """The spans a turn's characters are labelled by: the policy's, or with ``whitespace_in``, for
    a turn that ends with its own words, its last piece through all its trailing whitespace."""
    spans = list(turn.spans)
    if whitespace_in and turn.open_end and spans:
        start, end = spans[-1]
        spans[-1] = (start, max(end, turn.end_in))
    return spans


def trace_agreeing(
    instrumented: Instrumented, sample: Sample, text: str, special_tokens: Mapping[str, Any] | None
) -> Trace:
    """The instrumented trace of ``sample``, which must render ``text`` as the plain render did.

    Raises:
        RenderLimitExceeded: the trace went past a render bound.
        InternalDisagreement: the trace fails or renders other text.
    """
    from templatefix.oracle import remembered_trace

    try:
        traced = remembered_trace(
            instrumented, sample.messages, sample.kwargs, sample.add_generation_prompt, special_tokens
        )
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
    ending: Ending | None = None,
    since: int = 0,
) -> None:
    """Add each non-empty emission of ``traced`` to ``records``, per part when a span edge cuts
    a chain (``'<|im_start|>' + role + '\\n' + content``) and the parts' texts are known.
    Emissions that lie within a ``free`` range (whitespace a turn generated alone) are left out.

    ``ends`` maps a span end to how far the whitespace that ends the turn reaches. A piece that is
    not constant text (``{{ message.content }}``) and ends a turn with its own trailing whitespace
    cannot be cut before that whitespace; SPEC §2 allows it in, so the piece is recorded as
    inside up to its end. ``ending`` says how the conversation ends (default: with an assistant
    message, no generation prompt); emissions that start before ``since`` are left out."""
    ending = ending or Ending()
    for emission in traced.emissions:
        if emission.end == emission.start or emission.start < since:
            continue
        if any(start <= emission.start and emission.end <= end for start, end in free):
            continue
        atom = instrumented.atoms[emission.atom]
        whole_cuts = label_range(spans, emission.start, emission.end)
        if len(atom.parts) > 1 and (len(whole_cuts) > 1 or emission.part_ranges is None):
            if emission.part_ranges is None:
                # Operands weren't strings: the atom can only be taken whole.
                record = records.setdefault((atom.id, -1), PartRecord())
                record.segments.append(
                    Segment(whole_cuts, emission.end - emission.start, emission, flags, ending)
                )
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
                _add(record, spans, traced, emission, lo, hi, flags, cuts, ending)
            continue
        record = records.setdefault((atom.id, -1), PartRecord())
        cuts = _keep_trailing_whitespace(
            traced.text, whole_cuts, emission.start, emission.end, ends, _constant(atom, -1)
        )
        _add(record, spans, traced, emission, 0, emission.end - emission.start, flags, cuts, ending)


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
    ending: Ending | None = None,
) -> None:
    """Record the text ``[lo, hi)`` of ``emission`` (relative offsets)."""
    start, end = emission.start + lo, emission.start + hi
    if cuts is None:
        cuts = label_range(spans, start, end)
    text = traced.text[start:end]
    record.segments.append(Segment(cuts, hi - lo, emission, flags, ending or Ending(), text))
    record.texts.add(text)
    if len(cuts) > 1:
        record.cut_texts.append(CutText(frozenset(c.offset for c in cuts if c.offset > 0), text))
