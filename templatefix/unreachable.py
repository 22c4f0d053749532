"""Outputs no render can reach, proven from the template's AST: branches whose test is always false.

A test written as a constant (``{% if true %}``, ``{% elif false %}``) decides its branches: the
body of a false one, and every later branch of a true one, are never run.

Jinja scopes ``{% set %}`` to the innermost ``for`` loop (and macro): an assignment inside a loop
body does not change the variable after the loop. Templates that set a flag in a loop and test it
afterwards therefore test the value set before the loop. gpt-oss's tool-schema macro does this:

    {%- set has_object_variants = false -%}
    {%- for variant in param_spec.oneOf -%}
        {%- if variant.type == "object" -%}{%- set has_object_variants = true -%}{%- endif -%}
    {%- endfor -%}
    {%- if has_object_variants and param_spec.oneOf|length > 1 -%}{{- "any" }}...

``has_object_variants`` is ``false`` at the ``if`` in every render, so ``"any"`` is never written.
:func:`dead_outputs` finds such ``if`` bodies: a test that is a name (or an ``and`` holding one)
whose every assignment in the scope that reads it is a false constant (``false``, ``none``, an
empty string, list or mapping), and that the scope assigns before the test; and the bodies of
``for`` loops over such a name (``{% set tools = [] %}`` … ``{% for tool in tools %}``). Names
bound by a loop or a macro parameter in that scope, or assigned in
a way the scope cannot see (``{% set %}`` blocks, imports), are never treated as constant.

A second proof, :class:`_Flow`, runs the statements over the values known on every path: each
``{% set %}`` name and each attribute of a ``namespace`` maps to a constant where it has the same
one on every path reaching a statement. A test those values decide closes its branches. rnj-1
sets ``emit.started`` to true on both branches of its tools test, so the message loop's ``{% if
not emit.started %}{{ bos_token }}`` never writes; Solar Open calls ``render_system_message``
first, while ``sys_ns.is_first_block`` is still true. Where a value is not one constant, the
analysis knows its *kinds* (:class:`Kinds`): Nemotron 3 sets ``c = "<think></think>" ~ …`` or
keeps a ``c`` that holds ``'<think>'``, so ``c|trim`` is never empty and the branch of ``{% if
c|length > 0 %}`` that writes an empty turn is never taken. See :class:`_Flow` for what it
assumes.

Example:
    >>> from jinja2 import Environment
    >>> tree = Environment().parse(
    ...     "{% set seen = false %}{% for x in xs %}{% set seen = true %}{% endfor %}"
    ...     "{% if seen %}dead{% endif %}")
    >>> [node.data for node in dead_outputs(tree)]
    ['dead']
    >>> tree = Environment().parse(
    ...     "{% set ns = namespace(started=false) %}"
    ...     "{% if tools %}{% set ns.started = true %}{% else %}{% set ns.started = true %}{% endif %}"
    ...     "{% if not ns.started %}dead{% endif %}")
    >>> [node.data for node in dead_outputs(tree)], list(dead_reasons(tree).values())
    (['dead'], ["'not ns.started' is false in every render (ns.started is true on every path there)"])
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from jinja2 import nodes

from templatefix.environment import is_generation_block

#: Nodes whose body is a scope of its own for ``{% set %}``.
_SCOPES = (nodes.For, nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.Scope, nodes.With)


def dead_outputs(tree: nodes.Template) -> list[nodes.Node]:
    """The output nodes (``TemplateData`` and expressions of ``{{ }}``) no render reaches."""
    reasons = dead_reasons(tree)
    return [node for output in tree.find_all(nodes.Output) for node in output.nodes if id(node) in reasons]


#: The last trees :func:`dead_reasons` proved, kept alive so that their ``id`` stays theirs.
_PROVEN: dict[int, tuple[nodes.Template, dict[int, str]]] = {}


def dead_reasons(tree: nodes.Template) -> dict[int, str]:
    """``id`` of each output node no render reaches, with the reason.

    Two proofs: an always-false test on a name set only to false constants in the scope that reads
    it (:func:`_visit`), and the values :class:`_Flow` finds the same on every path.
    """
    known = _PROVEN.get(id(tree))
    if known is not None and known[0] is tree:
        return known[1]
    if len(_PROVEN) >= 16:
        _PROVEN.clear()
    reasons = _dead_reasons(tree)
    _PROVEN[id(tree)] = (tree, reasons)
    return reasons


def _dead_reasons(tree: nodes.Template) -> dict[int, str]:
    found: list[nodes.Node] = []
    for scope in _scopes(tree):
        _visit(_body(scope), _assignments(scope), set(), found)
    reasons = {
        id(node): "its test is false in every render: a constant, or a name the scope sets only to "
        "false constants before it (a {% set %} in a for loop is not seen after the loop)"
        for node in found
    }
    for node, why in _flow_dead(tree).items():
        reasons.setdefault(node, why)
    return reasons


def _visit(
    body: list[nodes.Node],
    assigned: dict[str, list[nodes.Assign | None]],
    surely_set: set[str],
    found: list[nodes.Node],
) -> None:
    """Check the ``if`` statements of one statement list and the lists under them.

    ``surely_set``: names set, before this list, on every path that reaches it (earlier in an
    enclosing list); a ``{% set %}`` in the list adds its name for the statements after it.
    """
    surely_set = set(surely_set)
    for statement in body:
        if isinstance(statement, nodes.For) and _always_false(statement.iter, assigned, surely_set):
            found.extend(output_nodes(statement.body))  # a loop over a list that is always empty
        if isinstance(statement, nodes.If):
            taken = False  # an earlier branch's test is a true constant: the rest never run
            for branch in [statement, *statement.elif_]:
                if taken or _always_false(branch.test, assigned, surely_set):
                    found.extend(output_nodes(branch.body))
                _visit(branch.body, assigned, surely_set, found)
                taken = taken or _true_constant(branch.test)
            if taken:
                found.extend(output_nodes(statement.else_))
            _visit(statement.else_, assigned, surely_set, found)
        elif isinstance(statement, nodes.Assign) and isinstance(statement.target, nodes.Name):
            surely_set.add(statement.target.name)
        elif not isinstance(statement, _SCOPES):
            for child in statement.iter_child_nodes():
                if isinstance(child, nodes.Stmt):
                    _visit([child], assigned, surely_set, found)


def _scopes(tree: nodes.Template) -> Iterator[nodes.Node]:
    yield tree
    yield from tree.find_all(_SCOPES)


def _own_nodes(
    scope: nodes.Node, kind: type[nodes.Node] | tuple[type[nodes.Node], ...], include_self: bool = False
) -> Iterator[nodes.Node]:
    """Nodes of ``kind`` in ``scope``'s body (or in ``scope`` itself), not inside a nested scope."""
    if include_self:
        if isinstance(scope, _SCOPES):
            return
        stack = [scope]
    else:
        stack = list(_body(scope))
    while stack:
        node = stack.pop()
        if isinstance(node, kind):
            yield node
        if isinstance(node, _SCOPES):
            continue
        stack.extend(node.iter_child_nodes())


