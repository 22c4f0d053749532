"""The automatic patcher: exact ``{% generation %}`` markers on any chat template.

How the assistant output is found (no family knowledge, no regex on the source):

1. Parse the template into a lossless source model (``templatefix.source``).
2. Render the probe conversations through the instrumented template (``templatefix.trace``):
   every top-level output (literal text, ``{{ expression }}``, and each operand of a ``+``/``~``
   chain) reports the characters it produced, with the loop variables in scope.
3. Ask the oracle (``templatefix.oracle``) where each assistant turn's span must be, and label
   every produced character *inside* or *outside*.
4. Each output unit is then always inside, always outside, or inside under a condition on the
   loop variables (a shared ``'<|im_start|>' + role + '\\n' + content`` expression); a boundary
   inside a string literal or literal text splits it there.
5. Write the markers at the matching source offsets: around whole ``{{ }}`` tags, between
   operands of a split expression, or inside literal text, with a role branch (``{% if %}``)
   where a condition is needed. Whitespace control is carried over so the render is unchanged.
6. Verify the result with the verifier (``templatefix.verify``); ``verified`` is its verdict.

Example:
    >>> result = patch_template(open("templates/chatml.jinja").read())  # doctest: +SKIP
    >>> result.verified  # doctest: +SKIP
    True
"""

from __future__ import annotations

import difflib
import itertools
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import nodes

from templatefix.errors import RenderError, RenderLimitExceeded, TemplatefixError
from templatefix.policy import Policy
from templatefix.source import Edit, TemplateSource, Token
from templatefix.trace import Atom, Instrumented, Trace, instrumented_for

_LOG = logging.getLogger(__name__)
_GENERATION_TAG = re.compile(r"\{%[-+]?\s*(?:end)?generation\s*[-+]?%\}")


class PatchFailure(TemplatefixError):
    """The patcher cannot place markers exactly; the message says where and why."""


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class PatchResult:
    """What ``patch_template`` returns.

    Attributes:
        original: the input template, byte for byte.
        patched: the patched template (equal to ``original`` when nothing could be done).
        verified: the verifier's verdict on ``patched`` against SPEC.md (never assumed).
        report: the verifier's ``Report`` for ``patched`` (``None`` if it could not run).
        reasons: human-readable reasons for anything not exact (empty when verified and exact).
        diff: unified diff from ``original`` to ``patched``.
        changed: whether ``patched`` differs from ``original``.
        policy: the policy the spans were computed for.
        flags: turns the report flags (rewritten history, mismatching generation prompt).
    """

    original: str
    patched: str
    verified: bool
    report: Any
    reasons: list[str] = field(default_factory=list)
    diff: str = ""
    changed: bool = False
    policy: Policy = field(default_factory=Policy)
    flags: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``exact``, ``flagged`` (verified, with rewritten/mismatch turns) or ``refused``."""
        if not self.verified:
            return "refused"
        return "flagged" if self.flags else "exact"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "verified": self.verified,
            "changed": self.changed,
            "reasons": self.reasons,
            "flags": self.flags,
            "policy": self.policy.to_dict(),
            "diff": self.diff,
            "report": self.report.to_json() if hasattr(self.report, "to_json") else None,
        }


def unified_diff(before: str, after: str, name: str = "chat_template.jinja") -> str:
    """A unified diff of two template texts (line endings kept)."""
    return "".join(
        difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{name}", f"b/{name}")
    )


# ---------------------------------------------------------------------------------------------
# Observations: what each output unit produced, inside or outside the expected spans


@dataclass
class _Observation:
    inside: bool
    scope: dict[str, Any]
    flags: dict[str, Any]


@dataclass
class _Unit:
    """A piece of one atom: a whole part, or a slice ``[lo, hi)`` of a constant part."""

    atom: int
    part: int  # -1: the whole atom
    lo: int = 0
    hi: int | None = None
    observations: list[_Observation] = field(default_factory=list)
    label: str = "none"  # in | out | cond | none
    condition: str = ""


@dataclass
class _PartRecord:
    """Every emission of one (atom, part): its text's labelled segments."""

    segments: list[tuple[list[tuple[int, bool]], int, dict[str, Any], dict[str, Any]]] = field(
        default_factory=list
    )  # (cuts [(offset, inside-from-here)], length, scope, flags)
    texts: set[str] = field(default_factory=set)
    cut_texts: list[tuple[frozenset[int], str]] = field(default_factory=list)  # emissions that are cut


