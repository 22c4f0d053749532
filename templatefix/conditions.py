"""Path conditions: under which tests each output of a template is written, read from the AST.

:class:`PathConditions` gives the *path condition* of each output:

- the tests of the enclosing ``{% if %}``/``{% elif %}`` branches, earlier branches of the chain
  negated (``{% else %}``: all of them negated);
- the filter of an enclosing ``{% for %}`` and the loop's iterable being non-empty;
- for an output in a macro, the conditions of each call site (one alternative per call site);
- for a test on a local name or ``namespace`` attribute (``{% set ns.found = true %}``), the
  conditions of the assignments that give it the wanted value.

:func:`explain` gives the path condition of an output as text, for the report of an output no
probe reached; where the condition is contradictory (the same test wanted both ways on the same
values, or one value compared equal to two constants) it says so. :func:`unsatisfiable` names
the outputs no render can write. ``templatefix.solve`` turns the conditions into conversations.

Example:
    >>> explain("{% if a %}{% if not a %}x{% endif %}{% endif %}", 0)
    'a and not a [unsatisfiable: the same test is wanted true and false on one path]'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import meta, nodes
from jinja2.visitor import NodeVisitor

from templatefix.flags import STANDARD_NAMES, template_reads
from templatefix.reads import Path, name_resolver
from templatefix.source import TemplateSource
from templatefix.template import ChatTemplate

#: At most this many alternatives (call sites, assignments) per output.
MAX_ALTERNATIVES = 8
_DEPTH = 3  # macro call sites and flag assignments followed this deep


@dataclass(frozen=True)
class Atom:
    """One test on the way to an output, and the value it must have there.

    ``kind``: ``"test"`` (``node`` is the test expression), ``"nonempty"`` (``node`` is a
    ``for`` loop's iterable, which must have an element), ``"writes"`` (``node`` is the output
    itself, whose values must be there for it to write text).
    """

    node: nodes.Node
    want: bool
    kind: str = "test"

    @property
    def key(self) -> tuple[int, bool, str]:
        return (id(self.node), self.want, self.kind)


Condition = tuple[Atom, ...]


# --- path conditions ---------------------------------------------------------------------------


class _Conditions(NodeVisitor):
    """One walk of the tree: the atoms enclosing every output node, macro call site and
    assignment."""

    def __init__(self, macros: set[str]) -> None:
        self.macros = macros
        self.stack: list[Atom] = []
        self.macro: str | None = None
        self.outputs: dict[int, tuple[str | None, Condition]] = {}
        self.calls: dict[str, list[tuple[str | None, Condition]]] = {}
        self.assigns: dict[str, list[tuple[nodes.Node | None, str | None, Condition]]] = {}
        self.loops: list[nodes.Node] = []  # the iterables of the enclosing for loops
        self.loop_of: dict[int, nodes.Node] = {}  # id(test reading ``loop``) -> its loop's iterable

    def generic_visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        for child in node.iter_child_nodes():
            self.visit(child)

    def _within(self, atoms: Sequence[Atom], body: Sequence[nodes.Node]) -> None:
        self.stack.extend(atoms)
        for child in body:
            self.visit(child)
        del self.stack[len(self.stack) - len(atoms) :]

    def visit_Output(self, node: nodes.Output) -> None:
        for child in node.nodes:
            self.outputs[id(child)] = (self.macro, tuple(self.stack))
            self.visit(child)

    def visit_If(self, node: nodes.If) -> None:
        negated: list[Atom] = []
        for branch in [node, *node.elif_]:
            self.visit(branch.test)
            if self.loops and any(name.name == "loop" for name in branch.test.find_all(nodes.Name)):
                for part in [branch.test, *branch.test.find_all(nodes.Expr)]:
                    self.loop_of[id(part)] = self.loops[-1]
            self._within([*negated, Atom(branch.test, True)], branch.body)
            negated.append(Atom(branch.test, False))
        self._within(negated, node.else_)

    def visit_For(self, node: nodes.For) -> None:
        self.visit(node.iter)
        atoms = [Atom(node.iter, True, "nonempty")]
        if node.test is not None:
            atoms.append(Atom(node.test, True))
        self.loops.append(node.iter)
        self._within(atoms, node.body)
        self.loops.pop()
        self._within([], node.else_)

    def visit_Macro(self, node: nodes.Macro) -> None:
        saved = (self.stack, self.macro, self.loops)
        self.stack, self.macro, self.loops = [], node.name, []
        for default in node.defaults:
            self.visit(default)
        self._within([], node.body)
        self.stack, self.macro, self.loops = saved

    def visit_Call(self, node: nodes.Call) -> None:
        if isinstance(node.node, nodes.Name) and node.node.name in self.macros:
            self.calls.setdefault(node.node.name, []).append((self.macro, tuple(self.stack)))
        self.generic_visit(node)

    def visit_Assign(self, node: nodes.Assign) -> None:
        target = node.target
        if isinstance(target, nodes.Name):
            self.assigns.setdefault(target.name, []).append((node.node, self.macro, tuple(self.stack)))
        elif isinstance(target, nodes.NSRef):
            key = f"{target.name}.{target.attr}"
            self.assigns.setdefault(key, []).append((node.node, self.macro, tuple(self.stack)))
        else:
            for name in target.find_all(nodes.Name):
                self.assigns.setdefault(name.name, []).append((None, self.macro, tuple(self.stack)))
        self.generic_visit(node)

    def visit_AssignBlock(self, node: nodes.AssignBlock) -> None:
        if isinstance(node.target, nodes.Name):
            self.assigns.setdefault(node.target.name, []).append((None, self.macro, tuple(self.stack)))
        self.generic_visit(node)


class PathConditions:
    """The path conditions of every output of one template (see the module docstring).

    Example:
        >>> from jinja2 import Environment
        >>> tree = Environment().parse("{% if a %}x{% elif b %}y{% endif %}")
        >>> y = tree.body[0].elif_[0].body[0].nodes[0]
        >>> [(atom.node.name, atom.want) for atom in PathConditions(tree).of(y)[0]]
        [('a', False), ('b', True)]
    """

    def __init__(self, tree: nodes.Template) -> None:
        macros = {macro.name for macro in tree.find_all(nodes.Macro)}
        self.walk = _Conditions(macros)
        self.walk.visit(tree)

    def of(self, node: nodes.Node) -> list[Condition]:
        """The alternative conditions under which ``node`` (a child of an ``Output``) is written."""
        found = self.walk.outputs.get(id(node))
        if found is None:
            return []
        macro, condition = found
        return self._in_context(macro, condition, 0)

    def _in_context(self, macro: str | None, condition: Condition, depth: int) -> list[Condition]:
        if macro is None:
            return [condition]
        if depth >= _DEPTH:
            return [condition]
        result: list[Condition] = []
        # call sites outside the macro first: a recursive macro's own calls would fill the
        # alternatives with chains that stop at the depth limit, never reaching the template's
        # call that gives them their value
        sites = sorted(self.walk.calls.get(macro, []), key=lambda site: site[0] == macro)
        for caller, at_call in sites:
            for outer in self._in_context(caller, at_call, depth + 1):
                result.append(outer + condition)
                if len(result) >= MAX_ALTERNATIVES:
                    return result
        return result or [condition]

    def assignments(self, key: str) -> list[tuple[nodes.Node | None, list[Condition]]]:
        """Every ``{% set %}`` of ``key`` (a name, or ``ns.attr``): its value node (``None`` when
        it is not a plain expression) and the conditions under which it runs."""
        return [
            (value, self._in_context(macro, condition, 1))
            for value, macro, condition in self.walk.assigns.get(key, [])
        ]


# --- describing --------------------------------------------------------------------------------


def atom_text(source: TemplateSource, atom: Atom) -> str:
    """How ``atom`` reads in the template: ``not (x is defined)``, ``xs is not empty``."""
    span = source.spans.get(atom.node)
    expression = " ".join(source.text[span[0] : span[1]].split()) if span else type(atom.node).__name__
    if len(expression) > 90:
        expression = expression[:44] + "…" + expression[-44:]
    if atom.kind == "nonempty":
        return f"{expression} has an element"
    return expression if atom.want else f"not ({expression})"


def contradiction(condition: Condition, assigned: set[str]) -> str | None:
    """Why ``condition`` cannot hold, or ``None`` when no contradiction is proven.

    Proven only on tests whose names the template never assigns with ``{% set %}`` (so every
    test on the path sees the same values): the same test wanted true and false, or one
    expression compared equal to two different constants.
    """
    wanted: dict[str, bool] = {}
    equal: dict[str, Any] = {}
    for atom in condition:
        if atom.kind != "test":
            continue
        node, want = atom.node, atom.want
        while isinstance(node, nodes.Not):
            node, want = node.node, not want
        atom = Atom(node, want)
        names = {name.name for name in atom.node.find_all(nodes.Name)}
        if isinstance(atom.node, nodes.Name):
            names.add(atom.node.name)
        if names & assigned or "loop" in names or any(True for _ in atom.node.find_all(nodes.Call)):
            continue  # a value that may change between the tests (a call may give another answer)
        dump = _dump(atom.node)
        if wanted.get(dump, atom.want) != atom.want:
            return "the same test is wanted true and false on one path"
        wanted[dump] = atom.want
        if atom.want and isinstance(atom.node, nodes.Compare) and len(atom.node.ops) == 1:
            operand = atom.node.ops[0]
            if operand.op == "eq" and isinstance(operand.expr, nodes.Const):
                side = _dump(atom.node.expr)
                if side in equal and equal[side] != operand.expr.value:
                    return f"one value compared equal to {equal[side]!r} and {operand.expr.value!r}"
                equal[side] = operand.expr.value
    return None


def _dump(node: nodes.Node) -> str:
    return repr(node)


def analysis(template: ChatTemplate) -> tuple[Any, PathConditions, Callable[[nodes.Node], set[Path]]]:
    """The instrumented template, the path conditions of its tree and a name resolver on it
    (built once per template)."""
    return template.resolve(_analysis)


def _analysis(template: ChatTemplate) -> tuple[Any, PathConditions, Callable[[nodes.Node], set[Path]]]:
    from templatefix.analysis.regions import instrumented_for

    instrumented = instrumented_for(template)
    tree = instrumented.source.ast
    roots = tuple(sorted(template_reads(template) - STANDARD_NAMES))
    return instrumented, PathConditions(tree), name_resolver(tree, roots)


def explain(template: ChatTemplate | str, site_id: int) -> str:
    """The path condition of output ``site_id`` as text (alternatives joined by `` | or | ``),
    with the contradiction that makes it unsatisfiable when one is proven."""
    instrumented, conditions, _ = analysis(ChatTemplate.of(template))
    site = instrumented.sites.outputs[site_id]
    assigned = _assigned_names(instrumented.source.ast)
    parts = []
    for condition in conditions.of(site.node)[:3]:
        atoms = [atom_text(instrumented.source, atom) for atom in condition]
        atoms = [f"({atom})" if " or " in atom and not atom.startswith("not (") else atom for atom in atoms]
        described = " and ".join(atoms) if atoms else "no enclosing test (it wrote no text in any probe)"
        reason = contradiction(condition, assigned)
        parts.append(f"{described} [unsatisfiable: {reason}]" if reason else described)
    return " | or | ".join(parts)


def _constant_names(tree: nodes.Template) -> dict[str, Any]:
    """Names the template sets to one constant (a text, number or boolean) every time it binds
    them: their value where the template reads them after setting them (a proposal only: a
    caller may pass the name too, and the render decides)."""
    binds: dict[str, int] = {}
    for name in tree.find_all(nodes.Name):
        if name.ctx in ("store", "param"):
            binds[name.name] = binds.get(name.name, 0) + 1
    values: dict[str, list[Any]] = {}
    for assign in tree.find_all(nodes.Assign):
        if isinstance(assign.target, nodes.Name) and isinstance(assign.node, nodes.Const):
            if isinstance(assign.node.value, (str, int, float, bool)):
                values.setdefault(assign.target.name, []).append(assign.node.value)
    return {
        name: found[0]
        for name, found in values.items()
        if len(found) == binds.get(name, 0) and len(set(found)) == 1
    }


def _assigned_names(tree: nodes.Template) -> set[str]:
    """Names the template binds itself (``{% set %}``, loop targets, macro parameters)."""
    names = {node.name for node in tree.find_all(nodes.Name) if node.ctx in ("store", "param")}
    names |= {node.name for node in tree.find_all(nodes.NSRef)}
    return names


def unsatisfiable(template: ChatTemplate | str, site_id: int) -> str | None:
    """Why no render can write output ``site_id``, or ``None`` when that is not proven.

    See :func:`_unsatisfiable_sites`.
    """
    return ChatTemplate.of(template).resolve(_unsatisfiable_sites).get(site_id)


def _unsatisfiable_sites(template: ChatTemplate) -> dict[int, str]:
    """The outputs no render can write, with the reason.

    Proven when every alternative of its path condition (or, in a macro, the condition inside
    the macro, which every call needs) holds a contradiction (:func:`contradiction`) or a test
    that is false in every render (:func:`_never`): a message field tested ``is none`` while
    the installed transformers drops message keys whose value is ``None``.
    """
    instrumented, conditions, _ = analysis(template)
    tree = instrumented.source.ast
    assigned = _assigned_names(tree)
    messages = _MessageNames(tree)
    proven: dict[int, str] = {}
    for site in instrumented.sites.outputs:
        found = conditions.walk.outputs.get(id(site.node))
        if found is None:
            continue
        macro, inner = found
        alternatives = [inner] if macro is not None else conditions.of(site.node)
        reasons = []
        for condition in alternatives:
            reason = contradiction(condition, assigned)
            if reason is None:
                reason = next(
                    (r for atom in condition if (r := _never(atom.node, atom.want, messages))), None
                )
            if reason is None:
                break
            reasons.append(reason)
        else:
            if reasons:
                proven[site.id] = reasons[0]
    return proven


class _MessageNames:
    """The names that always hold a message of ``messages`` (loop targets over ``messages``, or
    slices and selections of it, never bound another way)."""

    def __init__(self, tree: nodes.Template) -> None:
        self.names: set[str] = set()
        self.never_none: set[str] = set()
        self.iterated: dict[str, int] = {}  # field -> index of the first such top-level statement
        self.top: dict[int, int] = {}  # id(node) -> index of its top-level statement (not in macros)
        self.inside_macros: set[int] = set()
        stores: dict[str, list[nodes.Node]] = {}
        for node in tree.find_all((nodes.For, nodes.Assign, nodes.Macro, nodes.CallBlock, nodes.With)):
            if isinstance(node, nodes.For):
                for stored in (
                    node.target.find_all(nodes.Name) if not isinstance(node.target, nodes.Name) else []
                ):
                    stores.setdefault(stored.name, []).append(node.target)  # a tuple target: not a message
                if isinstance(node.target, nodes.Name):
                    stores.setdefault(node.target.name, []).append(node)
            elif isinstance(node, nodes.Assign):
                for stored in (
                    [node.target] if isinstance(node.target, nodes.Name) else node.target.find_all(nodes.Name)
                ):
                    stores.setdefault(stored.name, []).append(node.target)
            elif isinstance(node, (nodes.Macro, nodes.CallBlock)):
                for argument in node.args:
                    stores.setdefault(argument.name, []).append(argument)
            elif isinstance(node, nodes.With):
                for target in node.targets:
                    for stored in (
                        target.find_all(nodes.Name) if not isinstance(target, nodes.Name) else [target]
                    ):
                        stores.setdefault(stored.name, []).append(target)
        messages_stores = stores.get("messages", [])
        if not all(self._list_assign(tree, store) for store in messages_stores):
            return  # ``messages`` rebound to something else than a part of itself
        for name, bound in stores.items():
            if bound and all(isinstance(b, nodes.For) and _messages_list(b.iter) for b in bound):
                self.names.add(name)
        # local names set only to message fields (never None once transformers drops None keys)
        # or to pieces of a split text, and never read from the caller
        values: dict[str, list[nodes.Node | None]] = {}
        for assign in tree.find_all(nodes.Assign):
            if isinstance(assign.target, nodes.Name):
                values.setdefault(assign.target.name, []).append(assign.node)
        # jinja2's search folds constants into the tree it walks: this is the instrumented
        # template's own copy of the AST (``instrumented_for``), and what follows reads it folded
        # (a slice with constant bounds, ``messages[1:]``, is one constant there, not a ``Slice``)
        undeclared = meta.find_undeclared_variables(tree)
        for name, bound in stores.items():
            if name in undeclared or name not in values or len(values[name]) != len(bound):
                continue  # read from the caller, or bound other than by ``{% set %}``
            if all(_message_field(value, self) is not None or _split_piece(value) for value in values[name]):
                self.never_none.add(name)
        # top-level loops over ``messages`` that loop over a field of every message: a render
        # gets past them only if that field is iterable on every message
        for index, statement in enumerate(tree.body):
            if isinstance(statement, nodes.Macro):
                continue
            for inner in [statement, *statement.find_all(nodes.Node)]:
                self.top[id(inner)] = index
            if isinstance(statement, nodes.For) and isinstance(statement.target, nodes.Name):
                if (
                    statement.test is None
                    and _messages_list(statement.iter)
                    and statement.target.name in self.names
                ):
                    for inner in statement.body:
                        if isinstance(inner, nodes.For):
                            field = _field_of(inner.iter, statement.target.name)
                            if field is not None:
                                self.iterated.setdefault(field, index)
        self.inside_macros = {
            id(node) for macro in tree.find_all(nodes.Macro) for node in macro.find_all(nodes.Node)
        }

    def iterated_before(self, field: str, node: nodes.Node) -> bool:
        """Whether every message's ``field`` was looped over before ``node`` runs."""
        index = self.iterated.get(field)
        if index is None or id(node) in self.inside_macros:
            return False
        return self.top.get(id(node), -1) > index

    @staticmethod
    def _list_assign(tree: nodes.Template, target: nodes.Node) -> bool:
        for assign in tree.find_all(nodes.Assign):
            if assign.target is target:
                return _messages_list(assign.node)
        return False


