"""Rewritten history (SPEC §2-3): which trained assistant turns a template renders differently.

History checks render each assistant turn's prompt; to stay cheap the audit runs them once per
conversation *shape* (``shape_of``: roles, which fields are set, flags) and reuses the verdict for
later examples of the same shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from templatefix.errors import TemplatefixError
from templatefix.render import render


def shape_of(messages: Sequence[Mapping[str, Any]], kwargs: Mapping[str, Any]) -> tuple:
    """A conversation's shape: what decides how templates render history, not the words.

    Example:
        >>> a, b = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
        >>> shape_of(a, {}) == shape_of(b, {})
        True
    """
    parts = []
    for message in messages:
        content = message.get("content")
        keys = tuple(sorted(k for k, v in message.items() if v not in (None, "", [], {})))
        markup = isinstance(content, str) and "<" in content
        parts.append((message.get("role"), keys, type(content).__name__, markup))
    flags = tuple(
        sorted(
            (k, v if isinstance(v, (bool, int, str, type(None))) else type(v).__name__)
            for k, v in kwargs.items()
            if k != "tools"
        )
    )
    return tuple(parts), flags, "tools" in kwargs


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of ``a`` and ``b`` (by bisection on long texts)."""
    limit = min(len(a), len(b))
    if a[:limit] == b[:limit]:
        return limit
    low, high = 0, limit
    while low < high:  # largest n with a[:n] == b[:n]
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def history_verdicts(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    text: str,
    merged_spans: Sequence[tuple[int, int]],
    special_tokens: Mapping[str, Any],
    kwargs: Mapping[str, Any],
) -> list[tuple[int, str]]:
    """``(message index, "rewritten" | "mismatch")`` for each *trained* assistant turn that is not
    exact (SPEC §2-3). Turns whose prompt the template refuses are not judged."""
    assistants = [i for i, m in enumerate(messages) if m.get("role") == "assistant" and i > 0]
    prompts: dict[int, str | None] = {}
    for index in assistants:
        try:
            prompts[index] = render(
                template,
                messages[:index],
                add_generation_prompt=True,
                special_tokens=special_tokens,
                **kwargs,
            )
        except TemplatefixError:
            prompts[index] = None
    verdicts = []
    for position, index in enumerate(assistants):
        prompt = prompts[index]
        if prompt is None:
            continue
        try:
            full = (
                text
                if index == len(messages) - 1
                else render(template, messages[: index + 1], special_tokens=special_tokens, **kwargs)
            )
        except TemplatefixError:
            continue
        if not full.startswith(prompt):
            kind = "mismatch"
        elif text.startswith(prompt) and text.startswith(full[len(prompt) :], len(prompt)):
            continue  # exact
        else:
            kind = "rewritten"
        start = common_prefix(text, prompt)
        following = [later for later in (prompts[i] for i in assistants[position + 1 :]) if later is not None]
        end = common_prefix(text, following[0]) if following else len(text)
        if any(s < max(end, start + 1) and e > start for s, e in merged_spans):
            verdicts.append((index, kind))
    return verdicts