def _label_range(spans: Sequence[tuple[int, int]], start: int, end: int) -> list[tuple[int, bool]]:
    """Inside/outside segments of ``[start, end)`` as ``[(relative offset, inside)]``."""
    points = {start}
    for span_start, span_end in spans:
        if start < span_start < end:
            points.add(span_start)
        if start < span_end < end:
            points.add(span_end)
    result = []
    for point in sorted(points):
        inside = any(s <= point < e for s, e in spans)
        if not result or result[-1][1] != inside:
            result.append((point - start, inside))
    return result


# ---------------------------------------------------------------------------------------------
# The patcher


def patch_template(
    template: str,
    *,
    policy: Policy | None = None,
    probes: Sequence[Any] | None = None,
    special_tokens: Mapping[str, Any] | None = None,
    **policy_kwargs: Any,
) -> PatchResult:
    """Insert exact ``{% generation %}`` markers into ``template`` and verify them.

    A template that already has markers is verified as it is and kept when exact; otherwise its
    markers are removed and placed again. Nothing is ever reported verified unless the verifier
    says so.

    Args:
        template: the chat template source.
        policy: what to train (SPEC §6); or give its fields as keyword arguments.
        probes: probe conversations (default: ``probes.probe_battery(template)``).
        special_tokens: values for ``bos_token`` etc. (default: placeholders).

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.

    Example:
        >>> result = patch_template(open("templates/chatml.jinja").read())  # doctest: +SKIP
        >>> print(result.diff)  # doctest: +SKIP
    """
    from templatefix.probes import probe_battery
    from templatefix.verify import verify

    policy = policy or Policy.from_kwargs(**policy_kwargs)
    TemplateSource.parse(template)  # syntax errors surface here, with line and column
    unmarked = strip_generation_markers(template) if has_markers(template) else template
    probe_list = list(probes) if probes is not None else probe_battery(unmarked)

    def finish(patched: str, reasons: list[str]) -> PatchResult:
        report = verify(
            patched, original=template, policy=policy, probes=probe_list, special_tokens=special_tokens
        )
        verified = bool(report.verified)
        all_reasons = list(reasons)
        if not verified:
            all_reasons.extend(r for r in report.failures() if r not in all_reasons)
        flags = list(getattr(report, "flags", []) or [])
        return PatchResult(
            original=template,
            patched=patched,
            verified=verified,
            report=report,
            reasons=all_reasons,
            diff=unified_diff(template, patched),
            changed=patched != template,
            policy=policy,
            flags=[str(f) for f in flags],
        )

    if unmarked is not template:
        as_is = finish(template, [])
        if as_is.verified:
            return as_is
    try:
        patched = place_markers(unmarked, probe_list, policy, special_tokens)
    except RenderLimitExceeded:
        raise  # a bound was hit: say so, never pass it off as a template rejecting a probe
    except (PatchFailure, RenderError) as failure:
        result = finish(template if unmarked is template else unmarked, [str(failure)])
        if unmarked is not template:
            result.patched = template
            result.changed = False
            result.diff = ""
            result.verified = False
        return result
    return finish(patched, [])


def patch_named_templates(
    templates: Mapping[str, str] | Sequence[Mapping[str, str]], **kwargs: Any
) -> dict[str, PatchResult]:
    """Patch each named template (``{"default": ..., "tool_use": ...}`` or ``[{"name", "template"}]``)."""
    items: Iterable[tuple[str, str]]
    if isinstance(templates, Mapping):
        items = templates.items()
    else:
        items = ((entry["name"], entry["template"]) for entry in templates)
    return {name: patch_template(text, **kwargs) for name, text in items}


def has_markers(template: str) -> bool:
    return bool(_GENERATION_TAG.search(template))


def strip_generation_markers(template: str) -> str:
    """Remove ``{% generation %}``/``{% endgeneration %}`` tags, keeping the render identical.

    Tried in order, the first that renders like the input wins: drop each tag's whole line when
    the tag stands alone on it (the cleanest diff); drop just the tags; replace them by
    equivalent comments (``{#- -#}``), which keep their whitespace control.
    """
    source = TemplateSource.parse(template)
    line_edits: list[Edit] = []
    edits: list[Edit] = []
    comment_edits: list[Edit] = []
    for begin, end in _generation_tag_tokens(source):
        start, stop = source.tokens[begin].start, source.tokens[end].end
        tag = template[start:stop]
        edits.append(Edit(start, stop, ""))
        line_start = template.rfind("\n", 0, start) + 1
        alone = not template[line_start:start].strip() and tag.endswith("\n")
        line_edits.append(Edit(line_start if alone else start, stop, ""))
        left = "-" if tag.startswith("{%-") else ""
        right = "-" if tag.rstrip().rstrip("%}").rstrip().endswith("-") else ""
        comment_edits.append(Edit(start, stop, f"{{#{left} {right}#}}" if left or right else ""))
    for candidate_edits in (line_edits, edits):
        candidate = source.apply(candidate_edits)
        if _renders_like(candidate, template):
            return candidate
    return source.apply(comment_edits)


