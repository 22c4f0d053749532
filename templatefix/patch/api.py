"""The patcher's entry points: exact ``{% generation %}`` markers on any chat template.

How the assistant output is found (no family knowledge, no regex on the source):

1. Parse the template into a lossless source model (``templatefix.source``).
2. Observe (``templatefix.patch.observe``): render the probe conversations through the
   instrumented template (``templatefix.analysis``); every top-level output (literal text,
   ``{{ expression }}``, and each operand of a ``+``/``~`` chain) reports the characters it
   produced, with the loop variables in scope. The oracle (``templatefix.oracle``) says where
   each assistant turn's span must be, so every produced character is inside or outside.
   When a first placement marks text after the last assistant turn of a prompt render (a
   conversation ending with a user or tool message), the prompt renders are observed too: that
   text is outside there, and the pieces are labelled again.
3. Label (``templatefix.patch.label``): each output unit is always inside, always outside, or
   inside under a condition (``templatefix.patch.conditions``) on the loop variables, e.g. for a
   shared ``'<|im_start|>' + role + '\\n' + content`` expression; a boundary inside a string
   literal or literal text splits it there.
4. Write (``templatefix.patch.writer``): the markers at the matching source offsets, around whole
   ``{{ }}`` tags, between operands of a split expression, or inside literal text, with a role
   branch (``{% if %}``) where a condition is needed. Whitespace control is carried over so the
   render is unchanged.
5. Verify the result with the verifier (``templatefix.verify``); ``verified`` is its verdict.

Example:
    >>> result = patch_template(open("templates/chatml.jinja").read())  # doctest: +SKIP
    >>> result.verified  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from templatefix.analysis.instrument import Instrumented
from templatefix.analysis.regions import instrumented_for
from templatefix.clock import frozen_clock
from templatefix.errors import PatchFailure, RenderError, RenderLimitExceeded
from templatefix.jinja.markers import has_markers
from templatefix.oracle import remembering
from templatefix.patch.conditions import LAST_TURN
from templatefix.patch.label import resolve_units
from templatefix.patch.observe import Observations, marks_after_prompt_text, observe
from templatefix.patch.result import PatchResult, unified_diff
from templatefix.patch.strip import strip_generation_markers
from templatefix.patch.variants import patch_keep_history
from templatefix.patch.writer import write
from templatefix.policy import Policy
from templatefix.source import TemplateSource
from templatefix.template import ChatTemplate

if TYPE_CHECKING:
    from templatefix.conversation import Probe


def patch_template(
    template: str,
    *,
    policy: Policy | None = None,
    probes: Sequence[Probe] | None = None,
    special_tokens: Mapping[str, Any] | None = None,
    keep_history: bool = False,
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
        keep_history: patch the keep-history training variant instead (SPEC §8,
            ``templatefix.patch.variants``): every assistant turn written as when it is the last
            one; the result is a ``KeepHistoryResult`` naming the rewritten tests and the proof.
            For training only: inference keeps the original.

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.

    Example:
        >>> result = patch_template(open("templates/chatml.jinja").read())  # doctest: +SKIP
        >>> print(result.diff)  # doctest: +SKIP
    """
    # The patcher and the verifier ask the oracle about the same probes, and every render of the
    # patch (original, trace, patched, verifier; a keep-history variant's proof) sees one moment
    # for ``strftime_now``.
    if keep_history:
        with frozen_clock():
            return patch_keep_history(
                template, patch_template, policy=policy, probes=probes, special_tokens=special_tokens,
                **policy_kwargs,
            )
    with remembering(), frozen_clock():
        return _patch_template(template, policy, probes, special_tokens, policy_kwargs)


