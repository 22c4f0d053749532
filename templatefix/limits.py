"""Bounds on every render: time and output size.

Chat templates are untrusted code from the Hub. jinja2's ``ImmutableSandboxedEnvironment`` (the
one transformers uses) stops them from touching Python internals or mutating their inputs, but not
from looping for hours or building a 10 GB string. This module bounds both:

- **output size**: characters yielded by the render are counted block by block, and the operators
  and calls that can create a huge value inside one expression (``*``, ``**``, ``+``, ``~``, ``%``,
  ``str.ljust``/``center``/``format``/``replace``…, filters such as ``center`` or ``indent``) are
  checked *before* they run, so the memory is never allocated;
- **time**: a deadline, checked in sandbox hooks that run often (calls, attribute lookups, operators,
  every yielded block), and, for loops that call nothing at all, by a watchdog thread that raises
  ``RenderLimitExceeded`` inside the rendering thread.

Both end in ``RenderLimitExceeded`` (a ``RenderError``) with a one-line message naming the limit
and how to raise it. The hooks never change what a template renders, and cost one thread-local
lookup when no guard is active.

Limits come from, in order: ``configured(...)``, the environment variables
``TEMPLATEFIX_MAX_RENDER_SECONDS`` / ``TEMPLATEFIX_MAX_OUTPUT_CHARS``, and the defaults.

The stages live in ``templatefix.jinja``: ``bounds`` (``Limits``, ``current``, ``configured``),
``guard`` (``guard``, ``render_template`` and the checks the hooks call), ``watchdog`` and
``sandbox`` (``install``: the hooks on the sandbox environment). This module keeps their public
names importable from ``templatefix.limits``.

Example:
    >>> from templatefix import limits
    >>> from templatefix.render import render
    >>> with limits.configured(max_output_chars=100):
    ...     render("{{ 'a' * 10**10 }}", [])
    Traceback (most recent call last):
    ...
    templatefix.errors.RenderLimitExceeded: render stopped: an expression would build 10000000000 \
characters, over the limit of 100 (TEMPLATEFIX_MAX_OUTPUT_CHARS)
"""

from __future__ import annotations

from templatefix.jinja.bounds import (
    DEFAULT_MAX_OUTPUT_CHARS,
    DEFAULT_MAX_SECONDS,
    OUTPUT_ENV,
    SECONDS_ENV,
    Limits,
    configured,
    current,
)
from templatefix.jinja.guard import check_size, check_time, count_output, guard, render_template
from templatefix.jinja.sandbox import INTERCEPTED_BINOPS, install

__all__ = [
    "DEFAULT_MAX_OUTPUT_CHARS",
    "DEFAULT_MAX_SECONDS",
    "INTERCEPTED_BINOPS",
    "OUTPUT_ENV",
    "SECONDS_ENV",
    "Limits",
    "check_size",
    "check_time",
    "configured",
    "count_output",
    "current",
    "guard",
    "install",
    "render_template",
]
