"""The active guard: one bounded render's deadline and output count, checked by the hooks.

``guard()`` bounds everything rendered in its block; the sandbox hooks (``templatefix.jinja.sandbox``)
and ``render_template`` report to it through ``check_time``, ``count_output`` and ``check_size``;
the watchdog (``templatefix.jinja.watchdog``) stops code that reaches no hook.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import jinja2

from templatefix.errors import RenderLimitExceeded
from templatefix.jinja.bounds import OUTPUT_ENV, SECONDS_ENV, Limits, current
from templatefix.jinja.watchdog import Deadline, watchdog


class Guard:
    """State of one bounded render: its deadline and how much it has output."""

    __slots__ = ("deadline", "limits", "output", "fired", "thread_id")

    def __init__(self, limits: Limits, deadline: float) -> None:
        self.limits = limits
        self.deadline = deadline
        self.output = 0
        self.fired = False
        self.thread_id = threading.get_ident()


_active = threading.local()  # .guard: Guard | None


def active_guard() -> Guard | None:
    return getattr(_active, "guard", None)


def too_slow(guard: Guard) -> RenderLimitExceeded:
    return RenderLimitExceeded(
        f"render stopped: it ran longer than {guard.limits.max_seconds:g} s ({SECONDS_ENV})"
    )


def too_big(guard: Guard, size: int, what: str) -> RenderLimitExceeded:
    return RenderLimitExceeded(
        f"render stopped: {what} {size} characters, over the limit of "
        f"{guard.limits.max_output_chars} ({OUTPUT_ENV})"
    )


def check_time() -> None:
    """Raise ``RenderLimitExceeded`` when the active guard's deadline has passed (else nothing)."""
    guard = active_guard()
    if guard is not None and time.monotonic() > guard.deadline:
        raise too_slow(guard)


def count_output(chars: int) -> None:
    """Add ``chars`` yielded characters to the active guard; raise past either limit."""
    guard = active_guard()
    if guard is None:
        return
    guard.output += chars
    if guard.output > guard.limits.max_output_chars:
        raise too_big(guard, guard.output, "the output reached")
    if time.monotonic() > guard.deadline:
        raise too_slow(guard)


def check_size(size: int, what: str = "an expression would build") -> None:
    """Raise when one value of ``size`` characters/items would exceed the output limit."""
    guard = active_guard()
    if guard is not None and size > guard.limits.max_output_chars:
        raise too_big(guard, size, what)


@contextmanager
def guard(limits: Limits | None = None) -> Iterator[Limits]:
    """Bound everything rendered in this thread inside the block.

    Nested guards keep the earlier deadline, so an outer bound still holds. Anything compiled
    from ``templatefix.render.environment()`` is covered; so the instrumented template's renders
    (``templatefix.analysis.hooks``) go through ``render_template``, which opens one.

    Raises:
        RenderLimitExceeded: the block ran out of time or produced too much.

    Example:
        >>> from templatefix.render import environment
        >>> with guard(Limits(max_seconds=1)):
        ...     environment().from_string("{{ 1 + 1 }}").render()
        '2'
    """
    limits = limits or current()
    outer = active_guard()
    deadline = time.monotonic() + limits.max_seconds
    if outer is not None and outer.deadline < deadline:
        deadline = outer.deadline  # the outer bound still holds; errors then name its limit
        limits = replace(limits, max_seconds=outer.limits.max_seconds)
    state = Guard(limits, deadline)
    _active.guard = state
    watchdog.watch(state)
    try:
        yield limits
    except Deadline:  # from the watchdog: give it the limit's value
        raise too_slow(state) from None
    except RecursionError:
        raise RenderLimitExceeded("render stopped: recursion deeper than Python allows") from None
    finally:
        _active.guard = outer
        watchdog.unwatch(state)
    if state.fired:  # the deadline hit just as the block finished: the result is not trusted
        raise too_slow(state)


def render_template(template: jinja2.Template, /, **variables: Any) -> str:
    """``template.render(**variables)``, bounded: same text, output counted block by block.

    For templates compiled from ``templatefix.render.environment()`` (the instrumented
    template of ``templatefix.analysis``): ``render`` is ``"".join(generate(...))``, so the text is identical.

    Example:
        >>> from templatefix.render import environment
        >>> render_template(environment().from_string("{{ a }}{{ a }}"), a="x")
        'xx'
    """
    with guard():
        blocks: list[str] = []
        for block in template.generate(**variables):
            blocks.append(block)
            count_output(len(block))
        return "".join(blocks)