def _body(scope: nodes.Node) -> list[nodes.Node]:
    if isinstance(scope, nodes.For):
        return list(scope.body)  # ``else_`` and the iterable belong to the enclosing scope
    return list(getattr(scope, "body", []))


def _assignments(scope: nodes.Node) -> dict[str, list[nodes.Assign | None]]:
    """Every name ``scope`` binds itself; ``None`` stands for a binding that is not ``{% set %}``."""
    bound: dict[str, list[nodes.Assign | None]] = {}
    if isinstance(scope, nodes.For):
        targets = (
            [scope.target] if isinstance(scope.target, nodes.Name) else scope.target.find_all(nodes.Name)
        )
        for name in targets:
            bound.setdefault(name.name, []).append(None)
    if isinstance(scope, nodes.Macro):
        for argument in scope.args:
            bound.setdefault(argument.name, []).append(None)
    for node in _own_nodes(
        scope, (nodes.Assign, nodes.AssignBlock, nodes.For, nodes.Import, nodes.FromImport)
    ):
        if isinstance(node, nodes.Assign) and isinstance(node.target, nodes.Name):
            bound.setdefault(node.target.name, []).append(node)
        elif isinstance(node, nodes.Assign):
            for name in node.target.find_all(nodes.Name):
                bound.setdefault(name.name, []).append(None)
        elif isinstance(node, nodes.AssignBlock) and isinstance(node.target, nodes.Name):
            bound.setdefault(node.target.name, []).append(None)
        elif isinstance(node, (nodes.Import, nodes.FromImport)):
            for name in node.find_all(nodes.Name):
                bound.setdefault(name.name, []).append(None)
    return bound


def _always_false(
    test: nodes.Node, assigned: dict[str, list[nodes.Assign | None]], surely_set: set[str]
) -> bool:
    if isinstance(test, nodes.And):
        return _always_false(test.left, assigned, surely_set) or _always_false(
            test.right, assigned, surely_set
        )
    if isinstance(test, (nodes.Const, nodes.Not)):
        return _true_constant(test, want=False)
    if not isinstance(test, nodes.Name) or test.name not in surely_set:
        return False  # not surely set before the test: the value may come from outside the scope
    bindings = assigned.get(test.name, [])
    if any(binding is None for binding in bindings):
        return False
    return all(_false_constant(binding.node) for binding in bindings if binding is not None)


def _true_constant(test: nodes.Node, want: bool = True) -> bool:
    """Whether ``test`` is built from constants alone (``true``, ``not false``, ``true or x``...)
    and its truth is ``want``."""
    if isinstance(test, nodes.Const):
        return bool(test.value) is want
    if isinstance(test, nodes.Not):
        return _true_constant(test.node, not want)
    if isinstance(test, (nodes.And, nodes.Or)):
        decisive = isinstance(test, nodes.Or) is want  # one operand decides an ``or`` true, an ``and`` false
        left, right = _true_constant(test.left, want), _true_constant(test.right, want)
        return (left or right) if decisive else (left and right)
    return False


def _false_constant(node: nodes.Node) -> bool:
    """``false``, ``none``, ``''``, ``0``, ``[]`` or ``{}`` (lists cannot be changed in place: the
    sandbox forbids ``append``)."""
    if isinstance(node, (nodes.List, nodes.Tuple, nodes.Dict)):
        return not node.items
    return isinstance(node, nodes.Const) and not node.value


def output_nodes(body: list[nodes.Node]) -> Iterator[nodes.Node]:
    """The nodes written by the ``{{ }}`` outputs and literal text of ``body``, nested ones too."""
    for statement in body:
        for output in [statement, *statement.find_all(nodes.Output)]:
            if isinstance(output, nodes.Output):
                yield from output.nodes


# --- values known on every path: a forward analysis of ``{% set %}`` and namespace attributes ---

#: The analysis gives up (proves nothing) after visiting this many statements.
_BUDGET = 200_000


class _Unknown:
    def __repr__(self) -> str:
        return "unknown"


class _Empty:
    """An empty list, tuple or mapping literal: falsy and of length zero for good (the sandbox
    forbids changing a list or mapping in place)."""

    def __repr__(self) -> str:
        return "empty"


UNKNOWN: Any = _Unknown()
EMPTY: Any = _Empty()
_SCALARS = (str, int, float, bool, type(None))

