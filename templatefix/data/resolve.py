"""The marked template to tokenize a dataset with: given, or the tokenizer's own, patched when it has
no ``{% generation %}`` markers.

Example:
    >>> resolved = resolve_template(None, tokenizer)  # doctest: +SKIP
    >>> resolved.notes  # doctest: +SKIP
    ['the template had no {% generation %} markers: patched and verified']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from templatefix.errors import NotVerifiedError, SourceError, TemplatefixError
from templatefix.policy import Policy


@dataclass
class ResolvedTemplate:
    """A template ready for masking, with what was done to it.

    Attributes:
        template: the marked template text.
        notes: what happened (e.g. patched and verified).
        warnings: what the user must know (e.g. the patch is not verified).
    """

    template: str
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def tokenizer_template(tokenizer: Any) -> str:
    """The default chat template of a tokenizer or processor.

    Raises:
        SourceError: it has none.
    """
    template = getattr(tokenizer, "chat_template", None)
    if template is None and getattr(tokenizer, "tokenizer", None) is not None:
        template = getattr(tokenizer.tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    if not isinstance(template, str) and str(folder) not in ("", ".") and folder.is_dir():
        # a processor folder keeps its template beside the tokenizer (chat_template.json/.jinja)
        from templatefix.io.sources import load_template

        try:
            template = load_template(str(folder)).text
        except SourceError:
            template = None
    if not isinstance(template, str):
        raise SourceError("the tokenizer has no chat template: pass a template")
    return template


@lru_cache(maxsize=16)
def _patched(template: str, policy: Policy) -> Any:
    """The patch of ``template`` (the same template is patched once per process)."""
    from templatefix.patch.api import patch_template

    return patch_template(template, policy=policy)


def resolve_template(
    template: str | None, tokenizer: Any, policy: Policy | None = None, *, strict: bool = False
) -> ResolvedTemplate:
    """The marked template to use: ``template`` (text), or the tokenizer's; patched with ``policy``
    when it has no markers.

    Args:
        template: template text, or ``None`` for the tokenizer's own.
        tokenizer: a tokenizer or processor (only read when ``template`` is ``None``).
        policy: what to train when patching.
        strict: raise instead of warning when the patch is not verified.

    Raises:
        TemplatefixError: the template has no markers and the patcher could not add any.
        NotVerifiedError: ``strict`` and the patch is not verified.
    """
    from templatefix.jinja.markers import has_markers

    text = tokenizer_template(tokenizer) if template is None else template
    if has_markers(text):
        return ResolvedTemplate(text)
    result = _patched(text, policy or Policy())
    if not has_markers(result.patched):
        reasons = "; ".join(result.reasons) or "no markers added"
        raise TemplatefixError(
            f"the template has no {{% generation %}} markers and patching failed ({reasons}): "
            "every mask would be empty"
        )
    if result.verified:
        return ResolvedTemplate(
            result.patched, notes=["the template had no {% generation %} markers: patched and verified"]
        )
    reasons = "; ".join(result.reasons) or "unknown reason"
    warning = f"the template had no markers; the patch is NOT verified ({reasons})"
    if strict:
        raise NotVerifiedError(warning)
    return ResolvedTemplate(result.patched, warnings=[warning])
