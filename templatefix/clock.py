"""One clock for every render of one patch or one check.

transformers gives templates ``strftime_now(format)``, which formats ``datetime.now()``. A
template that prints the time (``strftime_now('%H:%M:%S.%f')``, or Llama 3.x's
``strftime_now('%d %b %Y')`` at midnight) renders differently from one call to the next, so
the original, the instrumented trace, the patched template and the verifier would see different
texts. Inside :func:`frozen_clock` every render made through ``templatefix.render`` (and every
``apply_chat_template`` call made inside :func:`transformers_clock`) sees one pinned moment;
outside it, ``strftime_now`` reads the real clock, as transformers' does.

Example:
    >>> from templatefix.render import render
    >>> with frozen_clock(datetime(2026, 1, 2, 3, 4, 5, 678901)):
    ...     render("{{ strftime_now('%d %b %Y %H:%M:%S.%f') }}", [])
    '02 Jan 2026 03:04:05.678901'
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime

import jinja2

_FROZEN: ContextVar[datetime | None] = ContextVar("templatefix_clock", default=None)


@contextmanager
def frozen_clock(at: datetime | None = None) -> Iterator[datetime]:
    """Pin ``strftime_now`` to one moment until the block ends; yields that moment.

    ``at`` defaults to now. Inside an outer frozen clock (a patch whose verifier runs inside
    it), the outer moment is kept unless ``at`` is given.
    """
    outer = _FROZEN.get()
    moment = at if at is not None else (outer if outer is not None else datetime.now())
    token = _FROZEN.set(moment)
    try:
        yield moment
    finally:
        _FROZEN.reset(token)


def now() -> datetime:
    """The pinned moment inside :func:`frozen_clock`, else the real time."""
    moment = _FROZEN.get()
    return moment if moment is not None else datetime.now()


def strftime_now(format: str) -> str:
    """transformers' ``strftime_now`` (``datetime.now().strftime(format)``) on :func:`now`."""
    return now().strftime(format)


@contextmanager
def transformers_clock() -> Iterator[None]:
    """transformers' own renders (``apply_chat_template``) see the pinned moment in the block.

    Nothing changes outside :func:`frozen_clock`. (A function cannot be passed as a template
    variable: ``apply_chat_template`` turns non-JSON values into placeholder strings.)
    """
    from templatefix.environment import pinned_clock

    with pinned_clock(_FROZEN.get()):
        yield


def install(environment: jinja2.Environment) -> jinja2.Environment:
    """Make ``environment``'s ``strftime_now`` read :func:`now`; returns it.

    Raises:
        TypeError: the environment has no ``strftime_now`` global to replace.
    """
    if "strftime_now" not in environment.globals:
        raise TypeError("the chat-template environment has no strftime_now")
    environment.globals["strftime_now"] = strftime_now
    return environment
