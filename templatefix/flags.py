"""Flag discovery: the options a chat template reads from its caller, and the values worth probing.

A flag is a name the template reads but neither defines nor gets from transformers
(:data:`STANDARD_NAMES`), used as a scalar switch such as ``enable_thinking`` or
``reasoning_effort``. :func:`find_flags` finds them from the template's syntax tree;
``templatefix.probes`` repeats the shapes that show history rewriting under every value.
:func:`template_reads` gives every name the template reads from its context.

Example:
    >>> find_flags("{% if enable_thinking is defined and not enable_thinking %}x{% endif %}")
    {'enable_thinking': (True, False)}
    >>> sorted(template_reads("{{ messages }}{{ documents }}"))
    ['documents', 'messages']
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import meta, nodes

from templatefix.source import copy_tree
from templatefix.template import ChatTemplate

#: At most this many values probed per flag (beyond "not passed", which every base shape covers).
MAX_VALUES_PER_FLAG = 4

#: Names every chat template may read that are not flags: conversation data, the arguments
#: transformers always passes, special tokens, and the globals of its environment.
STANDARD_NAMES = frozenset(
    {
        "messages", "tools", "documents", "add_generation_prompt",
        # an apply_chat_template option that transformers handles itself, not a template switch
        "continue_final_message",
        "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
        "additional_special_tokens",
        "raise_exception", "strftime_now", "namespace", "dict", "range", "lipsum", "cycler",
        "joiner", "loop", "self", "varargs", "kwargs", "caller",
    }
)  # fmt: skip


def _folded(template: ChatTemplate) -> tuple[nodes.Template, frozenset[str]]:
    """A copy of the tree with constants folded, and the names it reads from its caller.

    jinja2's undeclared-variable search runs its compiler, which folds constant expressions into
    the tree it walks (``x in ['a', 'b']`` holds one constant list): it walks a copy, and the flag
    search reads that folded copy.
    """
    tree = copy_tree(template.ast)
    return tree, frozenset(meta.find_undeclared_variables(tree))


def template_reads(template: ChatTemplate | str) -> frozenset[str]:
    """Names ``template`` reads from its caller's context (jinja2's undeclared variables).

    Example:
        >>> sorted(template_reads("{% set x = 1 %}{{ x }}{{ documents }}"))
        ['documents']
    """
    return ChatTemplate.of(template).resolve(_folded)[1]


# --- flags -------------------------------------------------------------------------------------


@dataclass
class _Usage:
    """How a template uses one undeclared name."""

    data: bool = False  # iterated, indexed, called, or filtered as data: not an option
    boolean: bool = False  # used for truth (if/not/and/or, `is true`, compared with a bool)
    presence: bool = False  # tested with `is defined` / `is undefined` or given a `default`
    none: bool = False  # tested with `is none` / compared with none
    text: bool = False  # printed or joined into text: a free-text option, not a switch
    constants: set[Any] = field(default_factory=set)  # compared with / defaulted to these


_SCALAR_FILTERS = frozenset({"default", "d", "lower", "upper", "string", "trim", "bool", "capitalize"})
_BOOLEAN_TESTS = frozenset({"true", "false", "boolean"})
_PRESENCE_TESTS = frozenset({"defined", "undefined"})


def _children(node: nodes.Node) -> Iterator[nodes.Node]:
    return node.iter_child_nodes()


def _walk(
    node: nodes.Node, parent: nodes.Node | None = None
) -> Iterator[tuple[nodes.Node, nodes.Node | None]]:
    yield node, parent
    for child in _children(node):
        yield from _walk(child, node)


def _record_constant(usage: _Usage, value: nodes.Node) -> None:
    if isinstance(value, nodes.Const) and isinstance(value.value, (list, tuple)):  # a folded list literal
        for item in value.value:
            _record_constant(usage, nodes.Const(item))
    elif isinstance(value, nodes.Const):
        if isinstance(value.value, bool):
            usage.boolean = True
        elif value.value is None:
            usage.none = True
        elif isinstance(value.value, (str, int, float)):
            usage.constants.add(value.value)
    elif isinstance(value, (nodes.List, nodes.Tuple)):
        for item in value.items:
            _record_constant(usage, item)


def _classify(target: nodes.Node, parents: Mapping[int, nodes.Node], usage: _Usage) -> None:
    """Update ``usage`` from one read of a name (``target``), judged by the node that holds it.

    A scalar filter (``x | default(false)``, ``x | lower``) passes the judgement on to the
    filter's own holder, so ``if x | default(false)`` counts as a boolean use of ``x``.
    """
    parent = parents.get(id(target))
    if isinstance(parent, nodes.For) and parent.iter is target:
        usage.data = True
    elif isinstance(parent, (nodes.Getattr, nodes.Getitem)) and parent.node is target:
        usage.data = True
    elif isinstance(parent, nodes.Call) and parent.node is target:
        usage.data = True
    elif isinstance(parent, nodes.Filter) and parent.node is target:
        if parent.name not in _SCALAR_FILTERS:
            usage.data = True
            return
        if parent.name in ("default", "d"):
            usage.presence = True
            # A bool or none default says "switch"; a text default is just the default value.
            for argument in parent.args[:1]:
                if isinstance(argument, nodes.Const) and (
                    argument.value is None or argument.value in (True, False)
                ):
                    _record_constant(usage, argument)
        _classify(parent, parents, usage)
    elif isinstance(parent, nodes.Test) and parent.node is target:
        if parent.name in _BOOLEAN_TESTS:
            usage.boolean = True
        elif parent.name in _PRESENCE_TESTS:
            usage.presence = True
        elif parent.name == "none":
            usage.none = True
        elif parent.name in ("eq", "equalto", "sameas", "==") and parent.args:
            _record_constant(usage, parent.args[0])
    elif isinstance(parent, (nodes.Compare, nodes.Operand)):
        compare = parent if isinstance(parent, nodes.Compare) else parents.get(id(parent))
        if isinstance(compare, nodes.Compare):
            for other in [compare.expr, *(operand.expr for operand in compare.ops)]:
                if other is not target:
                    _record_constant(usage, other)
    elif isinstance(parent, (nodes.If, nodes.CondExpr)) and parent.test is target:
        usage.boolean = True
    elif isinstance(parent, (nodes.Not, nodes.And, nodes.Or)):
        usage.boolean = True
    elif isinstance(parent, (nodes.Output, nodes.Concat, nodes.Add, nodes.Mod)):
        usage.text = True
    elif isinstance(parent, nodes.Assign) and parent.node is target and isinstance(target, nodes.Name):
        stored = [name.name for name in _assigned_names(parent.target)]
        if stored != [target.name]:
            usage.data = True  # copied into a local whose uses we do not follow (tools = custom_tools)


def _assigned_names(node: nodes.Node) -> Iterator[nodes.Name]:
    """Names stored by an assignment target (a name, or a tuple of names)."""
    for target in [node, *node.find_all(nodes.Name)]:
        if isinstance(target, nodes.Name) and target.ctx in ("store", "param"):
            yield target


def _is_default_idiom(assign: nodes.Node, name: str, enclosing_tests: list[nodes.Node]) -> bool:
    """``{% if x is not defined %}{% set x = ... %}`` or ``{% set x = x | default(...) %}``."""
    value = getattr(assign, "node", None)
    conditions = [*enclosing_tests, *([value] if value is not None else [])]
    for condition in conditions:
        for check in [condition, *condition.find_all((nodes.Test, nodes.Filter))]:
            checked = getattr(check, "node", None)
            reads_name = isinstance(checked, nodes.Name) and checked.name == name
            if isinstance(check, nodes.Test) and check.name in _PRESENCE_TESTS and reads_name:
                return True
            if isinstance(check, nodes.Filter) and check.name in ("default", "d") and reads_name:
                return True
    return False


def _assignments(node: nodes.Node, tests: list[nodes.Node]) -> Iterator[tuple[str, bool]]:
    """Every name the template assigns, with whether that assignment is the default idiom."""
    if isinstance(node, (nodes.Assign, nodes.AssignBlock)):
        for target in _assigned_names(node.target):
            yield target.name, _is_default_idiom(node, target.name, tests)
    elif isinstance(node, nodes.For):
        for target in _assigned_names(node.target):
            yield target.name, False
    elif isinstance(node, (nodes.Macro, nodes.CallBlock)):
        for argument in node.args:
            yield argument.name, False
    elif isinstance(node, nodes.With):
        for bound in node.targets:
            for name in _assigned_names(bound):
                yield name.name, False
    if isinstance(node, nodes.If):
        yield from _assignments_in(node.body, [*tests, node.test])
        for branch in node.elif_:
            yield from _assignments(branch, tests)
        yield from _assignments_in(node.else_, tests)
        return
    for child in _children(node):
        yield from _assignments(child, tests)


def _assignments_in(body: list[nodes.Node], tests: list[nodes.Node]) -> Iterator[tuple[str, bool]]:
    for statement in body:
        yield from _assignments(statement, tests)


def find_flags(template: ChatTemplate | str) -> dict[str, tuple[Any, ...]]:
    """Options the template reads from its caller, with the values worth probing.

    A flag is a name the template reads but neither defines nor gets from transformers
    (:data:`STANDARD_NAMES`), used as a scalar: in a condition, tested with ``is defined``,
    ``is true``, ``is none``, compared with constants, or given a ``default``. Names the template
    iterates, indexes or calls are data, not flags; names it assigns itself are locals unless the
    assignment is the "default if not given" idiom. Values: ``True, False`` for names used as
    booleans or only tested for presence, then the constants the name is compared with, then
    ``None`` if tested for none; at most :data:`MAX_VALUES_PER_FLAG`.

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.

    Example:
        >>> find_flags("{% if mode == 'fast' %}f{% elif mode == 'slow' %}s{% endif %}")
        {'mode': ('fast', 'slow')}
    """
    return dict(ChatTemplate.of(template).resolve(_flags))


def _flags(template: ChatTemplate) -> dict[str, tuple[Any, ...]]:
    tree, reads = template.resolve(_folded)
    candidates = set(reads - STANDARD_NAMES)
    locals_: set[str] = set()
    options: set[str] = set()
    for assigned, idiom in _assignments(tree, []):
        (options if idiom else locals_).add(assigned)
    candidates -= locals_ - options

    usages = {name: _Usage() for name in candidates}
    parents = {id(node): parent for node, parent in _walk(tree) if parent is not None}
    for node in tree.find_all(nodes.Name):
        if node.ctx == "load" and node.name in usages:
            _classify(node, parents, usages[node.name])

    flags: dict[str, tuple[Any, ...]] = {}
    for name in sorted(usages):
        usage = usages[name]
        if usage.data:
            continue
        values: list[Any] = []
        if usage.boolean or (usage.presence and not usage.constants and not usage.text):
            values += [True, False]
        values += sorted(usage.constants, key=lambda value: (type(value).__name__, value))
        if usage.none:
            values.append(None)
        if values:
            flags[name] = tuple(values[:MAX_VALUES_PER_FLAG])
    return flags
