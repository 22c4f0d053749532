"""A stand-in patcher for tests of the commands around it (CLI, PRs, tokenizer patching).

``fake_patch_template`` marks ``{{ m.content }}`` of the tiny template ``TINY`` and fails templates
that say ``UNVERIFIABLE``, so a test checks what the command does with a verdict, not the patcher.
"""

from __future__ import annotations

from typing import Any

from templatefix import PatchResult
from templatefix.patch.result import unified_diff
from templatefix.policy import Policy

TINY = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
TINY_PATCHED = TINY.replace(
    "{{ m.content }}",
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}"
    "{% else %}{{ m.content }}{% endif %}",
)
UNVERIFIABLE = "{# UNVERIFIABLE #}" + TINY


def fake_patch_template(template: str, *, policy: Policy | None = None, **kwargs: Any) -> PatchResult:
    """Stands in for the patcher: marks ``{{ m.content }}``; templates saying UNVERIFIABLE fail."""
    policy = policy or Policy.from_kwargs(**kwargs)
    patched = template.replace(TINY, TINY_PATCHED)
    verified = "UNVERIFIABLE" not in template
    reasons = [] if verified else ["fake: cannot place the span of turn 1"]
    return PatchResult(
        original=template,
        patched=patched,
        verified=verified,
        report=None,
        reasons=reasons,
        diff=unified_diff(template, patched, "chat_template.jinja"),
        changed=patched != template,
        policy=policy,
    )
