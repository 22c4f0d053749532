"""What a patch gives back: :class:`PatchResult`, and the diff it shows.

Example:
    >>> print(unified_diff("a\\n", "b\\n"), end="")
    --- a/chat_template.jinja
    +++ b/chat_template.jinja
    @@ -1 +1 @@
    -a
    +b
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from templatefix.policy import Policy

if TYPE_CHECKING:
    from templatefix.report import Report


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
    report: Report | None
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
        return self.report.unverified_code() if self.report is not None else []

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
            "report": self.report.to_json() if self.report is not None else None,
        }


def unified_diff(before: str, after: str, name: str = "chat_template.jinja") -> str:
    """A unified diff of two template texts (line endings kept)."""
    return "".join(
        difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{name}", f"b/{name}")
    )