def _patch_template(
    template: str,
    policy: Policy | None,
    probes: Sequence[Probe] | None,
    special_tokens: Mapping[str, Any] | None,
    policy_kwargs: Mapping[str, Any],
) -> PatchResult:
    from templatefix.probes import policy_probes, probe_battery
    from templatefix.verify import verify

    policy = policy or Policy.from_kwargs(**policy_kwargs)
    # the one parse of the original: every stage below works from it (syntax errors surface here,
    # with line and column)
    original = ChatTemplate.parse(template)
    marked = has_markers(original.source)
    unmarked = ChatTemplate.parse(strip_generation_markers(original)) if marked else original
    probe_list = list(probes) if probes is not None else policy_probes(probe_battery(unmarked), policy)

    def finish(candidate: ChatTemplate | str, reasons: list[str]) -> PatchResult:
        patched = candidate.text if isinstance(candidate, ChatTemplate) else candidate
        report = verify(
            candidate, original=original, policy=policy, probes=probe_list, special_tokens=special_tokens,
            error_checks=True,
        )
        verified = bool(report.verified)
        all_reasons = list(reasons)
        if not report.passed:
            all_reasons.extend(r for r in report.failures() if r not in all_reasons)
        elif not verified:
            unreached = report.unverified_code()
            all_reasons.append(
                f"unverified code: no probe reached {len(unreached)} output(s) that write text "
                f"(e.g. {unreached[0] if unreached else '?'}); the patch may be wrong there"
            )
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
            passed=bool(report.passed),
        )

    if marked:
        as_is = finish(original, [])
        if as_is.passed:
            return as_is
    try:
        patched = place_markers(unmarked, probe_list, policy, special_tokens)
    except RenderLimitExceeded:
        raise  # a bound was hit: say so, never pass it off as a template rejecting a probe
    except (PatchFailure, RenderError) as failure:
        result = finish(unmarked, [str(failure)])
        if marked:
            result.patched = template
            result.changed = False
            result.diff = ""
            result.verified = result.passed = False
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


def place_markers(
    template: ChatTemplate | str,
    probes: Sequence[Probe],
    policy: Policy,
    special_tokens: Mapping[str, Any] | None = None,
) -> str:
    """Return ``template`` with generation markers placed from the probes' behaviour.

    Raises:
        PatchFailure: some boundary cannot be expressed in the template's structure, or the
            probes show no assistant output to mark.
        InternalDisagreement: the instrumented trace disagrees with the plain render.
    """
    parsed = ChatTemplate.of(template)
    token = LAST_TURN.set(policy.turns == "last")
    try:
        return _place_markers(parsed, probes, policy, special_tokens)
    finally:
        LAST_TURN.reset(token)


def _place_markers(
    template: ChatTemplate, probes: Sequence[Probe], policy: Policy, special_tokens: Mapping[str, Any] | None
) -> str:
    source = template.source
    instrumented = instrumented_for(template)
    seen = observe(template, instrumented, probes, policy, special_tokens)
    if not seen.samples:
        raise PatchFailure("the template rejects every probe conversation, so nothing can be checked")
    if not seen.saw_turn:
        raise PatchFailure("no probe conversation renders an assistant turn")
    if not seen.saw_assistant_text:
        raise PatchFailure("the template never renders what the assistant says: no assistant output to mark")
    try:
        return _place(template, source, instrumented, probes, policy, special_tokens, seen)
    except PatchFailure as error:
        if not seen.open_whitespace or seen.whitespace_in:
            raise
        first = error
    # A turn that ends with the message's own words may end before or after the whitespace that
    # follows them (SPEC §2): the edge is an interval. Stopping after the last word cuts the
    # message's text at a place that depends on it ('A: ' + content + '\n\n' with content
    # ending in whitespace); the other end of the interval, after all that whitespace, is a
    # place the template's structure can hold.
    retry = Observations(whitespace_in=True)
    observe(template, instrumented, probes, policy, special_tokens, retry)
    try:
        return _place(template, source, instrumented, probes, policy, special_tokens, retry)
    except PatchFailure:
        raise first from None  # the first placement's reason says more


def _place(
    template: ChatTemplate,
    source: TemplateSource,
    instrumented: Instrumented,
    probes: Sequence[Probe],
    policy: Policy,
    special_tokens: Mapping[str, Any] | None,
    seen: Observations,
) -> str:
    units = resolve_units(instrumented, seen.records)
    if not any(unit.label in ("in", "cond") for unit in units):
        raise PatchFailure("no template output produces assistant text")
    patched = write(source, instrumented, units)
    if marks_after_prompt_text(patched, probes, special_tokens):
        # Text after the last assistant turn of a prompt render is marked (an end-of-sequence
        # token or the next header written after the loop): observe the prompt renders too, so
        # that such text is marked only when an assistant turn ends the conversation.
        observe(template, instrumented, probes, policy, special_tokens, seen, prompts=True)
        patched = write(source, instrumented, resolve_units(instrumented, seen.records))
    return patched
