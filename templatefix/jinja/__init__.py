"""Rendering untrusted templates safely: the bounds on every render, time and output size.

Chat templates are untrusted code from the Hub. jinja2's ``ImmutableSandboxedEnvironment`` (the
one transformers uses) stops them from touching Python internals or mutating their inputs, but not
from looping for hours or building a 10 GB string. This package bounds both:

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

Limits come from, in order: ``bounds.configured(...)``, the environment variables
``TEMPLATEFIX_MAX_RENDER_SECONDS`` / ``TEMPLATEFIX_MAX_OUTPUT_CHARS``, and the defaults.

- ``bounds``: the limits in force (``Limits``, ``current``, ``configured``);
- ``guard``: one bounded render (``guard``, ``render_template``) and the checks its hooks call
  (``check_size``, ``check_time``, ``count_output``);
- ``watchdog``: the thread that stops loops that reach no hook;
- ``sandbox``: the hooks installed on the sandbox environment (``install``);
- ``markers``: the ``{% generation %}`` markers in a template's tokens.

Example:
    >>> from templatefix.jinja import bounds
    >>> from templatefix.render import render
    >>> with bounds.configured(max_output_chars=100):
    ...     render("{{ 'a' * 10**10 }}", [])
    Traceback (most recent call last):
    ...
    templatefix.errors.RenderLimitExceeded: render stopped: an expression would build 10000000000 \
characters, over the limit of 100 (TEMPLATEFIX_MAX_OUTPUT_CHARS)
"""