def _generation_tag_tokens(source: TemplateSource) -> list[tuple[int, int]]:
    """Token index ranges of each generation/endgeneration tag."""
    found = []
    tokens = source.tokens
    for index, token in enumerate(tokens):
        if token.kind == "name" and token.text in ("generation", "endgeneration"):
            begin = index - 1
            while begin >= 0 and tokens[begin].kind == "whitespace":
                begin -= 1
            end = index + 1
            while end < len(tokens) and tokens[end].kind == "whitespace":
                end += 1
            if (
                begin >= 0
                and tokens[begin].kind == "block_begin"
                and end < len(tokens)
                and tokens[end].kind == "block_end"
            ):
                found.append((begin, end))
    return found


def _renders_like(candidate: str, reference: str) -> bool:
    from templatefix.probes import probe_battery
    from templatefix.render import render

    for probe in probe_battery(reference):
        for generation_prompt in (False, True):
            try:
                expected = render(
                    reference, probe.messages, add_generation_prompt=generation_prompt, **probe.kwargs
                )
            except RenderLimitExceeded:
                raise
            except RenderError:
                continue
            try:
                if (
                    render(candidate, probe.messages, add_generation_prompt=generation_prompt, **probe.kwargs)
                    != expected
                ):
                    return False
            except RenderLimitExceeded:
                raise
            except RenderError:
                return False
    return True


def place_markers(
    template: str,
    probes: Sequence[Any],
    policy: Policy,
    special_tokens: Mapping[str, Any] | None = None,
) -> str:
    """Return ``template`` with generation markers placed from the probes' behaviour.

    Raises:
        PatchFailure: some boundary cannot be expressed in the template's structure.
    """
    from templatefix.oracle import expected_turns

    source = TemplateSource.parse(template)
    instrumented = instrumented_for(source)
    records: dict[tuple[int, int], _PartRecord] = {}
    samples = 0
    saw_turn = False
    saw_assistant_text = False
    for probe in probes:
        for sample in _samples(probe):
            try:
                expectation = expected_turns(template, sample, policy, special_tokens)
                traced = instrumented.trace(
                    sample.messages, special_tokens=special_tokens, **dict(sample.kwargs)
                )
            except RenderLimitExceeded:
                raise
            except RenderError:
                continue
            if traced.text != expectation.text:
                continue
            spans = [t.span for t in expectation.turns if t.span and t.span[1] > t.span[0]]
            saw_turn = saw_turn or bool(expectation.turns)
            saw_assistant_text = saw_assistant_text or _spans_hold_assistant_text(
                expectation.text, spans, sample
            )
            samples += 1
            _observe(instrumented, traced, spans, dict(sample.kwargs), records)
    if not samples:
        raise PatchFailure("the template rejects every probe conversation, so nothing can be checked")
    if not saw_turn:
        raise PatchFailure("no probe conversation renders an assistant turn")
    if not saw_assistant_text:
        raise PatchFailure("the template never renders what the assistant says: no assistant output to mark")
    units = _resolve_units(instrumented, records)
    if not any(unit.label in ("in", "cond") for unit in units):
        raise PatchFailure("no template output produces assistant text")
    return _write(source, instrumented, units)


@dataclass(frozen=True)
class _Sample:
    name: str
    messages: tuple[dict[str, Any], ...]
    kwargs: Mapping[str, Any]


def _samples(probe: Any) -> Iterable[_Sample]:
    """The probe, and each prefix of it that ends with an assistant message."""
    messages = tuple(probe.messages)
    yield _Sample(probe.name, messages, probe.kwargs)
    for index, message in enumerate(messages[:-1]):
        if message.get("role") == "assistant":
            yield _Sample(f"{probe.name}[:{index + 1}]", messages[: index + 1], probe.kwargs)


def _spans_hold_assistant_text(text: str, spans: list[tuple[int, int]], sample: _Sample) -> bool:
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