#: What a value may be, in five kinds that cover every value a chat template sees (JSON data,
#: strings, undefined): the empty string; a non-empty string of whitespace only; a string with a
#: character that is not whitespace; a false value that is not a string (none, false, 0, an
#: empty list or mapping, undefined); a true value that is not a string.
_EMPTY_STR, _BLANK, _TEXT, _FALSY, _TRUTHY = "empty", "blank", "text", "falsy", "truthy"
_ALL_KINDS = frozenset((_EMPTY_STR, _BLANK, _TEXT, _FALSY, _TRUTHY))
_STRINGS = frozenset((_EMPTY_STR, _BLANK, _TEXT))
_FALSE_KINDS = frozenset((_EMPTY_STR, _FALSY))
_TRUE_KINDS = frozenset((_BLANK, _TEXT, _TRUTHY))
#: The kinds of ``value|string`` (and of each operand of ``~``) per kind: undefined is ``''``,
#: ``none``, ``false``, ``0`` and empty containers print a word or brackets, and a true value
#: that is not a string prints something that is not whitespace.
_AS_STRING = {
    _EMPTY_STR: frozenset((_EMPTY_STR,)),
    _BLANK: frozenset((_BLANK,)),
    _TEXT: frozenset((_TEXT,)),
    _FALSY: frozenset((_EMPTY_STR, _TEXT)),
    _TRUTHY: frozenset((_TEXT,)),
}
_SAID = {
    _EMPTY_STR: "the empty string",
    _BLANK: "a string of whitespace",
    _TEXT: "a string with a non-space character",
    _FALSY: "a false value that is not a string",
    _TRUTHY: "a true value that is not a string",
}


class Kinds:
    """A value known only by its kinds (a strict, non-empty subset of the five above): a name set
    to ``'<think></think>' ~ content`` is a string with a non-space character in every render,
    whatever ``content`` is."""

    __slots__ = ("may",)

    def __init__(self, may: frozenset[str]) -> None:
        self.may = may

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Kinds) and other.may == self.may

    def __hash__(self) -> int:
        return hash(self.may)

    def __repr__(self) -> str:
        return " or ".join(_SAID[kind] for kind in sorted(self.may))


def _kinds_of(value: Any) -> frozenset[str]:
    """The kinds a known value (constant, EMPTY, Kinds) may be; every kind for UNKNOWN."""
    if isinstance(value, Kinds):
        return value.may
    if value is UNKNOWN:
        return _ALL_KINDS
    if value is EMPTY:
        return frozenset((_FALSY,))
    if isinstance(value, str):
        return frozenset((_TEXT if value.strip() else _BLANK if value else _EMPTY_STR,))
    return frozenset((_TRUTHY if value else _FALSY,))


def _from_kinds(may: frozenset[str]) -> Any:
    """The abstract value of a set of kinds (UNKNOWN when it says nothing)."""
    return Kinds(may) if may and may != _ALL_KINDS else UNKNOWN


def _as_string(may: frozenset[str]) -> frozenset[str]:
    return frozenset().union(*(_AS_STRING[kind] for kind in may))


def _concat(parts: list[frozenset[str]]) -> frozenset[str]:
    """The kinds of the concatenation of strings of these kinds."""
    result = frozenset((_EMPTY_STR,))
    for part in parts:
        combined: set[str] = set()
        for a in result:
            for b in part:
                combined.add(_TEXT if _TEXT in (a, b) else _EMPTY_STR if a == b == _EMPTY_STR else _BLANK)
        result = frozenset(combined)
    return result


Key = tuple[str, ...]  # ("name", x) or ("attr", namespace, attribute)
State = dict[Key, Any]  # a key not in the state has an unknown value


class _GiveUp(Exception):
    """The template has a construct the analysis does not model: it proves nothing."""


def _join(a: State | None, b: State | None) -> State | None:
    """What is known after a path through ``a`` or one through ``b`` (``None``: no path): a value
    the same on both, else the kinds either may be."""
    if a is None:
        return b
    if b is None:
        return a
    joined: State = {}
    for key, value in a.items():
        if key not in b:
            continue
        if _same(value, b[key]):
            joined[key] = value
        else:
            either = _from_kinds(_kinds_of(value) | _kinds_of(b[key]))
            if either is not UNKNOWN:
                joined[key] = either
    return joined


def _same(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and a == b)


def _truth(value: Any) -> bool | None:
    if value is UNKNOWN:
        return None
    if value is EMPTY:
        return False
    if isinstance(value, Kinds):
        return True if value.may <= _TRUE_KINDS else False if value.may <= _FALSE_KINDS else None
    return bool(value)


