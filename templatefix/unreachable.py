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

Example:
    >>> from jinja2 import Environment
    >>> tree = Environment().parse(
    ...     "{% set seen = false %}{% for x in xs %}{% set seen = true %}{% endfor %}"
    ...     "{% if seen %}dead{% endif %}")
    >>> [node.data for node in dead_outputs(tree)]
    ['dead']
"""

from __future__ import annotations

from collections.abc import Iterator

from jinja2 import nodes

#: Nodes whose body is a scope of its own for ``{% set %}``.
_SCOPES = (nodes.For, nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.Scope, nodes.With)


def dead_outputs(tree: nodes.Template) -> list[nodes.Node]:
    """The output nodes (``TemplateData`` and expressions of ``{{ }}``) in always-false branches."""
    found: list[nodes.Node] = []
    for scope in _scopes(tree):
        _visit(_body(scope), _assignments(scope), set(), found)
    return found


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