def _observe(
    instrumented: Instrumented,
    traced: Trace,
    spans: list[tuple[int, int]],
    flags: dict[str, Any],
    records: dict[tuple[int, int], _PartRecord],
) -> None:
    for emission in traced.emissions:
        if emission.end == emission.start:
            continue
        atom = instrumented.atoms[emission.atom]
        whole_cuts = _label_range(spans, emission.start, emission.end)
        if len(atom.parts) > 1 and (len(whole_cuts) > 1 or emission.part_ranges is None):
            if emission.part_ranges is None:
                # Operands weren't strings: the atom can only be taken whole.
                record = records.setdefault((atom.id, -1), _PartRecord())
                record.segments.append((whole_cuts, emission.end - emission.start, emission.scope, flags))
                continue
            for index, (lo, hi) in enumerate(emission.part_ranges):
                if hi == lo:
                    continue
                cuts = _label_range(spans, emission.start + lo, emission.start + hi)
                record = records.setdefault((atom.id, index), _PartRecord())
                record.segments.append((cuts, hi - lo, emission.scope, flags))
                record.texts.add(traced.text[emission.start + lo : emission.start + hi])
                if len(cuts) > 1:
                    text = traced.text[emission.start + lo : emission.start + hi]
                    record.cut_texts.append((frozenset(o for o, _ in cuts if o > 0), text))
            continue
        record = records.setdefault((atom.id, -1), _PartRecord())
        record.segments.append((whole_cuts, emission.end - emission.start, emission.scope, flags))
        record.texts.add(traced.text[emission.start : emission.end])
        if len(whole_cuts) > 1:
            text = traced.text[emission.start : emission.end]
            record.cut_texts.append((frozenset(o for o, _ in whole_cuts if o > 0), text))


def _slice_anchors(record: _PartRecord) -> list[int] | None:
    """Where to slice a non-literal part so every boundary seen inside it is a slice bound.

    Each boundary must sit at a fixed distance from the start of the text, with the same text
    before it, or from the end, with the same text after it, in at least two emissions (so the
    fixed text holds no message's own words, which differ between messages): the header at the
    front of a ``{% set %}`` string, the ``\n\n`` a macro appends. Distances from the end become
    negative slice bounds. Returns None when some boundary has no such anchor.
    """
    starts: set[int] = set()
    ends: set[int] = set()
    for cuts, text in record.cut_texts:
        for offset in cuts:
            tail = len(text) - offset
            # distinct texts (the same message rendered in several probes counts once)
            cut_here = {t for c, t in record.cut_texts if offset in c}
            cut_as_tail = {t for c, t in record.cut_texts if (len(t) - tail) in c}
            if len(cut_here) >= 2 and len({t[:offset] for t in cut_here}) == 1:
                starts.add(offset)
            elif tail > 0 and len(cut_as_tail) >= 2 and len({t[len(t) - tail :] for t in cut_as_tail}) == 1:
                ends.add(-tail)
            else:
                return None
    anchors = sorted(starts) + sorted(ends)
    for cuts, text in record.cut_texts:  # the anchors must keep their order in every emission
        positions = [_absolute(anchor, len(text)) for anchor in anchors]
        if positions != sorted(positions) or not cuts <= set(positions):
            return None
    return anchors


def _part_node(atom: Atom, part: int) -> nodes.Node:
    if part < 0:
        return atom.inlined if atom.inlined is not None else atom.node
    return atom.parts[part]


_ANY_LENGTH = 1 << 60  # a segment that covers the whole part, however long


def _constant_text(atom: Atom, part: int) -> str | None:
    node = _part_node(atom, part)
    if isinstance(node, nodes.TemplateData):
        return node.data
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return node.value
    return None


def _resolve_units(instrumented: Instrumented, records: dict[tuple[int, int], _PartRecord]) -> list[_Unit]:
    """Turn observations into labelled units, splitting constants at boundaries."""
    units: list[_Unit] = []
    by_atom: dict[int, dict[int, _PartRecord]] = {}
    for (atom_id, part), record in records.items():
        by_atom.setdefault(atom_id, {})[part] = record
    for atom_id, parts in sorted(by_atom.items()):
        atom = instrumented.atoms[atom_id]
        if -1 in parts and len(parts) > 1:
            # Some emissions were only seen whole: spread their uniform labels over the parts.
            whole = parts.pop(-1)
            for cuts, _length, scope, flags in whole.segments:
                if len(cuts) > 1:
                    raise PatchFailure(_where(instrumented, atom, "an assistant span edge falls inside"))
                for index in range(len(atom.parts)):
                    # The whole emission had one label, so every character of every part has it.
                    uniform = ([(0, cuts[0][1])], _ANY_LENGTH, scope, flags)
                    parts.setdefault(index, _PartRecord()).segments.append(uniform)
        if any(index >= 0 for index in parts):
            for index in range(len(atom.parts)):
                parts.setdefault(index, _PartRecord())
        for part, record in sorted(parts.items()):
            cut_points = sorted(
                {offset for cuts, _l, _s, _f in record.segments for offset, _ in cuts if offset > 0}
            )
            if not cut_points or _constant_text(atom, part) is not None or len(record.texts) == 1:
                anchors: list[int] = cut_points  # a literal, or text that never changes
            else:
                found = _slice_anchors(record)
                if found is None:
                    raise PatchFailure(_where(instrumented, atom, "an assistant span edge falls inside"))
                anchors = found
            bounds: list[int | None] = [0, *anchors, None]
            for lo, hi in itertools.pairwise(bounds):
                unit = _Unit(atom_id, part, lo, hi)
                for cuts, length, scope, flags in record.segments:
                    start, end = _absolute(lo, length), _absolute(hi, length)
                    if start >= min(end, length):
                        continue
                    inside = [flag for offset, flag in cuts if offset <= start][-1]
                    unit.observations.append(_Observation(inside, scope, flags))
                _classify(unit, instrumented, atom)
                units.append(unit)
    return units


