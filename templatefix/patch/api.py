"""The patcher's entry points: exact ``{% generation %}`` markers on any chat template.

How the assistant output is found (no family knowledge, no regex on the source):

1. Parse the template into a lossless source model (``templatefix.source``).
2. Observe (``templatefix.patch.observe``): render the probe conversations through the
   instrumented template (``templatefix.trace``); every top-level output (literal text,
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

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from templatefix.errors import PatchFailure, RenderError, RenderLimitExceeded
from templatefix.jinja.markers import has_markers
from templatefix.oracle import remembering
from templatefix.patch.label import resolve_units
from templatefix.patch.observe import marks_after_prompt_text, observe
from templatefix.patch.strip import strip_generation_markers
from templatefix.patch.writer import write
from templatefix.policy import Policy
from templatefix.source import TemplateSource
from templatefix.trace import instrumented_for


@dataclass
class PatchResult:
    """What ``patch_template`` returns.

    Attributes:
        original: the input template, byte for byte.
        patched: the patched template (equal to ``original`` when nothing could be done).
        verified: the verifier's verdict on ``patched`` against SPEC.md (never assumed): every
            probe passes rules 1–3 and the probes reached every output that writes text.
        passed: every probe passes rules 1–3 (``verified`` also asks for full coverage).
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
    passed: bool | None = None  # None: same as ``verified`` (a result built without a report)

    def __post_init__(self) -> None:
        if self.passed is None:
            self.passed = self.verified

    @property
    def status(self) -> str:
        """``exact``, ``flagged`` (verified, with rewritten/mismatch turns), ``unverified-code``
        (every probe passes, but some outputs no probe reached) or ``refused``."""
        if not self.passed:
            return "refused"
        if not self.verified:
            return "unverified-code"
        return "flagged" if self.flags else "exact"

    @property
    def unverified_code(self) -> list[str]:
        """The outputs no probe reached, ``line N: expression`` (empty at full coverage)."""
        return self.report.unverified_code() if hasattr(self.report, "unverified_code") else []

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "verified": self.verified,
            "passed": self.passed,
            "unverified_code": self.unverified_code,
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



def patch_template(
    template: str,
    *,
    policy: Policy | None = None,
    probes: Sequence[Any] | None = None,
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
    if keep_history:
        from templatefix.patch.variants import patch_keep_history

        return patch_keep_history(
            template, policy=policy, probes=probes, special_tokens=special_tokens, **policy_kwargs
        )
    with remembering():  # the patcher and the verifier ask the oracle about the same probes
        return _patch_template(template, policy, probes, special_tokens, policy_kwargs)


def _patch_template(
    template: str,
    policy: Policy | None,
    probes: Sequence[Any] | None,
    special_tokens: Mapping[str, Any] | None,
    policy_kwargs: Mapping[str, Any],
) -> PatchResult:
    from templatefix.probes import policy_probes, probe_battery
    from templatefix.verify import verify

    policy = policy or Policy.from_kwargs(**policy_kwargs)
    TemplateSource.parse(template)  # syntax errors surface here, with line and column
    unmarked = strip_generation_markers(template) if has_markers(template) else template
    probe_list = list(probes) if probes is not None else policy_probes(probe_battery(unmarked), policy)

    def finish(patched: str, reasons: list[str]) -> PatchResult:
        report = verify(
            patched, original=template, policy=policy, probes=probe_list, special_tokens=special_tokens
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

    if unmarked is not template:
        as_is = finish(template, [])
        if as_is.passed:
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
    template: str,
    probes: Sequence[Any],
    policy: Policy,
    special_tokens: Mapping[str, Any] | None = None,
) -> str:
    """Return ``template`` with generation markers placed from the probes' behaviour.

    Raises:
        PatchFailure: some boundary cannot be expressed in the template's structure, or the
            probes show no assistant output to mark.
        InternalDisagreement: the instrumented trace disagrees with the plain render.
    """
    source = TemplateSource.parse(template)
    instrumented = instrumented_for(source)
    seen = observe(template, instrumented, probes, policy, special_tokens)
    if not seen.samples:
        raise PatchFailure("the template rejects every probe conversation, so nothing can be checked")
    if not seen.saw_turn:
        raise PatchFailure("no probe conversation renders an assistant turn")
    if not seen.saw_assistant_text:
        raise PatchFailure("the template never renders what the assistant says: no assistant output to mark")
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