def _messages_list(node: nodes.Node) -> bool:
    """``messages``, a slice of it, or a selection of its elements."""
    if isinstance(node, nodes.Name):
        return node.name == "messages"
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice):
        return _messages_list(node.node)
    if isinstance(node, nodes.Filter) and node.node is not None:
        if node.name in ("select", "reject", "selectattr", "rejectattr", "list", "reverse"):
            return _messages_list(node.node)
    return False


def _never(node: nodes.Node, want: bool, messages: _MessageNames) -> str | None:
    """Why test ``node`` can never have the value ``want``, or ``None`` when not proven."""
    if isinstance(node, nodes.Not):
        return _never(node.node, not want, messages)
    if isinstance(node, (nodes.And, nodes.Or)):
        left, right = _never(node.left, want, messages), _never(node.right, want, messages)
        if isinstance(node, nodes.And) == want:  # both sides must have ``want``
            return left or right
        return left if left and right else None
    if isinstance(node, nodes.Test) and node.name == "iterable" and not want:
        field = _message_field(node.node, messages)
        if field is not None and messages.iterated_before(field, node):
            return (
                f"message field {field!r} tested 'is not iterable' after an earlier loop over it on "
                "every message: a render with a field that is not iterable fails in that loop"
            )
    if isinstance(node, nodes.Test) and node.name == "none" and want and not node.args:
        if isinstance(node.node, nodes.Name) and node.node.name in messages.never_none:
            return (
                f"{node.node.name!r} tested 'is none' but every value it is set to is a message field "
                "(transformers drops message keys whose value is None) or text split from one"
            )
        field = _message_field(node.node, messages)
        if field is not None and detected_drops_none():
            return (
                f"message field {field!r} tested 'is none': transformers drops message keys whose "
                "value is None, so the test is false in every render"
            )
    return None


def _split_piece(node: nodes.Node | None) -> bool:
    """``x.split(...)[i]`` (or ``rsplit``): a text, or the render fails."""
    if not isinstance(node, nodes.Getitem) or not isinstance(node.node, nodes.Call):
        return False
    callee = node.node.node
    return isinstance(callee, nodes.Getattr) and callee.attr in ("split", "rsplit")


def _field_of(node: nodes.Node, name: str) -> str | None:
    """The key when ``node`` is ``name.key`` or ``name['key']``."""
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == name:
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name) and node.node.name == name:
        if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            return node.arg.value
    return None


def _message_field(node: nodes.Node | None, messages: _MessageNames) -> str | None:
    """The key when ``node`` is ``m.key`` or ``m['key']`` on a name always holding a message."""
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
        return node.attr if node.node.name in messages.names else None
    if isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name):
        if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            return node.arg.value if node.node.name in messages.names else None
    return None


def detected_drops_none() -> bool:
    """Whether the installed ``apply_chat_template`` drops ``None``-valued message keys."""
    from templatefix.environment import detected_behaviour

    return detected_behaviour().drops_none