class _Flow:
    """Runs the template's statements over abstract states: each name set by ``{% set %}`` and
    each attribute of a ``namespace`` maps to its value where that value is the same on every path
    (a constant), and tests whose value is then decided close their branches.

    Sound by construction, it only ever forgets:
    - ``{% set %}`` in a ``for`` body is local to the loop (Jinja's scoping): the body starts
      every iteration with the names it sets unknown, and after the loop they have their value
      from before it. Namespace attributes outlive the loop: the loop runs zero or more times, so
      the state after it joins the state before it with the state after any number of iterations
      (a fixpoint), ``{% continue %}`` and ``{% break %}`` included.
    - A namespace is followed only when its name is bound once, by ``namespace(...)``, and is
      read only as ``ns.attr`` (no alias can change it unseen). Its attributes change only
      through ``{% set ns.attr = ... %}``.
    - Macros: when every macro is defined at the top level, bound once, only called directly
      (never passed around, no ``{% call %}``) and not recursive, each call runs the macro's body
      with the caller's namespace attributes (names unknown: a macro sees the caller's names at
      call time), and the caller goes on with the attributes the body leaves. Otherwise a macro's
      body runs once with everything unknown, and a namespace written in a macro is not followed.
    - A value that is not the same constant on every path may still have known kinds (see
      :class:`Kinds`): a join keeps the kinds either side may have; ``~``, ``+``, the ``string``,
      ``trim`` and ``default`` filters, ``and``/``or`` and conditional expressions carry them;
      the branches of a test narrow the kinds of the names it tests (truth, ``is string``,
      ``'x' in c``), and only a name's value is narrowed, never what it was copied from.
    - Anything else (a value from the caller, a loop variable, a call, another filter) is unknown.
    - ``{% generation %}`` blocks run once where they stand, their ``{% set %}`` names local.
    Templates with ``include``, ``import``, ``extends``, blocks or recursive loops prove nothing.
    """

    def __init__(self, tree: nodes.Template, inline: bool = True) -> None:
        self.tree = tree
        self.live: set[int] = set()
        self.dead: dict[int, str] = {}
        self.work = 0
        self.loops: list[tuple[list[State], list[State]]] = []  # (breaks, continues) per loop
        self.calling: list[str] = []
        self.memo: dict[tuple[str, tuple[tuple[Key, Any], ...]], State | None] = {}
        self.memo_writes: dict[tuple[str, tuple[tuple[Key, Any], ...]], bool] = {}
        self.writes = 0  # outputs reached so far: a macro call that adds none writes nothing
        self.ended = ""  # why the path just ended, when a statement ends it
        if any(tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends, nodes.Block))):
            raise _GiveUp
        if any(loop.recursive for loop in tree.find_all(nodes.For)):
            raise _GiveUp
        bound: dict[str, int] = {}
        for name in tree.find_all(nodes.Name):
            if name.ctx in ("store", "param"):
                bound[name.name] = bound.get(name.name, 0) + 1
        macros = list(tree.find_all(nodes.Macro))
        for macro in macros:
            bound[macro.name] = bound.get(macro.name, 0) + 1
        self.macros = {m.name: m for m in macros}
        self.inline = (
            inline
            and all(any(m is top for top in tree.body) for m in macros)
            and all(bound[m.name] == 1 for m in macros)
            and not any(not is_generation_block(block) for block in tree.find_all(nodes.CallBlock))
            and not any(m.find_all(nodes.Call) for macro in macros for m in macro.defaults)
            and self._macros_only_called(tree)
        )
        self.namespaces = self._namespaces(tree, bound)
        # namespaces a macro sees: those the template creates outside loops and other scopes (a
        # macro does not see a loop's own names)
        self.global_namespaces = {
            a.target.name
            for a in _own_assigns(tree.body, (*_SCOPES, nodes.AssignBlock))
            if isinstance(a.target, nodes.Name) and a.target.name in self.namespaces
        }

    def _macros_only_called(self, tree: nodes.Template) -> bool:
        callees = {id(call.node) for call in tree.find_all(nodes.Call)}
        return all(
            id(name) in callees
            for name in tree.find_all(nodes.Name)
            if name.name in self.macros or name.name == "caller"
        )

    def _namespaces(self, tree: nodes.Template, bound: dict[str, int]) -> set[str]:
        """The namespace names whose attributes are followed (see the class docstring)."""
        if bound.get("namespace"):
            return set()
        created: set[str] = set()
        for assign in tree.find_all(nodes.Assign):
            if _namespace_call(assign.node) and isinstance(assign.target, nodes.Name):
                created.add(assign.target.name)
        followed = {name for name in created if bound.get(name) == 1 and name not in self.macros}
        attribute_reads = {id(get.node) for get in tree.find_all(nodes.Getattr)}
        for name in tree.find_all(nodes.Name):
            if name.name in followed and name.ctx == "load" and id(name) not in attribute_reads:
                followed.discard(name.name)  # passed around: an alias may change it unseen
        if not self.inline:
            for body in tree.find_all((nodes.Macro, nodes.CallBlock)):
                if not is_generation_block(body):
                    for ref in body.find_all(nodes.NSRef):
                        followed.discard(ref.name)
        return followed

    # --- statements

    def run_template(self) -> None:
        self.run(self.tree.body, {}, "")
        if not self.inline:
            for scope in self.tree.find_all((nodes.Macro, nodes.CallBlock)):
                if not is_generation_block(scope):  # those run where they stand
                    self.run(cast("nodes.Macro | nodes.CallBlock", scope).body, {}, "")

    def run(self, body: list[nodes.Node], state: State | None, why: str) -> State | None:
        for statement in body:
            if state is None:
                self.mark_dead(statement, why)
                continue
            state = self.statement(statement, state)
            if state is None:
                why = self.ended or "it follows a {% break %} or {% continue %}"
                self.ended = ""
        return state

    def mark_dead(self, statement: nodes.Node, why: str) -> None:
        """Record the outputs of a statement no render reaches (macros defined there are not
        run there, and their outputs not claimed; a ``{% generation %}`` block runs where it
        stands)."""
        self.work += 1
        stack = [statement]
        while stack:
            node = stack.pop()
            if isinstance(node, nodes.Output):
                for child in node.nodes:
                    self.dead.setdefault(id(child), why)
            if not isinstance(node, (nodes.Macro, nodes.CallBlock)) or is_generation_block(node):
                stack.extend(node.iter_child_nodes())

    def statement(self, node: nodes.Node, state: State) -> State | None:
        self.work += 1
        if self.work > _BUDGET:
            raise _GiveUp
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                failing = _always_fails(child)
                if failing is not None:  # every part of this output: in failed renders only
                    self.ended = f"every render reaching it fails at '{failing}' (a generator is not JSON)"
                    for written in node.nodes:
                        self.dead.setdefault(id(written), self.ended)
                    return None
            for child in node.nodes:
                writes = self.writes
                state = self.evaluate(child, state)[0]
                macro = self._macro(child) if self.inline else None
                if macro is not None and self.writes == writes:
                    self.dead.setdefault(id(child), f"the macro {macro.name} writes nothing when called here")
                else:
                    self.live.add(id(child))
                    self.writes += 1
            return state
        if isinstance(node, nodes.If):
            return self.branches(node, state)
        if isinstance(node, nodes.For):
            return self.loop(node, state)
        if isinstance(node, nodes.Assign):
            state, read = self.evaluate(node.node, state)
            state = dict(state)
            target = node.target
            if isinstance(target, nodes.Name):
                state[("name", target.name)] = self.value(node.node, read)
                if target.name in self.namespaces:
                    self.forget_namespace(state, target.name)
                    if isinstance(node.node, nodes.Call):
                        for keyword in node.node.kwargs:
                            value = self.value(keyword.value, read)
                            if value is not UNKNOWN:
                                state[("attr", target.name, keyword.key)] = value
            elif isinstance(target, nodes.NSRef):
                key = ("attr", target.name, target.attr)
                state[key] = self.value(node.node, read) if target.name in self.namespaces else UNKNOWN
            else:
                for name in target.find_all(nodes.Name):
                    state.pop(("name", name.name), None)
            return {k: v for k, v in state.items() if v is not UNKNOWN}
        if isinstance(node, nodes.AssignBlock):
            after = self.scoped(node.body, state, node)
            if after is not None and node.filter is not None:
                after = self.evaluate(node.filter, after)[0]
            if after is not None and isinstance(node.target, nodes.NSRef):
                after.pop(("attr", node.target.name, node.target.attr), None)
            elif after is not None:
                for name in _target_names(node.target):
                    after.pop(("name", name.name), None)
            return after
        if isinstance(node, nodes.Macro):
            return state  # run where it is called (or on its own, see run_template)
        if isinstance(node, (nodes.Break, nodes.Continue)):
            if not self.loops:
                raise _GiveUp
            self.loops[-1][0 if isinstance(node, nodes.Break) else 1].append(state)
            return None
        if isinstance(node, nodes.With):
            for value in node.values:
                state = self.evaluate(value, state)[0]
            targets = {name.name for target in node.targets for name in _target_names(target)}
            inner = {k: v for k, v in state.items() if not (k[0] == "name" and k[1] in targets)}
            after = self.scoped(node.body, inner, node)
            if after is None:
                return None
            after = {k: v for k, v in after.items() if not (k[0] == "name" and k[1] in targets)}
            return _join(after, state)
        if isinstance(node, nodes.FilterBlock):
            state = self.evaluate(node.filter, state)[0]
            return self.scoped(node.body, state, node)
        if isinstance(node, nodes.Scope):
            return self.scoped(node.body, state, node)
        if is_generation_block(node):  # its body runs once, here, as a macro's (names stay local)
            return self.scoped(node.body, state, node)
        if isinstance(node, nodes.CallBlock):
            return self.evaluate(node.call, state)[0]  # its body runs on its own (not inline)
        if isinstance(node, nodes.ExprStmt):
            return self.evaluate(node.node, state)[0]
        raise _GiveUp  # a statement the analysis does not model

    def scoped(self, body: list[nodes.Node], state: State, scope: nodes.Node) -> State | None:
        """Run a body whose ``{% set %}`` names may stay local: after it they are unknown."""
        after = self.run(body, state, "")
        if after is None:
            return None
        local = _stored_names(body)
        return {k: v for k, v in after.items() if not (k[0] == "name" and k[1] in local)}

    def branches(self, node: nodes.If, state: State) -> State | None:
        result: State | None = None
        rest: State | None = state
        rest_why = ""
        for branch in [node, *node.elif_]:
            if rest is None:
                self.run(branch.body, None, rest_why)
                continue
            rest, read = self.evaluate(branch.test, rest)
            truth = self.truth(branch.test, read)
            if truth is False:
                self.run(branch.body, None, self.decided(branch.test, read, False))
            else:
                result = _join(result, self.run(branch.body, self.refine(branch.test, rest, True), ""))
            if truth is True:
                rest_why = self.decided(branch.test, read, True)
                rest = None
            elif rest is not None:
                rest = self.refine(branch.test, rest, False)
        return _join(result, self.run(node.else_, rest, rest_why))

    def loop(self, node: nodes.For, state: State) -> State | None:
        state, read = self.evaluate(node.iter, state)
        local = _stored_names(node.body) | {name.name for name in _target_names(node.target)} | {"loop"}
        local_namespaces = {
            a.target.name
            for a in _own_assigns(node.body)
            if isinstance(a.target, nodes.Name) and a.target.name in self.namespaces
        }

        targets = {name.name for name in _target_names(node.target)} | {"loop"}

        def fresh(s: State | None) -> State | None:
            # A name the body sets is the iteration's own: every iteration starts with its value
            # from before the loop (Jinja does not carry it over), or without it if there was none.
            if s is None:
                return None
            kept = {
                k: v
                for k, v in s.items()
                if not (k[0] == "name" and k[1] in local)
                and not (k[0] == "attr" and k[1] in local_namespaces)
            }
            for name in local - targets:
                if state is not None and ("name", name) in state:
                    kept[("name", name)] = state[("name", name)]
            return kept

        if self.truth(node.iter, read) is False:
            self.run(node.body, None, self.decided(node.iter, read, False, loop=True))
            ends: State | None = state
        else:
            start = fresh(state)
            ends = state
            # each round widens a key's value (a constant, then ever larger sets of kinds, then
            # forgotten: at most six steps per key), or is the last
            for _ in range(6 * len(start or {}) + 2):
                breaks: list[State] = []
                continues: list[State] = []
                self.loops.append((breaks, continues))
                entry: State | None = start
                if node.test is not None and entry is not None:
                    entry, test_read = self.evaluate(node.test, entry)
                    if self.truth(node.test, test_read) is False:
                        self.run(node.body, None, self.decided(node.test, test_read, False))
                        entry = None
                end = self.run(node.body, entry, "")
                self.loops.pop()
                for more in continues:
                    end = _join(end, more)
                if node.test is not None:
                    end = _join(end, start)  # an item the filter skips
                ends = _join(state, end)
                for more in breaks:
                    ends = _join(ends, more)
                next_start = _join(start, fresh(end))
                if next_start == start:
                    break
                start = next_start
            else:
                raise _GiveUp
        if ends is None:
            return None
        # names set in the body are the loop's own; the state after it has their value from before
        after = {k: v for k, v in ends.items() if not (k[0] == "name" and k[1] in local)}
        for name in local:
            if ("name", name) in state:
                after[("name", name)] = state[("name", name)]
        after = {k: v for k, v in after.items() if not (k[0] == "attr" and k[1] in local_namespaces)}
        if node.else_:
            return _join(after, self.scoped(node.else_, after, node))
        return after

    @staticmethod
    def forget_namespace(state: State, name: str) -> None:
        for key in [k for k in state if k[0] == "attr" and k[1] == name]:
            del state[key]

    # --- expressions

    def evaluate(self, node: nodes.Node, state: State) -> tuple[State, State]:
        """Run the macro calls in expression ``node``: the state after it, and what is known at
        every point of it (where its values are read)."""
        if not self.inline or not any(self._macro_calls(node)):
            return state, state
        seen: list[State] = [state]
        after = self._calls(node, state, seen)
        read: State | None = None
        for s in seen:
            read = _join(read, s)
        assert read is not None
        return after, read

    def _macro_calls(self, node: nodes.Node) -> Iterator[nodes.Node]:
        for call in [node, *node.find_all(nodes.Call)]:
            if self._macro(call) is not None:
                yield call

    def _macro(self, node: nodes.Node) -> nodes.Macro | None:
        """The macro ``node`` calls, if it is a call of one."""
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name):
            return self.macros.get(node.node.name)
        return None

    def _calls(self, node: nodes.Node, state: State, seen: list[State]) -> State:
        """Run the macro calls under ``node`` in evaluation order."""
        optional: list[nodes.Node] = []
        if isinstance(node, nodes.CondExpr):
            optional = [node.expr1, *([node.expr2] if node.expr2 is not None else [])]
        elif isinstance(node, (nodes.And, nodes.Or)):
            optional = [node.right]
        for child in node.iter_child_nodes():
            if any(child is o for o in optional):
                joined = _join(state, self._calls(child, state, seen))
                assert joined is not None
                state = joined
            else:
                state = self._calls(child, state, seen)
        macro = self._macro(node)
        if macro is not None:
            state = self.call(macro, state)
            seen.append(state)
        return state

    def call(self, macro: nodes.Macro, state: State) -> State:
        """Run ``macro``'s body from the caller's namespace attributes; the caller goes on with
        the attributes it leaves (or those before, where the call fails)."""
        if macro.name in self.calling:
            raise _GiveUp  # recursion
        entry = {k: v for k, v in state.items() if k[0] == "attr" and k[1] in self.global_namespaces}
        memo = (macro.name, tuple(sorted(entry.items(), key=repr)))
        if memo not in self.memo:
            writes = self.writes
            self.calling.append(macro.name)
            loops, self.loops = self.loops, []
            end = self.run(macro.body, entry, "")
            self.loops = loops
            self.calling.pop()
            self.memo_writes[memo] = self.writes != writes
            self.memo[memo] = (
                None
                if end is None
                else {k: v for k, v in end.items() if k[0] == "attr" and k[1] in self.global_namespaces}
            )
        elif self.memo_writes[memo]:
            self.writes += 1
        end = self.memo[memo]
        kept = {k: v for k, v in state.items() if k[0] == "name" or k[1] not in self.global_namespaces}
        if end is None:
            return kept  # the body never ends (cannot happen without loops): nothing known
        return {**kept, **end}

    def value(self, node: nodes.Node, state: State) -> Any:
        """The value of ``node`` where it is the same in every render reaching it, else UNKNOWN."""
        if isinstance(node, nodes.Const):
            return node.value if isinstance(node.value, _SCALARS) else UNKNOWN
        if isinstance(node, (nodes.List, nodes.Tuple, nodes.Dict)):
            return EMPTY if not node.items else Kinds(frozenset((_TRUTHY,)))
        if isinstance(node, nodes.Name):
            return state.get(("name", node.name), UNKNOWN)
        if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
            if node.node.name in self.namespaces:
                return state.get(("attr", node.node.name, node.attr), UNKNOWN)
            return UNKNOWN
        if isinstance(node, nodes.Not):
            truth = self.truth(node.node, state)
            return UNKNOWN if truth is None else not truth
        if isinstance(node, nodes.CondExpr):
            truth = self.truth(node.test, state)
            if truth is True:
                return self.value(node.expr1, state)
            if truth is False:
                return self.value(node.expr2, state) if node.expr2 is not None else UNKNOWN
            return _from_kinds(self.kinds(node, state))
        if isinstance(node, nodes.Compare):
            length = self.length_is_positive(node, state)
            if length is not None:
                return length
            if len(node.ops) != 1 or node.ops[0].op not in ("eq", "ne"):
                return UNKNOWN
            left, right = self.value(node.expr, state), self.value(node.ops[0].expr, state)
            if any(v is UNKNOWN or v is EMPTY or isinstance(v, Kinds) for v in (left, right)):
                return UNKNOWN
            return (left == right) is (node.ops[0].op == "eq")
        if isinstance(node, nodes.Test) and not node.args and not node.kwargs:
            value = self.value(node.node, state)
            if value is UNKNOWN:
                return UNKNOWN
            if isinstance(value, Kinds):
                if node.name == "string":
                    return True if value.may <= _STRINGS else False if not value.may & _STRINGS else UNKNOWN
                if node.name in ("none", "defined", "undefined") and _FALSY not in value.may:
                    return node.name == "defined"  # none and undefined are false values
                return UNKNOWN
            if node.name == "none":
                return value is None
            if node.name in ("defined", "undefined"):
                return node.name == "defined"
            if node.name == "string" and value is not EMPTY:
                return isinstance(value, str)
            return UNKNOWN
        if isinstance(node, (nodes.And, nodes.Or)):
            left_truth = _truth(self.value(node.left, state))
            if left_truth is None:
                return _from_kinds(self.kinds(node, state))
            # ``a and b`` is ``a`` when ``a`` is false, else ``b``; ``a or b`` the other way round
            left_decides = (left_truth is False) is isinstance(node, nodes.And)
            return self.value(node.left if left_decides else node.right, state)
        return _from_kinds(self.kinds(node, state))

    def kinds(self, node: nodes.Node, state: State) -> frozenset[str]:
        """The kinds ``node``'s value may have in a render that goes on past it (an operation that
        raises ends the render)."""
        if isinstance(node, (nodes.Const, nodes.List, nodes.Tuple, nodes.Dict)):
            return _kinds_of(self.value(node, state))
        key = self.key(node)
        if key is not None:
            return _kinds_of(state.get(key, UNKNOWN))
        if isinstance(node, nodes.Concat):  # ``a ~ b``: each operand printed
            return _concat([_as_string(self.kinds(part, state)) for part in node.nodes])
        if isinstance(node, nodes.Add):  # with a string on one side, the other must be one
            left, right = self.kinds(node.left, state), self.kinds(node.right, state)
            if (left <= _STRINGS or right <= _STRINGS) and left & _STRINGS and right & _STRINGS:
                return _concat([left & _STRINGS, right & _STRINGS])
            return _ALL_KINDS
        if isinstance(node, nodes.CondExpr):
            truth = self.truth(node.test, state)
            expr1 = (
                self.kinds(node.expr1, self.refine(node.test, state, True))
                if truth is not False
                else frozenset()
            )
            expr2 = (
                frozenset((_FALSY,))
                if node.expr2 is None
                else self.kinds(node.expr2, self.refine(node.test, state, False))
            )
            return expr1 | (expr2 if truth is not True else frozenset())
        if isinstance(node, (nodes.And, nodes.Or)):  # the left operand, or the right one
            left, right = self.kinds(node.left, state), self.kinds(node.right, state)
            return (left & (_FALSE_KINDS if isinstance(node, nodes.And) else _TRUE_KINDS)) | right
        if isinstance(node, nodes.Filter) and node.node is not None and node.dyn_args is None:
            value = self.kinds(node.node, state)
            if node.name == "string" and not node.args and not node.kwargs:
                return _as_string(value)
            if node.name == "trim" and not node.args and not node.kwargs:
                return frozenset(_EMPTY_STR if kind == _BLANK else kind for kind in _as_string(value))
            if node.name in ("default", "d") and len(node.args) <= 2 and not node.kwargs:
                fallback = self.kinds(node.args[0], state) if node.args else frozenset((_EMPTY_STR,))
                boolean = len(node.args) == 2 and _true_constant(node.args[1])
                if boolean:  # a false value is replaced
                    return (value - _FALSE_KINDS) | (fallback if value & _FALSE_KINDS else frozenset())
                if len(node.args) < 2 or _true_constant(node.args[1], want=False):
                    return value | fallback  # only undefined is replaced
        return _ALL_KINDS

    def length_is_positive(self, node: nodes.Compare, state: State) -> bool | None:
        """``x|length > 0`` (or ``!= 0``, ``>= 1``, and their negations ``== 0``, ``< 1``,
        ``<= 0``) where ``x``'s kinds decide it: a non-empty string or a true value has a length
        above zero (or has none: the render raises); the empty string and undefined have zero."""
        if len(node.ops) != 1 or not isinstance(node.expr, nodes.Filter):
            return None
        length, operand = node.expr, node.ops[0]
        if length.name not in ("length", "count") or length.node is None or length.args or length.kwargs:
            return None
        if not isinstance(operand.expr, nodes.Const) or type(operand.expr.value) is not int:
            return None
        positive = {("gt", 0): True, ("ne", 0): True, ("gteq", 1): True}
        positive |= {("eq", 0): False, ("lteq", 0): False, ("lt", 1): False}
        want = positive.get((operand.op, operand.expr.value))
        if want is None:
            return None
        may = self.kinds(length.node, state)
        if may <= _TRUE_KINDS:
            return want
        if may <= frozenset((_EMPTY_STR,)):
            return not want
        return None

    def refine(self, test: nodes.Node, state: State, truth: bool) -> State:
        """``state`` where ``test`` has ``truth``: the kinds of the names it tests narrowed (a
        name already known as a constant keeps it)."""
        if isinstance(test, nodes.Not):
            return self.refine(test.node, state, not truth)
        if isinstance(test, (nodes.And, nodes.Or)):
            if isinstance(test, nodes.And) is truth:  # both operands have that truth
                return self.refine(test.right, self.refine(test.left, state, truth), truth)
            either = _join(self.refine(test.left, state, truth), self.refine(test.right, state, truth))
            assert either is not None
            return either
        key = self.key(test)
        if key is not None:  # the truth of the value itself
            return self.narrow(state, key, _TRUE_KINDS if truth else _FALSE_KINDS)
        if isinstance(test, nodes.Test) and test.name == "string" and not test.args and not test.kwargs:
            key = self.key(test.node)
            if key is not None:
                return self.narrow(state, key, _STRINGS if truth else _ALL_KINDS - _STRINGS)
        if isinstance(test, nodes.Compare) and len(test.ops) == 1:
            operand = test.ops[0]
            key = self.key(operand.expr)
            contains = (operand.op == "in") is truth
            if (
                key is not None
                and operand.op in ("in", "notin")
                and contains
                and isinstance(test.expr, nodes.Const)
                and isinstance(test.expr.value, str)
                and test.expr.value
            ):
                # a string holding a non-empty piece is not empty; a container holding it is true;
                # none, false, 0 and undefined hold nothing (or raise)
                inside = frozenset((_TEXT, _TRUTHY)) if test.expr.value.strip() else _TRUE_KINDS
                return self.narrow(state, key, inside)
        return state

    def key(self, node: nodes.Node) -> Key | None:
        """The state key of a name or a followed namespace attribute."""
        if isinstance(node, nodes.Name) and node.ctx == "load":
            return ("name", node.name)
        if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
            if node.node.name in self.namespaces:
                return ("attr", node.node.name, node.attr)
        return None

    @staticmethod
    def narrow(state: State, key: Key, allowed: frozenset[str]) -> State:
        value = state.get(key, UNKNOWN)
        if value is not UNKNOWN and not isinstance(value, Kinds):
            return state  # a constant says more
        narrowed = _kinds_of(value) & allowed
        if not narrowed or narrowed == _kinds_of(value):
            return state
        return {**state, key: _from_kinds(narrowed)}

    def truth(self, node: nodes.Node, state: State) -> bool | None:
        """Whether test ``node`` is true (``None``: it may be either)."""
        if isinstance(node, nodes.Not):
            truth = self.truth(node.node, state)
            return None if truth is None else not truth
        if isinstance(node, (nodes.And, nodes.Or)):
            left, right = self.truth(node.left, state), self.truth(node.right, state)
            decisive = isinstance(node, nodes.Or)  # ``or``: one true side decides; ``and``: one false
            if left is decisive or right is decisive:
                return decisive
            if left is not None and right is not None:
                return not decisive
            return None
        return _truth(self.value(node, state))

    def decided(self, test: nodes.Node, state: State, truth: bool, loop: bool = False) -> str:
        """Why a test has the same value in every render: the values it reads there."""
        facts: list[str] = []
        for read in [test, *test.find_all((nodes.Name, nodes.Getattr))]:
            if isinstance(read, (nodes.Name, nodes.Getattr)):
                value = self.value(read, state)
                if value is not UNKNOWN and (text := _text(read)) and not any(text in f for f in facts):
                    facts.append(f"{text} is {_shown(value)}")
        what = f"'{_text(test) or 'the test'}'"
        said = f"loops over {what}, which is empty" if loop else f"{what} is {str(truth).lower()}"
        where = f" ({', '.join(facts)} on every path there)" if facts else ""
        return f"{said} in every render{where}"