def _absolute(anchor: int | None, length: int) -> int:
    """A slice bound (negative: from the end; None: the end) as an offset into a text."""
    if anchor is None:
        return length
    return anchor if anchor >= 0 else max(0, length + anchor)


def _classify(unit: _Unit, instrumented: Instrumented, atom: Atom) -> None:
    labels = {o.inside for o in unit.observations}
    if not labels:
        unit.label = "none"
    elif labels == {True}:
        unit.label = "in"
    elif labels == {False}:
        unit.label = "out"
    else:
        condition = _find_condition(unit.observations, instrumented.source, instrumented, atom)
        if condition is None and _LOG.isEnabledFor(logging.DEBUG):
            for observation in unit.observations:  # what no condition could separate
                _LOG.debug(
                    "inside=%s scope=%r flags=%r", observation.inside, observation.scope, observation.flags
                )
        if condition is None:
            raise PatchFailure(
                _where(instrumented, atom, "no condition on the loop variables separates assistant output in")
            )
        unit.label, unit.condition = "cond", condition


def _where(instrumented: Instrumented, atom: Atom, what: str) -> str:
    start, end = atom.node.tf_span
    text = instrumented.source.text[start:end]
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{what} {text!r} at line {instrumented.source.line_of(start)}"


# -- conditions --------------------------------------------------------------------------------


