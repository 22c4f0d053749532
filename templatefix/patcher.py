"""The automatic patcher (STUB: being written by the lead; interface is final)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from templatefix.policy import Policy


@dataclass
class PatchResult:
    original: str
    patched: str
    verified: bool
    report: Any
    reasons: list[str] = field(default_factory=list)
    diff: str = ""
    changed: bool = False
    policy: Policy = field(default_factory=Policy)

    def to_json(self) -> dict[str, Any]:
        return {"verified": self.verified, "changed": self.changed, "reasons": self.reasons,
                "policy": self.policy.to_dict(), "diff": self.diff}


def unified_diff(before: str, after: str, name: str = "chat_template.jinja") -> str:
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                        f"a/{name}", f"b/{name}"))


def patch_template(template: str, *, policy: Policy | None = None, **policy_kwargs: Any) -> PatchResult:
    policy = policy or Policy.from_kwargs(**policy_kwargs)
    return PatchResult(template, template, False, None, ["stub patcher"], "", False, policy)


def patch_named_templates(templates: Any, **kwargs: Any) -> dict[str, PatchResult]:
    items = templates.items() if isinstance(templates, dict) else ((t["name"], t["template"]) for t in templates)
    return {name: patch_template(text, **kwargs) for name, text in items}
