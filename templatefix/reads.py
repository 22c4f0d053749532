"""What a template reads from the conversation: every field, sub-field and test, from its AST.

The analysis follows values, not names: ``{% for m in messages %}`` makes ``m`` an element of
``messages``; ``{% set tc = tool_call.function %}``, ``loop.previtem``, ``messages[-1]``,
``messages[1:]``, ``x | first``, ``x.get('k')``, macro parameters bound at their call sites and
``namespace`` attributes are followed the same way. Each value is a :data:`Path` from a root
(``messages``, ``tools``, ``documents``): ``("messages", "[]", "tool_calls", "[]", "function",
"arguments")`` is "the arguments of any tool call of any message". ``"[]"`` is "an element of",
``"*"`` "any value of a mapping".

For every path the template reads, :class:`FieldUse` records how: the Jinja tests applied
(``is string``, ``is mapping``, ``is none``, ``is defined``…), the constants it is compared with
(``part.type == 'image'``, ``role in ['user', 'tool']``), substrings it looks for
(``'</think>' in content``), and whether it is used for truth, iterated, or printed.
``templatefix.probes`` builds conversations from this so both sides of each test are probed.

The analysis is flow-insensitive and over-approximates (a name assigned two values has both);
a path it reports may be read on only some messages, never one the template cannot read.

Example:
    >>> reads = template_reads_of(
    ...     "{% for m in messages %}{% for tc in m.tool_calls %}"
    ...     "{% if tc.id is defined %}{{ tc.id }}{% endif %}"
    ...     "{% if tc.function.arguments is string %}{{ tc.function.arguments }}{% endif %}"
    ...     "{% endfor %}{% endfor %}")
    >>> sorted(reads.use(MESSAGE + ("tool_calls", "[]", "id")).tests)
    ['defined']
    >>> sorted(reads.use(MESSAGE + ("tool_calls", "[]", "function", "arguments")).tests)
    ['string']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jinja2 import nodes

from templatefix.template import ChatTemplate

Path = tuple[str, ...]

#: The values a template gets from the conversation and its arguments.
ROOTS = ("messages", "tools", "documents")
#: The path of "any message".
MESSAGE: Path = ("messages", "[]")
ELEMENT = "[]"
ANY_VALUE = "*"
_ITEMS = "*items"  # a mapping's (key, value) pairs
_LOOP = "@loop"  # the ``loop`` object of a for loop over the path
_MAX_DEPTH = 8  # paths stop growing here (recursive macros over schemas)

#: Filters whose result is (a selection of) the same list or value.
_SAME_FILTERS = frozenset(
    {
        "select", "reject", "selectattr", "rejectattr", "list", "reverse", "sort", "unique",
        "default", "d", "trim", "lower", "upper", "string", "title", "capitalize", "replace",
        "safe", "e", "escape", "striptags", "indent", "truncate", "wordwrap", "center",
    }
)  # fmt: skip
_ELEMENT_FILTERS = frozenset({"first", "last", "random", "min", "max"})
_ITEM_FILTERS = frozenset({"items", "dictsort"})
_METHODS_SAME = frozenset({"strip", "lstrip", "rstrip", "lower", "upper", "replace", "copy", "title"})
_METHODS_ELEMENT = frozenset({"split", "rsplit", "splitlines"})  # a list of pieces of the text


@dataclass
class FieldUse:
    """How a template uses one path.

    Attributes:
        tests: Jinja tests applied (``string``, ``mapping``, ``none``, ``defined``, ``iterable``…;
            ``is not x`` counts as ``x``).
        constants: constants it is compared with (``==``, ``!=``, ``in [..]``, ``equalto``,
            ``selectattr(k, 'equalto', c)``).
        contains: constant strings looked up inside it (``'</think>' in content``).
        truth: used as a condition (``if x``, ``not x``, ``x and y``, ``selectattr('x')``).
        iterated: looped over, or its length taken.
        printed: written to the output (possibly through filters).
    """

    tests: set[str] = field(default_factory=set)
    constants: set[Any] = field(default_factory=set)
    contains: set[str] = field(default_factory=set)
    truth: bool = False
    iterated: bool = False
    printed: bool = False

    @property
    def tested(self) -> bool:
        """Whether anything branches on this path."""
        return bool(self.tests or self.constants or self.contains or self.truth)


@dataclass
class Reads:
    """Every conversation path a template reads, with how it uses each.

    Example:
        >>> reads = template_reads_of("{% for m in messages %}{{ m.name }}{% endfor %}")
        >>> reads.fields(MESSAGE)
        ['name']
    """

    paths: dict[Path, FieldUse] = field(default_factory=dict)

    def use(self, path: Path) -> FieldUse:
        """How ``path`` is used (an empty record when it is not read)."""
        return self.paths.get(path) or FieldUse()

    def reads(self, path: Path) -> bool:
        """Whether the template reads ``path`` or anything below it."""
        return any(p[: len(path)] == path for p in self.paths)

    def fields(self, prefix: Path) -> list[str]:
        """The keys read directly under ``prefix`` (sorted; ``[]`` and ``*`` excluded)."""
        keys = {p[len(prefix)] for p in self.paths if len(p) > len(prefix) and p[: len(prefix)] == prefix}
        return sorted(key for key in keys if key != ELEMENT and not key.startswith(("*", "@")))

    def constants(self, path: Path) -> list[Any]:
        """Constants ``path`` is compared with, strings first, sorted (deterministic)."""
        return sorted(self.use(path).constants, key=lambda value: (type(value).__name__, str(value)))

    def roles(self) -> list[str]:
        """Roles the template compares ``message.role`` with."""
        return [c for c in self.constants(MESSAGE + ("role",)) if isinstance(c, str)]

    def part_types(self) -> list[str]:
        """Content part ``type``s the template compares with (``text``, ``image``…)."""
        return [c for c in self.constants(MESSAGE + ("content", ELEMENT, "type")) if isinstance(c, str)]


def template_reads_of(template: ChatTemplate | str, extra_roots: tuple[str, ...] = ()) -> Reads:
    """What ``template`` reads from ``messages``, ``tools``, ``documents`` and ``extra_roots``
    (other data the caller passes, such as ``knobs``), computed once per template and roots.

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.
    """
    return ChatTemplate.of(template).resolve(_reads, extra_roots)


def _reads(template: ChatTemplate, extra_roots: tuple[str, ...]) -> Reads:
    walker = _Walker(ROOTS + extra_roots)
    for _ in range(4):  # bindings made after a use (loops, macros) need another pass
        before = {name: frozenset(paths) for name, paths in walker.env.items()}
        walker.statements(template.ast.body)
        if {name: frozenset(paths) for name, paths in walker.env.items()} == before:
            break
    return Reads(walker.uses)


def name_resolver(
    tree: nodes.Template, extra_roots: tuple[str, ...] = ()
) -> Callable[[nodes.Node], set[Path]]:
    """A function giving the paths an expression of ``tree`` may be (names followed through
    ``{% set %}``, loops and macro parameters as in :func:`template_reads_of`).

    Example:
        >>> from jinja2 import Environment
        >>> tree = Environment().parse("{% for m in messages %}{% set c = m.tool_calls[0] %}{% endfor %}")
        >>> resolve = name_resolver(tree)
        >>> sorted(resolve(Environment().parse("{{ c.function.name }}").body[0].nodes[0]))
        [('messages', '[]', 'tool_calls', '[]', 'function', 'name')]
    """
    walker = _Walker(ROOTS + extra_roots)
    for _ in range(4):
        before = {name: frozenset(paths) for name, paths in walker.env.items()}
        walker.statements(tree.body)
        if {name: frozenset(paths) for name, paths in walker.env.items()} == before:
            break
    return walker.expr


class _Walker:
    """One flow-insensitive pass over the AST, binding local names to paths and recording uses."""

    def __init__(self, roots: tuple[str, ...] = ROOTS) -> None:
        self.roots = roots
        self.env: dict[str, set[Path]] = {}
        self.constant_names: dict[str, list[Any]] = {}  # names bound to constant lists
        self.uses: dict[Path, FieldUse] = {}
        self.macros: dict[str, nodes.Macro] = {}

    # -- recording --------------------------------------------------------------------------
    def _use(self, path: Path) -> FieldUse:
        use = self.uses.get(path)
        if use is None:
            use = self.uses[path] = FieldUse()
        return use

    def _bind(self, name: str, paths: Iterable[Path]) -> None:
        self.env.setdefault(name, set()).update(paths)

    def _constants(self, paths: set[Path], other: nodes.Node) -> None:
        values = _constant_values(other)
        if not values and isinstance(other, nodes.Name):
            values = self.constant_names.get(other.name, [])
        for path in paths:
            self._use(path).constants.update(values)

    # -- statements -------------------------------------------------------------------------
    def statements(self, body: Iterable[nodes.Node]) -> None:
        for node in body:
            self.statement(node)

    def statement(self, node: nodes.Node) -> None:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                for path in self.expr(child):
                    self._use(path).printed = True
        elif isinstance(node, nodes.For):
            self._for(node)
        elif isinstance(node, nodes.If):
            self.truth(node.test)
            self.statements(node.body)
            for branch in node.elif_:
                self.statement(branch)
            self.statements(node.else_)
        elif isinstance(node, nodes.Assign):
            paths = self.expr(node.node)
            if isinstance(node.target, nodes.Name):
                self._bind(node.target.name, paths)
                self._constant_binding(node.target.name, node.node)
            elif isinstance(node.target, nodes.NSRef):
                self._bind(f"{node.target.name}.{node.target.attr}", paths)
        elif isinstance(node, nodes.Macro):
            self.macros[node.name] = node
            for default in node.defaults:
                self.expr(default)
            self.statements(node.body)
        else:
            for inner in node.iter_child_nodes():
                if isinstance(inner, nodes.Expr):
                    self.expr(inner)
                else:
                    self.statement(inner)

    def _constant_binding(self, name: str, value: nodes.Node) -> None:
        """``{% set roles = ['user', ...] %}`` and ``namespace(messages=messages, ...)``."""
        constants = _constant_values(value)
        if constants:
            self.constant_names.setdefault(name, []).extend(constants)
        callee = value.node if isinstance(value, nodes.Call) else None
        if isinstance(value, nodes.Call) and isinstance(callee, nodes.Name) and callee.name == "namespace":
            for keyword in value.kwargs:
                self._bind(f"{name}.{keyword.key}", self.expr(keyword.value))

    def _for(self, node: nodes.For) -> None:
        iterated = self.expr(node.iter)
        elements: set[Path] = set()
        values: set[Path] = set()
        for path in iterated:
            self._use(path).iterated = True
            if path[-1:] == (_ITEMS,):
                values.add(path[:-1] + (ANY_VALUE,))
            else:
                elements.add(path + (ELEMENT,))
        target = node.target
        if isinstance(target, nodes.Name):
            self._bind(target.name, elements)
        elif isinstance(target, nodes.Tuple) and len(target.items) == 2:
            value_target = target.items[1]
            if isinstance(value_target, nodes.Name):
                self._bind(value_target.name, values)
        self._bind("loop", {path + (_LOOP,) for path in iterated if path[-1:] != (_ITEMS,)})
        if node.test is not None:
            self.truth(node.test)
        self.statements(node.body)
        self.statements(node.else_)

    # -- expressions ------------------------------------------------------------------------
    def truth(self, node: nodes.Node) -> None:
        """``node`` is used as a condition."""
        for path in self.expr(node):
            self._use(path).truth = True

    def expr(self, node: nodes.Node) -> set[Path]:  # noqa: C901 - one case per node type
        """The paths ``node``'s value may be, recording every use made on the way."""
        if isinstance(node, nodes.Name):
            if node.ctx != "load":
                return set()
            paths = set(self.env.get(node.name, ()))
            if node.name in self.roots:
                paths.add((node.name,))
            return paths
        if isinstance(node, nodes.Getattr):
            return self._member(self.expr(node.node), node.attr, node.node)
        if isinstance(node, nodes.Getitem):
            base = self.expr(node.node)
            if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                return self._member(base, node.arg.value, node.node)
            if isinstance(node.arg, nodes.Slice):
                for child in node.arg.iter_child_nodes():
                    self.expr(child)
                return base
            self.expr(node.arg)
            return {
                path + (ELEMENT,) for path in base if not path[-1].startswith("@") and len(path) < _MAX_DEPTH
            }
        if isinstance(node, nodes.Call):
            return self._call(node)
        if isinstance(node, nodes.Filter):
            return self._filter(node)
        if isinstance(node, nodes.Test):
            return self._test(node)
        if isinstance(node, nodes.Compare):
            return self._compare(node)
        if isinstance(node, nodes.CondExpr):
            self.truth(node.test)
            return self.expr(node.expr1) | (self.expr(node.expr2) if node.expr2 is not None else set())
        if isinstance(node, (nodes.And, nodes.Or)):
            left, right = self.expr(node.left), self.expr(node.right)
            for path in left | right:
                self._use(path).truth = True
            return left | right
        if isinstance(node, nodes.Not):
            self.truth(node.node)
            return set()
        if isinstance(node, nodes.Concat):
            for child in node.nodes:
                self._printed(self.expr(child))
            return set()
        if isinstance(node, (nodes.Add, nodes.Mod)):
            self._printed(self.expr(node.left) | self.expr(node.right))
            return set()
        for child in node.iter_child_nodes():
            self.expr(child)
        return set()

    def _printed(self, paths: set[Path]) -> None:
        for path in paths:
            self._use(path).printed = True

    def _member(self, base: set[Path], key: str, base_node: nodes.Node) -> set[Path]:
        result: set[Path] = set()
        for path in base:
            if path[-1] == _LOOP:
                if key in ("previtem", "nextitem"):
                    result.add(path[:-1] + (ELEMENT,))
                continue
            if path[-1] == key or len(path) >= _MAX_DEPTH:
                # ``{% set tc = tc.function %}`` rebinds a name to its own member: no deeper path
                result.add(path)
            else:
                result.add(path + (key,))
        for path in result:
            self._use(path)
        if isinstance(base_node, nodes.Name):  # namespace attributes: ``ns.last = message``
            result |= self.env.get(f"{base_node.name}.{key}", set())
        return result

    def _call(self, node: nodes.Call) -> set[Path]:
        arguments = [self.expr(argument) for argument in node.args]
        keywords = {keyword.key: self.expr(keyword.value) for keyword in node.kwargs}
        for extra in (node.dyn_args, node.dyn_kwargs):
            if extra is not None:
                self.expr(extra)
        callee = node.node
        if isinstance(callee, nodes.Getattr):
            base = self.expr(callee.node)
            method = callee.attr
            if method == "get" and node.args and isinstance(node.args[0], nodes.Const):
                key = node.args[0].value
                default = arguments[1] if len(arguments) > 1 else set()
                if isinstance(key, str):
                    found = self._member(base, key, callee.node)
                    for path in found:
                        self._use(path).tests.add("defined")
                    return found | default
            if method == "items":
                return {path + (_ITEMS,) for path in base}
            if method == "values":
                return {path + (ANY_VALUE,) for path in base}
            if method in _METHODS_SAME:
                return base
            if method in _METHODS_ELEMENT:
                self._printed(base)
                if method in ("split", "rsplit") and node.args:  # a text holding the separator
                    self._looked_for(base, node.args[0])
                return set()
            if method in ("startswith", "endswith") and node.args:
                self._looked_for(base, node.args[0])
                return set()
            return set()
        if isinstance(callee, nodes.Name) and callee.name in self.macros:
            macro = self.macros[callee.name]
            for parameter, paths in zip(macro.args, arguments, strict=False):
                self._bind(parameter.name, paths)
            for parameter in macro.args:
                if parameter.name in keywords:
                    self._bind(parameter.name, keywords[parameter.name])
        return set()

    def _looked_for(self, paths: set[Path], text: nodes.Node) -> None:
        """``text``'s constant strings are looked for inside the values at ``paths``."""
        for path in paths:
            self._use(path).contains.update(str(v) for v in _constant_values(text) if isinstance(v, str))

    def _filter(self, node: nodes.Filter) -> set[Path]:
        base = self.expr(node.node) if node.node is not None else set()
        arguments = [self.expr(argument) for argument in node.args]
        for keyword in node.kwargs:
            self.expr(keyword.value)
        name = node.name
        if name in ("selectattr", "rejectattr") and node.args:
            key = node.args[0]
            if isinstance(key, nodes.Const) and isinstance(key.value, str):
                members = {path + (ELEMENT, key.value) for path in base}
                for path in members:
                    use = self._use(path)
                    if len(node.args) == 1:
                        use.truth = True
                    elif isinstance(node.args[1], nodes.Const):
                        test = str(node.args[1].value)
                        if test in ("equalto", "eq", "==", "sameas", "in") and len(node.args) > 2:
                            use.constants.update(_constant_values(node.args[2]))
                        else:
                            use.tests.add(test)
        if name == "map":
            attribute = next((k.value for k in node.kwargs if k.key == "attribute"), None)
            if isinstance(attribute, nodes.Const) and isinstance(attribute.value, str):
                for path in base:
                    self._use(path + (ELEMENT, attribute.value)).printed = True
            return set()
        if name in ("default", "d"):
            for path in base:
                self._use(path).tests.add("defined")
            return base | (arguments[0] if arguments else set())
        if name in _SAME_FILTERS:
            return base
        if name in _ELEMENT_FILTERS:
            return {path + (ELEMENT,) for path in base}
        if name in _ITEM_FILTERS:
            return {path + (_ITEMS,) for path in base}
        if name in ("length", "count"):
            for path in base:
                self._use(path).iterated = True
            return set()
        self._printed(base)  # tojson, join, string-building: the whole value is read
        return set()

    def _test(self, node: nodes.Test) -> set[Path]:
        base = self.expr(node.node)
        for argument in node.args:
            self.expr(argument)
        for path in base:
            use = self._use(path)
            if node.name in ("eq", "equalto", "==", "sameas", "ne", "!=", "in") and node.args:
                use.constants.update(_constant_values(node.args[0]))
            else:
                use.tests.add(node.name)
        return set()

    def _compare(self, node: nodes.Compare) -> set[Path]:
        operands = [node.expr, *(operand.expr for operand in node.ops)]
        paths = [self.expr(operand) for operand in operands]
        for index, operand in enumerate(node.ops):
            left, right = operands[index], operands[index + 1]
            if operand.op in ("in", "notin") and _constant_values(left):
                for path in paths[index + 1]:
                    self._use(path).contains.update(str(v) for v in _constant_values(left))
                continue
            self._constants(paths[index], right)
            self._constants(paths[index + 1], left)
        return set()


def _constant_values(node: nodes.Node) -> list[Any]:
    """The constant values ``node`` stands for: a constant, or a literal list/tuple of them."""
    if isinstance(node, nodes.Const):
        value = node.value
        if isinstance(value, (list, tuple)):
            return [item for item in value if isinstance(item, (str, int, float, bool)) or item is None]
        return [value] if isinstance(value, (str, int, float, bool)) or value is None else []
    if isinstance(node, (nodes.List, nodes.Tuple)):
        return [value for item in node.items for value in _constant_values(item)]
    return []