def _find_condition(
    observations: list[_Observation],
    source: TemplateSource,
    instrumented: Instrumented | None = None,
    atom: Atom | None = None,
) -> str | None:
    """The simplest test that is true exactly on the inside observations.

    Building blocks, most telling first: the role of a loop variable; the template's own if/elif
    tests evaluated in the same loop iteration (as "one of the first j branches of this chain was
    taken", which is ``T0 or … or Tj``), nearest first; the message's other fields, ``loop``
    flags and neighbours; template flags; last, tests outside the loop, which only correlate.
    """
    quote = _preferred_quote(source)
    features: list[tuple[str, Any]] = []
    names: dict[str, set[str]] = {}
    for observation in observations:
        for name, value in observation.scope.items():
            if name not in ("loop", "__branches__", "__final__") and isinstance(value, dict):
                names.setdefault(name, set()).update(
                    k for k in value if isinstance(k, str) and k.isidentifier()
                )
    for name, keys in sorted(names.items()):
        if "role" in keys:
            features.append(
                (
                    f"{name}.role == {quote}assistant{quote}",
                    lambda o, n=name: _get(o.scope, n, "role") == "assistant",
                )
            )
    local_branches: list[tuple[str, Any]] = []
    remote_branches: list[tuple[str, Any]] = []
    if instrumented is not None:
        # The template's own tests in this iteration say best what it does.
        local_branches, remote_branches = _branch_features(observations, instrumented, atom)
        features.extend(local_branches)
    for name, keys in sorted(names.items()):
        for key in sorted(keys - {"role"}):
            features.append((f"{name}.{key}", lambda o, n=name, k=key: bool(_get(o.scope, n, k))))
    for name in sorted(names):
        features.append(
            (f"{name} is sameas messages[-1]", lambda o, n=name: n in o.scope.get("__final__", ()))
        )
    if any("loop" in o.scope for o in observations):
        features.append(("loop.last", lambda o: bool(o.scope.get("loop", {}).get("last"))))
        features.append(("loop.first", lambda o: bool(o.scope.get("loop", {}).get("first"))))
        for side, key in (("previtem", "previous_role"), ("nextitem", "next_role")):
            roles = sorted({r for o in observations if (r := o.scope.get("loop", {}).get(key))})
            for role in roles:
                features.append(
                    (
                        f"(loop.{side} is defined and loop.{side}.role == {quote}{role}{quote})",
                        lambda o, k=key, r=role: o.scope.get("loop", {}).get(k) == r,
                    )
                )
    flag_values: dict[str, set[Any]] = {}
    for observation in observations:
        for key, value in observation.flags.items():
            if key.isidentifier() and isinstance(value, (bool, str, int)):
                flag_values.setdefault(key, set()).add(value)
    for flag, seen in sorted(flag_values.items()):
        # Templates test flags as `f`, `f is false` (defined and false) or `f == value`.
        features.append((flag, lambda o, f=flag: bool(o.flags.get(f))))
        features.append((f"{flag} is false", lambda o, f=flag: o.flags.get(f, None) is False))
        features.append((f"{flag} is defined", lambda o, f=flag: f in o.flags))
        for value in sorted(v for v in seen if isinstance(v, str)):
            literal = json.dumps(value)
            features.append((f"{flag} == {literal}", lambda o, f=flag, v=value: o.flags.get(f) == v))
    features.extend(remote_branches)
    target = sum(1 << i for i, o in enumerate(observations) if o.inside)
    full = (1 << len(observations)) - 1
    literals: list[tuple[str, int]] = []
    for text, test in features:
        mask = sum(1 << i for i, o in enumerate(observations) if test(o))
        literals.append((text, mask))
        literals.append((f"not {text}" if " " not in text else f"not ({text})", full & ~mask))
    seen_masks: set[int] = set()
    unique = []
    for text, mask in literals:  # the first (simplest) text for each distinct behaviour
        if mask not in seen_masks:
            seen_masks.add(mask)
            unique.append((text, mask))
    for text, mask in unique:
        if mask == target:
            return text
    for (text_a, a), (text_b, b) in itertools.combinations(unique, 2):
        if a & b == target:
            return f"{_group(text_a)} and {_group(text_b)}"
        if a | b == target:
            return f"{_group(text_a)} or {_group(text_b)}"
    bounded = unique[:48]
    for (text_a, a), (text_b, b), (text_c, c) in itertools.combinations(bounded, 3):
        if a | b | c == target:
            return f"{_group(text_a)} or {_group(text_b)} or {_group(text_c)}"
        if a & b & c == target:
            return f"{_group(text_a)} and {_group(text_b)} and {_group(text_c)}"
        for first, second, third, x, y, z in (
            (text_a, text_b, text_c, a, b, c),
            (text_b, text_a, text_c, b, a, c),
            (text_c, text_a, text_b, c, a, b),
        ):
            if x & (y | z) == target:
                return f"{_group(first)} and ({_group(second)} or {_group(third)})"
            if x | (y & z) == target:
                return f"{_group(first)} or ({_group(second)} and {_group(third)})"
    # A guard on one side, three alternatives on the other ("last turn" and "not the first call").
    small = unique[:24]
    for index, (text_a, a) in enumerate(small):
        for (text_b, b), (text_c, c), (text_d, d) in itertools.combinations(
            small[:index] + small[index + 1 :], 3
        ):
            if a & (b | c | d) == target:
                return f"{_group(text_a)} and ({_group(text_b)} or {_group(text_c)} or {_group(text_d)})"
    return None


