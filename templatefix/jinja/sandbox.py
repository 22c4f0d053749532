"""Hooks on the sandbox environment: the checks that stop a huge value before it is built.

The operators and calls that can create a huge value inside one expression (``*``, ``**``, ``+``,
``~``, ``%``, ``str.ljust``/``center``/``format``/``replace``…, filters such as ``center`` or
``indent``) are checked *before* they run against the active guard
(``templatefix.jinja.guard``), and the frequent hooks (calls, attribute lookups, operators) check
its deadline. Without an active guard every hook is a pass-through.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable
from typing import Any, cast

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

from templatefix.jinja.guard import Guard, active_guard, check_size, too_slow

#: Binary operators checked before they run. ``~`` is compiled to a join, see ``_CodeGenerator``.
INTERCEPTED_BINOPS = frozenset({"*", "**", "+", "%"})

#: ``str`` methods whose integer arguments are output widths.
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
#: Filters whose integer arguments are output widths or repeat counts.
_WIDTH_FILTERS = frozenset({"center"})



def _length(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


def _check_binop(guard: Guard, op: str, left: Any, right: Any) -> None:
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
    guard = active_guard()
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


def _check_call(guard: Guard, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
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
        guard = active_guard()
        if guard is None:
            return function(*args, **kwargs)
        if time.monotonic() > guard.deadline:
            raise too_slow(guard)
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


def trusted_call(name: str, arguments: list[nodes.Node]) -> nodes.Call:
    """``name(*arguments)`` for a function given to the render as a variable that the caller
    trusts (the recording hooks of ``templatefix.analysis``), compiled as a plain Python call: not
    through the sandbox's ``call`` (its safety and deadline checks) nor the context's (which
    passes no context to such a function), so it renders what an ordinary call of it renders.

    Only a rewrite of a tree makes one; no call a template's text holds is compiled this way. The
    hooks are called hundreds of thousands of times while one template is patched.
    """
    call = nodes.Call(nodes.Name(name, "load"), arguments, [], None, None)
    setattr(call, _TRUSTED, True)
    return call


_TRUSTED = "templatefix_trusted"


class _CodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to a checked join and a :func:`trusted_call` to a plain call; everything
    else exactly as jinja2 does."""

    def visit_Call(self, node: nodes.Call, frame: Frame, forward_caller: bool = False) -> None:
        if not getattr(node, _TRUSTED, False) or forward_caller or self.environment.is_async:
            super().visit_Call(node, frame, forward_caller=forward_caller)
            return
        self.write("(")
        self.visit(node.node, frame)
        self.write(")(")
        for index, argument in enumerate(node.args):
            if index:
                self.write(", ")
            self.visit(argument, frame)
        self.write(")")

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
    guard = active_guard()
    if guard is None:
        return "".join(map(str, values))
    if time.monotonic() > guard.deadline:
        raise too_slow(guard)
    parts = [str(value) for value in values]
    check_size(sum(map(len, parts)), "a ~ concatenation would build")
    return "".join(parts)


#: jinja2's own attribute checks: each answer depends on the object's type and the attribute's
#: name alone (``is_internal_attribute``, ``modifies_known_mutable``: ``isinstance`` tests and name
#: tests; the value is not read).
_TYPE_AND_NAME_CHECKS = (
    SandboxedEnvironment.is_safe_attribute,
    ImmutableSandboxedEnvironment.is_safe_attribute,
)
_SAFE_ATTRIBUTES_SIZE = 4096


def _memoise_safe_attributes(sandbox: SandboxedEnvironment) -> None:
    """Remember ``sandbox.is_safe_attribute`` per (type, attribute name) when it is one of jinja2's
    own checks (:data:`_TYPE_AND_NAME_CHECKS`), which answer from those alone; a template reads
    the same few attributes of the same few types (``message.content``, ``ns.flag``) hundreds of
    thousands of times per patch, and each check runs a dozen ``isinstance`` tests against ABCs."""
    check = getattr(type(sandbox).is_safe_attribute, "__func__", type(sandbox).is_safe_attribute)
    if check not in _TYPE_AND_NAME_CHECKS:
        return
    jinja2_check = sandbox.is_safe_attribute
    answers: dict[tuple[type, str], bool] = {}

    def is_safe_attribute(obj: Any, attr: str, value: Any) -> bool:
        key = (type(obj), attr)
        answer = answers.get(key)
        if answer is None:
            if len(answers) >= _SAFE_ATTRIBUTES_SIZE:
                answers.clear()
            answer = answers[key] = bool(jinja2_check(obj, attr, value))
        return answer

    sandbox.is_safe_attribute = is_safe_attribute  # type: ignore[method-assign]


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
    sandbox = cast("SandboxedEnvironment", environment)  # jinja2 sets ``sandboxed`` on that class only
    sandbox_call = sandbox.call
    sandbox_getattr = sandbox.getattr
    sandbox_getitem = sandbox.getitem
    sandbox_binop = sandbox.call_binop

    def call(__context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        guard = active_guard()
        if guard is not None:
            if time.monotonic() > guard.deadline:
                raise too_slow(guard)
            _check_call(guard, __obj, args, kwargs)
        return sandbox_call(__context, __obj, *args, **kwargs)

    def getattr_(obj: Any, attribute: str) -> Any:
        guard = active_guard()
        if guard is not None and time.monotonic() > guard.deadline:
            raise too_slow(guard)
        return sandbox_getattr(obj, attribute)

    def getitem(obj: Any, argument: Any) -> Any:
        guard = active_guard()
        if guard is not None and time.monotonic() > guard.deadline:
            raise too_slow(guard)
        return sandbox_getitem(obj, argument)

    def call_binop(context: Any, operator: str, left: Any, right: Any) -> Any:
        guard = active_guard()
        if guard is not None:
            if time.monotonic() > guard.deadline:
                raise too_slow(guard)
            _check_binop(guard, operator, left, right)
        return sandbox_binop(context, operator, left, right)

    _memoise_safe_attributes(sandbox)
    sandbox.call = call  # type: ignore[method-assign]
    sandbox.getattr = getattr_  # type: ignore[method-assign]
    sandbox.getitem = getitem  # type: ignore[method-assign]
    sandbox.call_binop = call_binop  # type: ignore[method-assign]
    environment.intercepted_binops = INTERCEPTED_BINOPS  # type: ignore[attr-defined]
    environment.code_generator_class = _CodeGenerator
    environment.templatefix_concat = _concat  # type: ignore[attr-defined]
    for name, function in list(environment.filters.items()):
        environment.filters[name] = _bounded_filter(name, function)
    environment.templatefix_limits = True  # type: ignore[attr-defined]
    return environment
