"""The bounds every render gets: how long it may run and how much it may output.

Limits come from, in order: ``configured(...)``, the environment variables
``TEMPLATEFIX_MAX_RENDER_SECONDS`` / ``TEMPLATEFIX_MAX_OUTPUT_CHARS``, and the defaults below.
``templatefix.jinja.guard`` enforces them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from templatefix.errors import RenderLimitExceeded

SECONDS_ENV = "TEMPLATEFIX_MAX_RENDER_SECONDS"
OUTPUT_ENV = "TEMPLATEFIX_MAX_OUTPUT_CHARS"

#: Generous for real templates (a corpus render takes milliseconds and a few KB), small enough
#: that a hostile one is stopped long before it hurts.
DEFAULT_MAX_SECONDS = 10.0
DEFAULT_MAX_OUTPUT_CHARS = 10_000_000


@dataclass(frozen=True)
class Limits:
    """Bounds for one render.

    Example:
        >>> Limits(max_seconds=2, max_output_chars=1000).max_output_chars
        1000
    """

    max_seconds: float = DEFAULT_MAX_SECONDS
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS

    def __post_init__(self) -> None:
        if not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds!r}")
        if not self.max_output_chars > 0:
            raise ValueError(f"max_output_chars must be positive, got {self.max_output_chars!r}")


_override = threading.local()  # .stack: list[Limits] set by configured()


def _from_env(name: str, cast: Callable[[str], Any], default: Any) -> Any:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        parsed = cast(value)
    except ValueError:
        raise RenderLimitExceeded(f"{name}={value!r} is not a number") from None
    if not parsed > 0:
        raise RenderLimitExceeded(f"{name}={value!r} must be positive")
    return parsed


def current() -> Limits:
    """The limits in force: innermost ``configured(...)``, else the environment, else defaults.

    Example:
        >>> with configured(max_seconds=3):
        ...     current().max_seconds
        3
    """
    stack = getattr(_override, "stack", None)
    if stack:
        return stack[-1]
    return Limits(
        max_seconds=_from_env(SECONDS_ENV, float, DEFAULT_MAX_SECONDS),
        max_output_chars=_from_env(OUTPUT_ENV, int, DEFAULT_MAX_OUTPUT_CHARS),
    )


@contextmanager
def configured(*, max_seconds: float | None = None, max_output_chars: int | None = None) -> Iterator[Limits]:
    """Use these limits for renders in this thread inside the block (unset fields keep theirs).

    Example:
        >>> with configured(max_output_chars=50) as limits:
        ...     limits.max_output_chars
        50
    """
    base = current()
    changes: dict[str, Any] = {}
    if max_seconds is not None:
        changes["max_seconds"] = max_seconds
    if max_output_chars is not None:
        changes["max_output_chars"] = max_output_chars
    limits = replace(base, **changes)
    stack = getattr(_override, "stack", None)
    if stack is None:
        stack = _override.stack = []
    stack.append(limits)
    try:
        yield limits
    finally:
        stack.pop()
