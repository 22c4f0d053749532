"""Patch the chat template(s) of a loaded tokenizer or processor.

Example:
    >>> from transformers import AutoTokenizer
    >>> from templatefix.tokenizer_patch import patch_tokenizer
    >>> tokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-7B-Instruct")  # doctest: +SKIP
    >>> tokenizer, result = patch_tokenizer(tokenizer)  # doctest: +SKIP
    >>> result.verified  # doctest: +SKIP
    True
    >>> tokenizer.apply_chat_template(messages, return_dict=True,
    ...                               return_assistant_tokens_mask=True)["assistant_masks"]  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any, TypeVar

from templatefix.errors import NotVerifiedError, TemplatefixError
from templatefix.policy import Policy

T = TypeVar("T")


def patch_tokenizer(
    tokenizer_or_processor: T,
    *,
    policy: Policy | None = None,
    force: bool = False,
    keep_history: bool = False,
    **policy_kwargs: Any,
) -> tuple[T, Any]:
    """Set verified ``{% generation %}`` markers on ``tokenizer_or_processor.chat_template``.

    The object is changed in place and returned with the patch result(s): one ``PatchResult`` when
    ``chat_template`` is a string, a ``dict[name, PatchResult]`` when it holds named templates
    (a dict, or the legacy list of ``{"name", "template"}``). Each result keeps the original text
    in ``result.original``.

    For a processor (an object with ``.tokenizer``): its own ``chat_template`` is patched; when it
    has none, the tokenizer's is. When the tokenizer carries the same template as the processor, it
    gets the same patched text so both stay consistent.

    Args:
        tokenizer_or_processor: anything with a ``chat_template`` attribute.
        policy: a ``Policy``; or give its fields as keyword arguments (``turns="last"``...).
        force: set templates even if they could not be verified.
        keep_history: set the keep-history training variant instead (SPEC §8,
            ``patch_template(..., keep_history=True)``): for training only.

    A template that passes every probe but has outputs no probe reached (status
    ``unverified-code``) is set, with a warning naming those outputs.

    Raises:
        NotVerifiedError: a template fails verification (nothing is changed), unless ``force``.
        TemplatefixError: the object has no chat template.
    """
    policy = policy or Policy.from_kwargs(**policy_kwargs)
    owner = _owner(tokenizer_or_processor)
    current = getattr(owner, "chat_template", None)
    if current is None or (isinstance(current, (dict, list)) and not current):
        raise TemplatefixError(f"{type(tokenizer_or_processor).__name__} has no chat_template to patch")

    from templatefix.patch import api

    if isinstance(current, str):
        result = api.patch_template(current, policy=policy, keep_history=keep_history)
        _require_verified({"default": result}, force)
        _set(tokenizer_or_processor, owner, current, result.patched)
        return tokenizer_or_processor, result

    named = _named(current)
    cache: dict[str, Any] = {}
    results = {}
    for name, text in named.items():
        if text not in cache:
            cache[text] = api.patch_template(text, policy=policy, keep_history=keep_history)
        results[name] = cache[text]
    _require_verified(results, force)
    if isinstance(current, list):
        new_value: Any = [{**item, "template": results[item["name"]].patched} for item in current]
    else:
        new_value = {name: results[name].patched for name in current}
    _set(tokenizer_or_processor, owner, current, new_value)
    return tokenizer_or_processor, results


def _owner(obj: Any) -> Any:
    """The object whose ``chat_template`` is patched (a processor's own, else its tokenizer's)."""
    if getattr(obj, "chat_template", None) is None and getattr(obj, "tokenizer", None) is not None:
        return obj.tokenizer
    if not hasattr(obj, "chat_template") and not hasattr(obj, "tokenizer"):
        raise TemplatefixError(f"{type(obj).__name__} is not a tokenizer or processor (no chat_template)")
    return obj


def _named(value: Any) -> dict[str, str]:
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return dict(value)
    if isinstance(value, list) and all(
        isinstance(i, dict) and isinstance(i.get("name"), str) and isinstance(i.get("template"), str)
        for i in value
    ):
        return {item["name"]: item["template"] for item in value}
    raise TemplatefixError(f"chat_template must be a string or named templates, not {type(value).__name__}")


def _require_verified(results: dict[str, Any], force: bool) -> None:
    """Refuse templates that fail a probe; warn about ones with unverified code (SPEC §4)."""
    for name, result in results.items():
        if getattr(result, "passed", False) and not result.verified:
            unreached = result.unverified_code
            warnings.warn(
                f"chat template {name!r} passes every probe but is NOT verified: no probe reached "
                f"{len(unreached)} output(s) that write text (e.g. {unreached[0] if unreached else '?'}); "
                "the markers may be wrong there",
                stacklevel=3,
            )
    failed = {name: r for name, r in results.items() if not getattr(r, "passed", r.verified)}
    if failed and not force:
        name, result = next(iter(failed.items()))
        why = result.reasons[0] if result.reasons else "verification failed"
        more = f" (and {len(failed) - 1} more template(s))" if len(failed) > 1 else ""
        raise NotVerifiedError(
            f"chat template {name!r} could not be verified: {why}{more}; nothing was changed "
            "(pass force=True to set it anyway)"
        )


def _set(obj: Any, owner: Any, old: Any, new: Any) -> None:
    owner.chat_template = new
    tokenizer = getattr(obj, "tokenizer", None)
    if owner is obj and tokenizer is not None and tokenizer is not obj:
        if getattr(tokenizer, "chat_template", None) == old:
            tokenizer.chat_template = new
