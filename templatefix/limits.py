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
``TEMPLATEFIX_MAX_RENDER_SECONDS`` / ``TEMPLATEFIX_MAX_OUTPUT_CHARS``, and the defaults below.

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

import ctypes
import functools
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame

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


# -- the active guard -------------------------------------------------------------------------


class _Guard:
    """State of one bounded render: its deadline and how much it has output."""

    __slots__ = ("deadline", "limits", "output", "fired", "thread_id")

    def __init__(self, limits: Limits, deadline: float) -> None:
        self.limits = limits
        self.deadline = deadline
        self.output = 0
        self.fired = False
        self.thread_id = threading.get_ident()


_active = threading.local()  # .guard: _Guard | None


def _guard() -> _Guard | None:
    return getattr(_active, "guard", None)


class _Deadline(RenderLimitExceeded):
    """Raised by the watchdog inside the rendering thread (built without arguments there)."""

    def __init__(
        self, message: str = f"render stopped: it ran longer than its time limit ({SECONDS_ENV})"
    ) -> None:
        super().__init__(message)


def _too_slow(guard: _Guard) -> RenderLimitExceeded:
    return RenderLimitExceeded(
        f"render stopped: it ran longer than {guard.limits.max_seconds:g} s ({SECONDS_ENV})"
    )


def _too_big(guard: _Guard, size: int, what: str) -> RenderLimitExceeded:
    return RenderLimitExceeded(
        f"render stopped: {what} {size} characters, over the limit of "
        f"{guard.limits.max_output_chars} ({OUTPUT_ENV})"
    )


def check_time() -> None:
    """Raise ``RenderLimitExceeded`` when the active guard's deadline has passed (else nothing)."""
    guard = _guard()
    if guard is not None and time.monotonic() > guard.deadline:
        raise _too_slow(guard)


def count_output(chars: int) -> None:
    """Add ``chars`` yielded characters to the active guard; raise past either limit."""
    guard = _guard()
    if guard is None:
        return
    guard.output += chars
    if guard.output > guard.limits.max_output_chars:
        raise _too_big(guard, guard.output, "the output reached")
    if time.monotonic() > guard.deadline:
        raise _too_slow(guard)


def check_size(size: int, what: str = "an expression would build") -> None:
    """Raise when one value of ``size`` characters/items would exceed the output limit."""
    guard = _guard()
    if guard is not None and size > guard.limits.max_output_chars:
        raise _too_big(guard, size, what)


@contextmanager
def guard(limits: Limits | None = None) -> Iterator[Limits]:
    """Bound everything rendered in this thread inside the block.

    Nested guards keep the earlier deadline, so an outer bound still holds. Anything compiled
    from ``templatefix.render.environment()`` is covered; so ``trace.py`` wraps its
    ``template.render(...)`` in ``with limits.guard():``.

    Raises:
        RenderLimitExceeded: the block ran out of time or produced too much.

    Example:
        >>> from templatefix.render import environment
        >>> with guard(Limits(max_seconds=1)):
        ...     environment().from_string("{{ 1 + 1 }}").render()
        '2'
    """
    limits = limits or current()
    outer = _guard()
    deadline = time.monotonic() + limits.max_seconds
    if outer is not None and outer.deadline < deadline:
        deadline = outer.deadline  # the outer bound still holds; errors then name its limit
        limits = replace(limits, max_seconds=outer.limits.max_seconds)
    state = _Guard(limits, deadline)
    _active.guard = state
    _watchdog.watch(state)
    try:
        yield limits
    except _Deadline:  # from the watchdog: give it the limit's value
        raise _too_slow(state) from None
    except RecursionError:
        raise RenderLimitExceeded("render stopped: recursion deeper than Python allows") from None
    finally:
        _active.guard = outer
        _watchdog.unwatch(state)
    if state.fired:  # the deadline hit just as the block finished: the result is not trusted
        raise _too_slow(state)


def render_template(template: jinja2.Template, /, **variables: Any) -> str:
    """``template.render(**variables)``, bounded: same text, output counted block by block.

    For templates compiled from ``templatefix.render.environment()`` (trace.py's instrumented
    template): ``render`` is ``"".join(generate(...))``, so the text is identical.

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


# -- the watchdog: deadlines for code that never reaches a hook ---------------------------------


def _async_raise(thread_id: int, exception: type[BaseException] | None) -> None:
    """Raise ``exception`` in thread ``thread_id`` at its next bytecode (``None`` cancels)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception else ctypes.c_void_p(0)
    )


