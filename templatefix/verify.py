"""Judge a marked template by SPEC.md rules 1–3 (and §5 through ``templatefix.tokens``).

``verify(template, original)`` renders every probe conversation with both templates:

* rule 1 — every render the oracle used (each prefix, with and without the generation prompt,
  with the probe's template arguments) must be byte-identical between patched and original;
* rules 2–3 — the patched template's merged ``{% generation %}`` spans on the full conversation
  must equal the oracle's expected spans (``templatefix.oracle``), one for one;
* SPEC §7 — in that full render, every word the assistant wrote that the policy trains is inside
  a span, and every other word is outside, judged by rule from the conversation alone
  (``templatefix.words``), not from the oracle;
* SPEC §4 — the probes must reach every output of the original that writes text
  (``templatefix.coverage``); otherwise the report's status is ``unverified-code`` and it names
  each output no probe reached.

Turns whose history is rewritten, or whose generation prompt disagrees with the render, pass
when their span has rule 3's shape, but are listed in ``Report.flags`` with the honest
alternatives. Without ``original`` the template is its own original (markers do not change
text) and rule 1 is not checked.

Example:
    >>> patched = ("{% for m in messages %}<|im_start|>{{ m.role }}\\n"
    ...            "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}<|im_end|>"
    ...            "{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\\n"
    ...            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}")
    >>> verify(patched).verified
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from templatefix.analysis.expectations import ProbeExpectation, TurnExpectation
from templatefix.clock import frozen_clock
from templatefix.coverage import measure
from templatefix.errors import RenderError, RenderLimitExceeded, TemplateSyntaxError
from templatefix.jinja.markers import has_markers
from templatefix.oracle import expected_turns, remembered_render, remembered_render_with_spans
from templatefix.policy import Policy
from templatefix.probes import policy_probes, probe_battery
from templatefix.render import Span, compile_template, merge_spans
from templatefix.report import EdgeDiff, ProbeResult, Report, TurnResult, context
from templatefix.shapes import error_probes
from templatefix.template import ChatTemplate
from templatefix.tokens import check_token_masks
from templatefix.words import check_words

if TYPE_CHECKING:
    from templatefix.conversation import Probe

ALTERNATIVES = (
    "honest alternatives: train the last assistant message only (--turns last_message), "
    "or split the conversation "
    "into one example per assistant turn, each training only its final turn (exact for any template)"
)


def default_probes(template: ChatTemplate | str) -> list[Probe]:
    """The probe battery for ``template`` (SPEC §4): ``templatefix.probes.probe_battery``."""
    return list(probe_battery(template))


def error_probe_results(
    template: str, original: str, names: set[str], special_tokens: Mapping[str, Any] | None = None
) -> list[ProbeResult]:
    """SPEC rule 1 on the conversations that make many templates raise
    (``templatefix.shapes.error_probes``: assistant content as parts, a tool call without a
    ``content`` key), except those named in ``names``: on every render of :func:`render_points`
    the patched template renders the original's text or raises its exception type
    (:func:`error_parity`). Spans are judged on the battery, not here.
    """
    results = []
    for probe in error_probes():
        if probe.name in names:
            continue
        problems = error_parity(template, original, probe, special_tokens)
        full = _outcome(original, probe, len(probe.messages), False, special_tokens)
        if problems:
            result = ProbeResult(name=probe.name, status="failed", reason="SPEC rule 1 with errors")
            result.render_problems.extend(problems)
        elif isinstance(full, RenderError):
            reason = f"original rejects it: {full}; the patched template raises the same"
            result = ProbeResult(name=probe.name, status="skipped", reason=reason)
        else:
            reason = "rule 1 only: the same text on every prefix, with and without the generation prompt"
            result = ProbeResult(name=probe.name, status="passed", reason=reason)
        results.append(result)
    return results


@frozen_clock()  # every render of one check sees one moment for strftime_now
def verify(
    template: ChatTemplate | str,
    original: ChatTemplate | str | None = None,
    *,
    policy: Policy | None = None,
    probes: Sequence[Probe] | None = None,
    special_tokens: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    name: str = "template",
    error_checks: bool | None = None,
) -> Report:
    """Verify ``template`` (with markers) against ``original`` (without) on every probe.

    Args:
        template: the patched template.
        original: the template it was made from; ``None`` means ``template`` itself.
        policy: what should be trained (SPEC §6); default ``Policy()``.
        probes: probe conversations (objects with ``name``, ``messages``, ``kwargs``); default
            ``templatefix.probes.probe_battery(original or template)``.
        special_tokens: template variables for the special tokens (``bos_token``…).
        tokenizer: a real fast tokenizer: SPEC §5 is checked through ``templatefix.tokens``.
        name: what to call the template in the report.
        error_checks: also check SPEC rule 1 on the conversations that make many templates raise
            (:func:`error_probe_results`); by default when ``probes`` is not given.

    Raises:
        TemplateSyntaxError: ``original`` does not compile. (A patched ``template`` that does not
            compile is reported as a failure instead.)
    """
    policy = policy or Policy()
    parsed = ChatTemplate.of(original) if original is not None else None
    original = parsed.text if parsed is not None else None
    marked = template if isinstance(template, ChatTemplate) else None
    text = template.text if isinstance(template, ChatTemplate) else template
    report = Report(template_name=name, policy=policy.to_dict(), render_compared=original is not None)
    try:
        compile_template(text)
    except TemplateSyntaxError as error:
        if original is None:
            raise
        report.errors.append(f"patched template does not compile: {error}")
        return report
    if not has_markers(marked.source if marked is not None else text):
        report.errors.append("no {% generation %} markers: nothing would be trained")
        return report
    reference = parsed if parsed is not None else ChatTemplate.of(template)
    token_check = check_token_masks if tokenizer is not None else None
    if tokenizer is not None and special_tokens is None:
        # apply_chat_template passes the tokenizer's special tokens; render as it does
        special_tokens = dict(tokenizer.special_tokens_map)
    probe_list = list(probes) if probes is not None else policy_probes(default_probes(reference), policy)
    for probe in probe_list:
        result = _verify_probe(text, original, reference, probe, policy, special_tokens)
        if token_check is not None and result.status == "passed":
            _check_tokens(result, token_check, text, tokenizer, probe, reference, policy, special_tokens)
        report.probes.append(result)
        report.flags.extend(_flags(result))
    if original is not None and (error_checks or (error_checks is None and probes is None)):
        names = {probe.name for probe in probe_list}
        report.probes.extend(error_probe_results(text, original, names, special_tokens))
    report.coverage = measure(reference, probe_list, special_tokens)
    return report


def _verify_probe(
    template: str,
    original: str | None,
    reference: ChatTemplate,
    probe: Any,
    policy: Policy,
    special_tokens: Mapping[str, Any] | None,
) -> ProbeResult:
    try:
        expectation = expected_turns(reference, probe, policy, special_tokens)
    except RenderLimitExceeded:
        raise  # a bound, not a rejection: the caller must hear about it
    except RenderError as error:  # TemplateRejected included: the original refuses it
        return _rejected_probe(template, original, probe, special_tokens, error)
    result = ProbeResult(name=probe.name, status="passed")
    if original is not None:
        result.render_problems = _compare_renders(template, probe, expectation, special_tokens)
    try:
        text, raw_spans = remembered_render_with_spans(
            template, probe.messages, probe.kwargs, False, special_tokens
        )
    except RenderError as error:
        result.render_problems.append(f"patched template fails on the conversation: {error}")
        result.status = "failed"
        return result
    if text != expectation.text:
        result.status = "failed"  # already reported by rule 1; offsets would not be comparable
        return result
    _compare_spans(result, expectation, merge_spans(raw_spans))
    result.word_problems = [
        problem.describe() for problem in check_words(text, raw_spans, probe.messages, probe.kwargs, policy)
    ]
    if result.failures():
        result.status = "failed"
    return result


def _rejected_probe(
    template: str,
    original: str | None,
    probe: Any,
    special_tokens: Mapping[str, Any] | None,
    error: RenderError,
) -> ProbeResult:
    """A probe the original rejects: nothing to judge by rules 2–3, but SPEC rule 1 still holds
    for errors. On every render the oracle would make, the patched template must raise where the
    original raises, with the same exception type, and render the same text where it renders
    (:func:`error_parity`). The probe stays ``skipped`` when it does, and ``failed`` otherwise."""
    reason = f"original rejects it: {error}"
    if original is None:
        return ProbeResult(name=probe.name, status="skipped", reason=reason)
    problems = error_parity(template, original, probe, special_tokens)
    if not problems:
        reason += "; the patched template raises the same"
        return ProbeResult(name=probe.name, status="skipped", reason=reason)
    result = ProbeResult(name=probe.name, status="failed", reason=reason)
    result.render_problems.extend(problems)
    return result


def render_points(probe: Any) -> list[tuple[int, bool]]:
    """The renders of a probe that the oracle makes: the whole conversation, and for every
    assistant message at index i the prompt ``(i, True)`` and the conversation up to it
    ``(i + 1, False)``."""
    messages = list(probe.messages)
    points = {(len(messages), False)}
    for index, message in enumerate(messages):
        if message.get("role") == "assistant":
            points.update({(index, True), (index + 1, False)})
    return sorted(points)


def error_parity(
    template: str, original: str, probe: Any, special_tokens: Mapping[str, Any] | None = None
) -> list[str]:
    """SPEC rule 1 with errors, on every render of :func:`render_points`: where ``original`` raises,
    ``template`` raises the same exception type; where it renders, ``template`` renders the same
    text. Returns one problem per render where they part (none: they agree).

    Raises:
        RenderLimitExceeded: a render hit a bound (a bound is not an answer).
    """
    problems = []
    for count, prompt in render_points(probe):
        where = f"messages[:{count}], add_generation_prompt={prompt}"
        before = _outcome(original, probe, count, prompt, special_tokens)
        after = _outcome(template, probe, count, prompt, special_tokens)
        if before == after:
            continue
        if isinstance(before, RenderError) and isinstance(after, RenderError):
            if before.exception_type == after.exception_type:
                continue
            problems.append(
                f"{where}: the original raises {before.exception_type} but the patched template raises "
                f"{after.exception_type}: {after}"
            )
        elif isinstance(before, RenderError):
            problems.append(
                f"{where}: the original raises ({before}) but the patched template renders "
                f"{len(str(after))} characters"
            )
        elif isinstance(after, RenderError):
            problems.append(f"{where}: patched template fails where the original renders: {after}")
        else:
            offset = _first_difference(after, before)
            problems.append(
                f"{where}: differs from the original at offset {offset}: "
                f"patched …{context(after, offset)}… original …{context(before, offset)}…"
            )
    return problems


def _outcome(
    template: str, probe: Any, count: int, prompt: bool, special_tokens: Mapping[str, Any] | None
) -> str | RenderError:
    """The text of one render, or the error it raised (a bound hit is raised, not returned)."""
    try:
        return remembered_render(template, probe.messages[:count], probe.kwargs, prompt, special_tokens)
    except RenderLimitExceeded:
        raise
    except RenderError as error:
        return error


def _compare_renders(
    template: str, probe: Any, expectation: ProbeExpectation, special_tokens: Mapping[str, Any] | None
) -> list[str]:
    """SPEC rule 1 on every render the oracle made."""
    problems = []
    for (count, prompt), expected_text in sorted(expectation.renders.items()):
        where = f"messages[:{count}], add_generation_prompt={prompt}"
        try:
            text = remembered_render(template, probe.messages[:count], probe.kwargs, prompt, special_tokens)
        except RenderError as error:
            problems.append(f"{where}: patched template fails where the original renders: {error}")
            continue
        if text != expected_text:
            offset = _first_difference(text, expected_text)
            problems.append(
                f"{where}: differs from the original at offset {offset}: "
                f"patched …{context(text, offset)}… original …{context(expected_text, offset)}…"
            )
    return problems


def _first_difference(a: str, b: str) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def _compare_spans(result: ProbeResult, expectation: ProbeExpectation, actual: list[Span]) -> None:
    """SPEC rules 2–3: expected spans (merged like actual ones) must each equal one actual span."""
    text = expectation.text
    expected_merged = merge_spans(expectation.spans)
    actual_set = set(actual)
    explained: set[Span] = set()
    for turn in expectation.turns:
        turn_result = _judge_turn(turn, text, expected_merged, actual, actual_set)
        explained.update(s for s in actual if _overlaps(s, _turn_region(turn)))
        result.turns.append(turn_result)
    for span in actual:
        if span in expected_merged or span in explained:
            continue
        result.stray_spans.append(
            f"span {span[0]}..{span[1]} belongs to no assistant turn "
            f"(…{context(text, span[0])}… to …{context(text, span[1])}…)"
        )


def _turn_region(turn: TurnExpectation) -> Span:
    """The stretch of the render a turn's span may touch: its own expected range, widened to the
    whole turn output (reasoning included) so that spans on untrained parts are attributed, and
    to every piece of a turn in several pieces (what lies between them included)."""
    starts = [turn.start, turn.end_out] + [start for start, _ in turn.spans]
    ends = [turn.end_in, turn.end_out] + [end for _, end in turn.spans]
    return (min(starts), max(ends))


def _overlaps(a: Span, b: Span) -> bool:
    """Whether span ``a`` shares a character with ``b`` (an empty ``b`` counts as its position)."""
    if b[1] == b[0]:
        return a[0] <= b[0] < a[1]
    return a[0] < b[1] and b[0] < a[1]


def _judge_turn(
    turn: TurnExpectation, text: str, expected_merged: list[Span], actual: list[Span], actual_set: set[Span]
) -> TurnResult:
    result = TurnResult(
        message_index=turn.message_index, kind=turn.kind, verdict="wrong", trained=turn.trained,
        expected=turn.span, end_of_turn=turn.end_of_turn, note=turn.note,
    )
    region = _turn_region(turn)
    touching = [span for span in actual if _overlaps(span, region)]
    if not turn.single:
        return _judge_pieces(turn, text, expected_merged, touching, result)
    if not turn.trained:
        if touching:
            result.actual = touching[0]
            result.problems.append(
                f"not trained by the policy but has span {touching[0][0]}..{touching[0][1]} "
                f"(…{context(text, touching[0][0])}…)"
            )
        else:
            result.verdict = "untrained"
        return result

    if turn.blank and all(turn.start <= span[0] and span[1] <= turn.end_in for span in touching):
        result.verdict = turn.kind  # only whitespace was generated: nothing is owed (SPEC §2)
        result.actual = touching[0] if touching else None
        return result
    target = next(
        (s for s in expected_merged if s[0] <= turn.start and turn.end <= s[1]), (turn.start, turn.end)
    )
    if target[0] == target[1] and not touching:
        result.verdict = turn.kind  # the turn produced nothing, and nothing is marked
        return result
    actual_span = target if target in actual_set else (touching[0] if touching else None)
    result.actual = actual_span
    if turn.end_of_turn_range is not None and actual_span is not None:
        low, high = turn.end_of_turn_range
        result.end_of_turn_inside = actual_span[0] <= low and high <= actual_span[1]
    elif actual_span is None:
        result.end_of_turn_inside = False if turn.end_of_turn_range else None
    if actual_span == target and len(touching) <= 1:
        result.verdict = turn.kind
        return result
    if (
        turn.open_end
        and actual_span is not None
        and len(touching) <= 1
        and actual_span[0] == target[0]
        and target[1] == turn.end
        and actual_span[1] in (turn.end_out, turn.end_in)
    ):
        # G ends with the message's own words and their whitespace, no end-of-turn token: that
        # whitespace is allowed in or out, all of it or none (SPEC §2); the policy says which the
        # patcher aims for.
        result.verdict = turn.kind
        return result

    if actual_span is None:
        result.problems.append(
            f"{turn.kind} turn has no span; expected {target[0]}..{target[1]} "
            f"(…{context(text, target[0])}… to …{context(text, target[1])}…)"
        )
        return result
    if len(touching) > 1:
        pieces = ", ".join(f"{s[0]}..{s[1]}" for s in touching)
        expected = f"{target[0]}..{target[1]}"
        result.problems.append(f"{turn.kind} turn is split into spans {pieces}; expected {expected}")
    edges: tuple[tuple[Literal["start", "end"], int, int], ...] = (
        ("start", target[0], actual_span[0]),
        ("end", target[1], (touching[-1] if touching else actual_span)[1]),
    )
    for edge, expected_at, actual_at in edges:
        if expected_at == actual_at:
            continue
        diff = EdgeDiff(
            edge=edge, expected=expected_at, actual=actual_at,
            expected_context=context(text, expected_at), actual_context=context(text, actual_at),
            note=_edge_note(edge, expected_at, actual_at, text, turn),
        )
        result.edges.append(diff)
        result.problems.append(f"{turn.kind} turn: span {diff.describe()}")
    if result.end_of_turn_inside is False and turn.end_of_turn:
        result.problems.append(f"end-of-turn text {turn.end_of_turn!r} is outside the span")
    return result


def _judge_pieces(
    turn: TurnExpectation, text: str, expected_merged: list[Span], touching: list[Span], result: TurnResult
) -> TurnResult:
    """A turn whose span is several pieces, or none although the policy trains the message: the
    spans in the turn's stretch must be exactly the expected ones there (its pieces, merged with
    the neighbours' spans they touch)."""
    region = _turn_region(turn)
    expected = [span for span in expected_merged if _overlaps(span, region)]
    result.expected = (expected[0][0], expected[-1][1]) if expected else None
    result.actual = (touching[0][0], touching[-1][1]) if touching else None
    if turn.end_of_turn_range is not None:
        low, high = turn.end_of_turn_range
        result.end_of_turn_inside = any(s <= low and high <= e for s, e in touching)
    if touching == expected:
        result.verdict = turn.kind if expected else "untrained"
        return result

    def show(spans: list[Span]) -> str:
        return ", ".join(f"{s}..{e} {text[s:e]!r}" for s, e in spans) or "none"

    result.problems.append(f"{turn.kind} turn: spans {show(touching)}; expected {show(expected)}")
    return result