#: Filters that return a generator: ``tojson`` of one always raises (``json.dumps`` cannot
#: serialise it), whatever the input.
_GENERATOR_FILTERS = frozenset({"map", "select", "reject", "selectattr", "rejectattr"})


def _always_fails(node: nodes.Node) -> str | None:
    """The text of a sub-expression of ``node`` that raises in every render evaluating ``node``
    (``tools | map(attribute='function') | tojson``), if one is always evaluated."""
    if isinstance(node, nodes.Filter):
        inner = node.node
        if node.name == "tojson" and isinstance(inner, nodes.Filter) and inner.name in _GENERATOR_FILTERS:
            source = _text(inner.node) if inner.node is not None else None
            return f"{source or '…'} | {inner.name}(…) | tojson"
        return _always_fails(inner) if inner is not None else None
    if isinstance(node, nodes.Concat):
        return next((found for part in node.nodes if (found := _always_fails(part))), None)
    if isinstance(node, nodes.BinExpr) and not isinstance(node, (nodes.And, nodes.Or)):
        return _always_fails(node.left) or _always_fails(node.right)
    return None


def _namespace_call(node: nodes.Node) -> bool:
    return (
        isinstance(node, nodes.Call)
        and isinstance(node.node, nodes.Name)
        and node.node.name == "namespace"
        and not node.args
        and node.dyn_args is None
        and node.dyn_kwargs is None
    )