class _Watchdog:
    """One daemon thread that interrupts guards whose deadline passed.

    A nested ``{% for %}`` over a prepared ``range`` with an empty body calls no sandbox hook, so
    only an outside thread can stop it. It is started lazily and restarted after ``fork``
    (``audit`` uses a fork pool), since threads do not survive a fork.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # A lock held at fork time stays held in the child, and the thread is gone: start afresh.
        self._lock = threading.Condition()
        self._watched: set[_Guard] = set()
        self._thread: threading.Thread | None = None

    def watch(self, state: _Guard) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, args=(self._lock,), daemon=True, name="templatefix-watchdog"
                )
                self._thread.start()
            self._watched.add(state)
            self._lock.notify()

    def unwatch(self, state: _Guard) -> None:
        with self._lock:
            self._watched.discard(state)
            if state.fired:
                _async_raise(state.thread_id, None)  # drop it if not yet delivered

    def _run(self, lock: threading.Condition) -> None:
        while True:
            with lock:
                if lock is not self._lock:
                    return
                now = time.monotonic()
                for state in [s for s in self._watched if s.deadline <= now and not s.fired]:
                    # Still inside the guard (unwatch holds the lock), so the exception lands in it.
                    state.fired = True
                    _async_raise(state.thread_id, _Deadline)
                pending = [s.deadline for s in self._watched if not s.fired]
                lock.wait(timeout=max(0.001, min(pending) - now) if pending else None)


_watchdog = _Watchdog()


# -- hooks on the sandbox environment ---------------------------------------------------------

#: Binary operators checked before they run. ``~`` is compiled to a join, see ``_CodeGenerator``.
INTERCEPTED_BINOPS = frozenset({"*", "**", "+", "%"})

#: ``str`` methods whose integer arguments are output widths.
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
#: Filters whose integer arguments are output widths or repeat counts.
_WIDTH_FILTERS = frozenset({"center"})
_FORMAT_WIDTH = re.compile(r"%[-#0 +]*(\d+)|\{[^{}]*?(\d+)[^{}]*\}")


def _length(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


def _check_binop(guard: _Guard, op: str, left: Any, right: Any) -> None:
    limit = guard.limits.max_output_chars
    if op == "*":
        for seq, count in ((left, right), (right, left)):
            size = _length(seq)
            if size is not None and isinstance(count, int) and size * count > limit:
                check_size(size * count)
    elif op == "+":
        a, b = _length(left), _length(right)
        if a is not None and b is not None:
            check_size(a + b)
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            digits = right * math.log10(abs(left))
            if digits > limit:
                check_size(int(digits), "a power would have")
    elif op == "%" and isinstance(left, str):
        _check_format_widths(left, right)


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d+|\*)?(?:\.(\d+|\*))?")
_BRACE_SPEC = re.compile(r"\{[^{}]*:([^{}]*)\}|\{[^{}]*:[^{}]*\{")


def _check_format_widths(template: str, arguments: Any = ()) -> None:
    """Refuse ``%``/``str.format`` specs whose width or precision exceeds the output limit.

    Widths given as arguments (``%*s``, ``{:>{}}``) are checked among ``arguments``.
    """
    guard = _guard()
    if guard is None:
        return
    limit = guard.limits.max_output_chars
    dynamic = False
    for match in _PERCENT_SPEC.finditer(template):
        for number in match.groups():
            if number == "*":
                dynamic = True
            elif number and int(number) > limit:
                check_size(int(number), "a format width would build")
    for match in _BRACE_SPEC.finditer(template):
        spec = match.group(1)
        if spec is None:
            dynamic = True
            continue
        for number in re.findall(r"\d+", spec):
            if int(number) > limit:
                check_size(int(number), "a format width would build")
    if dynamic:
        values = arguments if isinstance(arguments, (tuple, list)) else (arguments,)
        for value in values:
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                check_size(value, "a format width would build")


def _check_call(guard: _Guard, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    # The sandbox hands out str.format as a wrapper; functools.update_wrapper keeps the original.
    target = getattr(obj, "__wrapped__", obj)
    owner = getattr(target, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(target, "__name__", "")
    limit = guard.limits.max_output_chars
    if name in _WIDTH_METHODS:
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and value > limit:
                check_size(value, f"str.{name} would build")
    elif name in ("format", "format_map"):
        _check_format_widths(owner, (*args, *kwargs.values()))
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _check_replace(owner, args[0], args[1])
    elif name == "join" and args and isinstance(args[0], (list, tuple)):
        items = args[0]
        size = sum(len(x) for x in items if isinstance(x, str)) + len(owner) * len(items)
        check_size(size, "str.join would build")


def _check_replace(text: str, old: str, new: str) -> None:
    if len(new) <= len(old):
        return
    count = text.count(old) if old else len(text) + 1
    check_size(len(text) + count * (len(new) - len(old)), "replace would build")


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with its width arguments and its result checked (when a guard is active)."""

    @functools.wraps(function)  # keeps jinja_pass_arg, so jinja passes the same arguments
    def bounded(*args: Any, **kwargs: Any) -> Any:
        guard = _guard()
        if guard is None:
            return function(*args, **kwargs)
        if time.monotonic() > guard.deadline:
            raise _too_slow(guard)
        limit = guard.limits.max_output_chars
        # Filters get (value, *arguments); pass_eval_context ones get the context first.
        strings = [a for a in args if isinstance(a, str)]
        if name in _WIDTH_FILTERS:
            for value in (*args[1:], *kwargs.values()):
                if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                    check_size(value, f"the {name} filter would build")
        elif name == "format" and strings:
            _check_format_widths(strings[0], args[1:])
        elif name == "indent" and strings:
            width = kwargs.get("width", args[1] if len(args) > 1 else 4)
            if isinstance(width, str):
                width = len(width)
            if isinstance(width, int):
                check_size(
                    len(strings[0]) + (strings[0].count("\n") + 1) * width, "the indent filter would build"
                )
        elif name == "replace" and len(strings) >= 3:
            _check_replace(*strings[:3])
        result = function(*args, **kwargs)
        size = _length(result)
        if size is not None and size > limit:
            check_size(size, f"the {name} filter built")
        return result

    return bounded