def _branch_features(
    observations: list[_Observation], instrumented: Instrumented, atom: Atom | None
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """ "One of branches 0..j of if-chain k was taken", written as the chain's own tests.

    Returns (chains inside the atom's innermost loop, nearest first; all other chains).
    """
    local: list[tuple[str, Any]] = []
    remote: list[tuple[str, Any]] = []
    common = None
    for observation in observations:
        keys = set(observation.scope.get("__branches__", {}))
        common = keys if common is None else common & keys
    source = instrumented.source
    innermost = atom.loops[-1] if atom is not None and atom.loops else None
    atom_loops = atom.loops if atom is not None else []
    for chain_id in sorted(common or (), reverse=True):
        chain = instrumented.ifs[chain_id]
        # The test is re-evaluated where the atom is: its names must mean the same there. So the
        # chain must be in the atom's loop or one enclosing it, and may only use `loop` if it is
        # the same loop.
        enclosing = len(chain.loops) <= len(atom_loops) and all(
            a is b for a, b in zip(chain.loops, atom_loops, strict=False)
        )
        uses_loop = any(n.name == "loop" for test in chain.tests for n in test.find_all(nodes.Name))
        if not enclosing or (uses_loop and len(chain.loops) != len(atom_loops)):
            continue
        near = innermost is not None and bool(chain.loops) and chain.loops[-1] is innermost
        texts = []
        for j, test in enumerate(chain.tests):
            start, end = test.tf_span
            texts.append(_group(" ".join(source.text[start:end].split())))
            text = " or ".join(texts)
            feature = (text, lambda o, k=chain_id, j=j: o.scope["__branches__"][k] <= j)
            (local if near else remote).append(feature)
    return local, remote


def _group(text: str) -> str:
    if text.startswith("(") and text.endswith(")") and text.count("(") == 1:
        return text
    return f"({text})" if " or " in text or " and " in text or " if " in text else text


def _get(scope: dict[str, Any], name: str, key: str) -> Any:
    value = scope.get(name)
    return value.get(key) if isinstance(value, dict) else None


def _preferred_quote(source: TemplateSource) -> str:
    double = sum(1 for t in source.tokens if t.kind == "string" and t.text.startswith('"'))
    single = sum(1 for t in source.tokens if t.kind == "string" and t.text.startswith("'"))
    return '"' if double > single else "'"


# ---------------------------------------------------------------------------------------------
# Writing the markers


@dataclass
class _Marker:
    """A ``generation``/``endgeneration`` tag to insert at a source offset."""

    offset: int
    opening: bool
    order: int


def _write(source: TemplateSource, instrumented: Instrumented, units: list[_Unit]) -> str:
    by_atom: dict[int, list[_Unit]] = {}
    for unit in units:
        by_atom.setdefault(unit.atom, []).append(unit)
    _fill_silent_atoms(instrumented, by_atom)
    _fill_boundary_atoms(instrumented, by_atom)
    edits: list[Edit] = []
    markers: list[_Marker] = []
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


def _fill_silent_atoms(instrumented: Instrumented, by_atom: dict[int, list[_Unit]]) -> None:
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
                by_atom[atom.id] = [_Unit(atom.id, -1, label="in")]


def _fill_boundary_atoms(instrumented: Instrumented, by_atom: dict[int, list[_Unit]]) -> None:
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
        found = []
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
            by_atom[atom.id] = [_Unit(atom.id, -1, label="in")]


def _write_literal(
    source: TemplateSource,
    instrumented: Instrumented,
    atom: Atom,
    units: list[_Unit],
    markers: list[_Marker],
    edits: list[Edit],
) -> None:
    token = source.token_at(atom.node.tf_span[0])
    _fill_none(units)
    for (label, condition), run in itertools.groupby(units, key=lambda u: (u.label, u.condition)):
        run_units = list(run)
        start = _data_offset(token, run_units[0].lo)
        end = _data_offset(token, run_units[-1].hi)
        if label == "in":
            markers.append(_Marker(start, True, 1))
            markers.append(_Marker(_skip_gaps(source, end), False, 0))
        elif label == "cond":
            # Literal text that is assistant output only sometimes: branch on the condition, with
            # the text as a string expression in both branches.
            text = json.dumps(atom.node.data[run_units[0].lo : run_units[-1].hi], ensure_ascii=False)
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


def _fill_none(units: list[_Unit]) -> None:
    """Units never seen with text take their neighbour's label, so runs stay long."""
    previous = next((u.label for u in units if u.label != "none"), "out")
    for unit in units:
        if unit.label == "none":
            unit.label = previous
            unit.condition = ""
        else:
            previous = unit.label


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
    units: list[_Unit],
    markers: list[_Marker],
    edits: list[Edit],
) -> None:
    begin, end = _tag_tokens(source, atom.node)
    _fill_none(units)
    open_start = source.tokens[begin].start
    close_end = source.tokens[end].start + len(source.tokens[end].text.rstrip())
    if all(u.label == "in" for u in units):
        markers.append(_Marker(open_start, True, 1))
        markers.append(_Marker(source.tokens[end].end, False, 0))
        return
    # The tag is split into one tag per run of equally-labelled parts; whitespace control of the
    # original tag goes on whatever tag ends up outermost, so the render is unchanged.
    left_mod = source.tokens[begin].text[2:3] if source.tokens[begin].text[2:3] in "-+" else ""
    right_mod = "-" if source.tokens[end].text.startswith("-") else ""
    block_left = "-" if left_mod == "-" else ("+" if _needs_lstrip_guard(source, open_start) else "")
    block_right = "-" if right_mod == "-" else ("+" if _needs_trim_guard(source, close_end) else "")
    runs = [(key, list(run)) for key, run in itertools.groupby(units, key=lambda u: (u.label, u.condition))]
    pieces = []
    for index, ((label, condition), run) in enumerate(runs):
        first, last = index == 0, index == len(runs) - 1
        expression = _run_expression(source, atom, run)
        plain = f"{{{{{left_mod if first else ''} {expression} {right_mod if last else ''}}}}}"
        if label == "out":
            pieces.append(plain)
        elif label == "in" and (first or last):
            # Outer markers go in as separate tags, so they can merge with a neighbour's.
            if first:
                markers.append(_Marker(open_start, True, 1))
            else:
                pieces.append("{% generation %}")
            pieces.append(plain)
            if last:
                markers.append(_Marker(source.tokens[end].end, False, 0))
            else:
                pieces.append("{% endgeneration %}")
        elif label == "in":
            pieces.append(f"{{% generation %}}{{{{ {expression} }}}}{{% endgeneration %}}")
        else:
            tag = f"{{{{ {expression} }}}}"
            pieces.append(_branch(condition, tag, block_left if first else "", block_right if last else ""))
    edits.append(Edit(open_start, close_end, "".join(pieces)))