def _own_assigns(
    body: list[nodes.Node], scopes: tuple[type[nodes.Node], ...] = _SCOPES
) -> Iterator[nodes.Assign]:
    """The ``{% set %}`` statements of ``body``, not inside a nested scope."""
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.Assign):
            yield node
        if not isinstance(node, scopes):
            stack.extend(node.iter_child_nodes())


def _stored_names(body: list[nodes.Node]) -> set[str]:
    """Every name stored in ``body`` outside nested scopes (``{% set %}``, set blocks, with)."""
    names: set[str] = set()
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.Name) and node.ctx == "store":
            names.add(node.name)
        if not isinstance(node, (nodes.For, nodes.Macro, nodes.CallBlock)):
            stack.extend(node.iter_child_nodes())
    return names


def _target_names(target: nodes.Node) -> list[nodes.Name]:
    return [target] if isinstance(target, nodes.Name) else list(target.find_all(nodes.Name))


def _text(node: nodes.Node) -> str | None:
    """Jinja text for the simple expressions a proof names."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        inner = _text(node.node)
        return f"{inner}.{node.attr}" if inner else None
    if isinstance(node, nodes.Const):
        return _shown(node.value)
    if isinstance(node, nodes.Not):
        inner = _text(node.node)
        return f"not {inner}" if inner else None
    if isinstance(node, (nodes.And, nodes.Or)):
        left, right = _text(node.left), _text(node.right)
        word = "and" if isinstance(node, nodes.And) else "or"
        return f"({left} {word} {right})" if left and right else None
    if isinstance(node, nodes.Compare) and len(node.ops) == 1:
        left, right = _text(node.expr), _text(node.ops[0].expr)
        symbol = {"eq": "==", "ne": "!=", "lt": "<", "gt": ">", "lteq": "<=", "gteq": ">=", "in": "in"}
        op = symbol.get(node.ops[0].op, node.ops[0].op)
        return f"{left} {op} {right}" if left and right else None
    if isinstance(node, nodes.Test):
        inner = _text(node.node)
        return f"{inner} is {node.name}" if inner and not node.args else None
    if isinstance(node, nodes.Filter) and node.node is not None and not node.args and not node.kwargs:
        inner = _text(node.node)
        return f"{inner} | {node.name}" if inner else None
    return None


def _shown(value: Any) -> str:
    if value is EMPTY:
        return "empty"
    if isinstance(value, Kinds):
        return repr(value)
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return repr(value)


def _flow_dead(tree: nodes.Template) -> dict[int, str]:
    """``id`` of each output node :class:`_Flow` proves no render reaches, with the reason."""
    for inline in (True, False):
        try:
            flow = _Flow(tree, inline)
            flow.run_template()
        except _GiveUp:
            continue  # recursive macros or too much work: again, each macro body on its own
        return {node: why for node, why in flow.dead.items() if node not in flow.live}
    return {}