class _CodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to a checked join; everything else exactly as jinja2 does."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile or frame.eval_ctx.autoescape:
            super().visit_Concat(node, frame)
            return
        self.write("environment.templatefix_concat((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


def _concat(values: tuple[Any, ...]) -> str:
    """``str_join`` (what jinja2 compiles ``~`` to) with the size checked before joining."""
    guard = _guard()
    if guard is None:
        return "".join(map(str, values))
    if time.monotonic() > guard.deadline:
        raise _too_slow(guard)
    parts = [str(value) for value in values]
    check_size(sum(map(len, parts)), "a ~ concatenation would build")
    return "".join(parts)


def install(environment: jinja2.Environment) -> jinja2.Environment:
    """Install the bound hooks on a sandboxed ``environment`` (idempotent); returns it.

    Only templates compiled *after* this see the operator and ``~`` hooks (jinja2 decides at
    compile time which operators to route through ``call_binop``), which also stops jinja2 from
    constant-folding ``'a' * 10**10`` while compiling. Without an active guard every hook is a
    pass-through, so rendered text never changes.
    """
    if getattr(environment, "templatefix_limits", False):
        return environment
    if not getattr(environment, "sandboxed", False):
        raise TypeError("limits.install needs a sandboxed environment")
    sandbox_call = environment.call
    sandbox_getattr = environment.getattr
    sandbox_getitem = environment.getitem
    sandbox_binop = environment.call_binop

    def call(__context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        guard = _guard()
        if guard is not None:
            if time.monotonic() > guard.deadline:
                raise _too_slow(guard)
            _check_call(guard, __obj, args, kwargs)
        return sandbox_call(__context, __obj, *args, **kwargs)

    def getattr_(obj: Any, attribute: str) -> Any:
        guard = _guard()
        if guard is not None and time.monotonic() > guard.deadline:
            raise _too_slow(guard)
        return sandbox_getattr(obj, attribute)

    def getitem(obj: Any, argument: Any) -> Any:
        guard = _guard()
        if guard is not None and time.monotonic() > guard.deadline:
            raise _too_slow(guard)
        return sandbox_getitem(obj, argument)

    def call_binop(context: Any, op: str, left: Any, right: Any) -> Any:
        guard = _guard()
        if guard is not None:
            if time.monotonic() > guard.deadline:
                raise _too_slow(guard)
            _check_binop(guard, op, left, right)
        return sandbox_binop(context, op, left, right)

    environment.call = call  # type: ignore[method-assign]
    environment.getattr = getattr_  # type: ignore[method-assign]
    environment.getitem = getitem  # type: ignore[method-assign]
    environment.call_binop = call_binop  # type: ignore[method-assign]
    environment.intercepted_binops = INTERCEPTED_BINOPS  # type: ignore[attr-defined]
    environment.code_generator_class = _CodeGenerator
    environment.templatefix_concat = _concat  # type: ignore[attr-defined]
    for name, function in list(environment.filters.items()):
        environment.filters[name] = _bounded_filter(name, function)
    environment.templatefix_limits = True  # type: ignore[attr-defined]
    return environment