def _run_expression(source: TemplateSource, atom: Atom, run: list[_Unit]) -> str:
    merged: list[_Unit] = []
    for unit in run:  # neighbouring slices of one literal read better as one literal
        if merged and merged[-1].part == unit.part and merged[-1].hi == unit.lo:
            merged[-1] = _Unit(unit.atom, unit.part, merged[-1].lo, unit.hi)
        else:
            merged.append(unit)
    run = merged
    if len(run) == 1 and run[0].part < 0 and run[0].lo == 0 and run[0].hi is None:
        start, end = _part_node(atom, -1).tf_span
        return source.text[start:end]  # the whole expression in a tag of its own
    texts: list[str] = []
    for position, unit in enumerate(run):
        node = _part_node(atom, unit.part)
        if unit.lo == 0 and unit.hi is None:
            text = _node_text(source, node)
        else:
            text = _literal_slice(source, node, unit.lo, unit.hi)
        if position:
            previous = run[position - 1]
            operator = "+" if previous.part == unit.part else atom.operators[unit.part - 1]
            texts.append(f" {operator} ")
        texts.append(text)
    return "".join(texts)


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
    start, end = node.tf_span
    text = source.text[start:end]
    if isinstance(node, _PRIMARY) or (text.startswith("(") and text.endswith(")")):
        return text
    return f"({text})"


def _literal_slice(source: TemplateSource, node: nodes.Node, lo: int, hi: int | None) -> str:
    """A string literal for ``value[lo:hi]``, cut from the original literal's bytes when possible.

    A part that is not a literal but always renders the same text is sliced: ``x[lo:hi]``.
    """
    if not (isinstance(node, nodes.Const) and isinstance(node.value, str)):
        text = _node_text(source, node)
        if not isinstance(
            node, (nodes.Name, nodes.Getattr, nodes.Getitem, nodes.Call)
        ) and not text.startswith("("):
            text = f"({text})"  # `x | trim[:3]` would slice the filter's name
        return f"{text}[{lo or ''}:{'' if hi is None else hi}]"  # hi < 0: from the end
    value: str = node.value
    piece = value[lo:hi]
    start, end = node.tf_span
    raw = source.text[start:end]
    quote = raw[:1]
    if len(raw) >= 2 and raw[-1] == quote and quote in "'\"":
        body = raw[1:-1]
        raw_lo = _raw_index(body, value, lo)
        raw_hi = len(body) if hi is None else _raw_index(body, value, hi)
        if raw_lo is not None and raw_hi is not None:
            return f"{quote}{body[raw_lo:raw_hi]}{quote}"
    return json.dumps(piece, ensure_ascii=False)


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


def _tag_tokens(source: TemplateSource, node: nodes.Node) -> tuple[int, int]:
    """Indices of the ``{{`` and ``}}`` tokens around an output expression."""
    start, end = node.tf_span
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


def _marker_text(source: TemplateSource, marker: _Marker) -> str:
    """The tag text, with whitespace control that keeps the render unchanged."""
    keyword = "generation" if marker.opening else "endgeneration"
    token = source.token_at(marker.offset) if marker.offset < len(source.text) else None
    at_tag = token is not None and token.start == marker.offset
    modifier = token.text[2:3] if at_tag and token.text[2:3] in "-+" else ""
    if at_tag and token.kind in ("block_begin", "comment_begin"):
        # Right before a tag that strips (or keeps) the whitespace before it: do as it does, so
        # the whitespace is treated the same whichever of the two tags comes first.
        left = modifier
    elif at_tag and token.kind == "variable_begin" and modifier == "-":
        left = "-"
    else:
        left = "+" if _needs_lstrip_guard(source, marker.offset) else ""
    right = "+" if _needs_trim_guard(source, marker.offset) else ""
    return f"{{%{left} {keyword} {right}%}}"


def _cancel_adjacent(source: TemplateSource, markers: list[_Marker]) -> list[_Marker]:
    """Drop an ``endgeneration`` immediately followed by a ``generation`` (only stripped space between)."""
    ordered = sorted(markers, key=lambda m: (m.offset, m.order))
    result: list[_Marker] = []
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