def _edge_note(edge: str, expected: int, actual: int, text: str, turn: TurnExpectation) -> str:
    """Say in words what an edge difference includes or leaves out."""
    low, high = sorted((expected, actual))
    piece = text[low:high]
    shown = piece if len(piece) <= 40 else piece[:18] + "…" + piece[-18:]
    if edge == "start":
        what = "the header/prompt" if actual < expected else "generated text"
        verb = "includes" if actual < expected else "leaves out"
    else:
        after_end = actual > expected
        verb = "includes" if after_end else "leaves out"
        if after_end:
            what = (
                "whitespace after the end-of-turn text (allowed with --trailing-whitespace in)"
                if piece.isspace() and turn.end_in >= actual
                else "text after the turn"
            )
        else:
            what = "trailing whitespace" if piece.isspace() else "the end of the turn"
    return f"span {verb} {what} {shown!r}"


def _flags(result: ProbeResult) -> list[str]:
    flags = []
    for turn in result.turns:
        if turn.verdict == "rewritten":
            flags.append(
                f"{result.name}: message {turn.message_index} is rewritten in history: training on it "
                f"teaches text the model never produced; {ALTERNATIVES}"
            )
        elif turn.verdict == "mismatch":
            flags.append(
                f"{result.name}: message {turn.message_index}: the generation prompt disagrees with the "
                f"template's own render of this turn, so no span can be exact; {ALTERNATIVES}"
            )
    return flags


def _check_tokens(
    result: ProbeResult,
    check: Any,
    template: str,
    tokenizer: Any,
    probe: Any,
    reference: ChatTemplate,
    policy: Policy,
    special_tokens: Mapping[str, Any] | None,
) -> None:
    expectation = expected_turns(reference, probe, policy, special_tokens)
    issues = check(template, tokenizer, probe, expectation.turns)
    result.token_problems.extend(str(issue) for issue in issues or ())
    if result.token_problems:
        result.status = "failed"
