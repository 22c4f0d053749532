"""The instrumented template: jinja2's AST rewritten so that every output reports what it wrote.

We rewrite jinja2's AST (never the text) so that every output in the *top-level output stream*
reports what it emitted:

- each child of an ``Output`` node (literal text or ``{{ expression }}``) becomes an *atom*;
- an expression that is a ``+``/``~`` chain also reports each operand (its *parts*), so a later
  edit can split it between operands;
- each ``for`` loop reports where every iteration starts and which item it is on, so we know which
  characters the iteration for message *j* produced (``templatefix.analysis.regions``).

Outputs inside macros, ``{% set %}`` blocks, ``{% call %}``/``{% filter %}`` bodies and recursive
loops are not top level: their text reaches the output through an expression at the call site,
which is the atom. (transformers' ``generation`` offsets are only right in the top-level stream,
so those are also the only places markers may go.) Existing ``{% generation %}`` blocks are made
transparent.

Coverage hooks reach further: every output site and branch site
(``templatefix.analysis.sites``) reports whether it wrote text and which outcome was taken;
:meth:`Instrumented.cover` records coverage alone (cheaper, for searching probe conversations).

The instrumented template renders byte-identically to the original: the hooks
(``templatefix.analysis.hooks``) return their argument unchanged and record on the side.

Example:
    >>> from templatefix.source import TemplateSource
    >>> source = TemplateSource.parse("{% for m in messages %}{{ m.role + ':' + m.content }}{% endfor %}")
    >>> result = Instrumented(source).trace([{"role": "user", "content": "hi"}])
    >>> result.text, [(e.start, e.end, e.part_ranges) for e in result.emissions]
    ('user:hi', [(0, 7, [(0, 4), (4, 5), (5, 7)])])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

from jinja2 import nodes

from templatefix import environment as hf_environment
from templatefix.analysis.hooks import (
    BRANCH,
    COVER,
    EMIT,
    ITERATION,
    LOOP_END,
    PART,
    TEST,
    Hooks,
    TraceHooks,
    render_with_hooks,
    template_variables,
)
from templatefix.analysis.records import Atom, CoverageTrace, IfChain, Trace
from templatefix.analysis.sites import Sites
from templatefix.jinja.guard import guard
from templatefix.jinja.sandbox import trusted_call
from templatefix.render import environment
from templatefix.source import TemplateSource, copy_tree

_N = TypeVar("_N", bound=nodes.Node)


class Instrumented:
    """A template compiled with recording hooks, plus the atoms and loops it reports on."""

    def __init__(self, source: TemplateSource) -> None:
        self.source = source
        self.atoms: list[Atom] = []
        self.loops: list[nodes.For] = []
        self.ifs: list[IfChain] = []
        self.sites = Sites(source)
        #: names the template assigns with ``{% set %}`` outside macros: a template argument of
        #: such a name (``{% set enable_thinking = enable_thinking if … else true %}``) is read
        #: at each output as the template sees it there (``Emission.options``).
        self.reassigned = _reassigned_names(source.ast)
        instrumented = copy_tree(source.ast)
        self._originals: dict[int, nodes.Node] = {}
        _pair_nodes(source.ast, instrumented, self._originals)
        _cover_conditional_expressions(instrumented, self._originals, self.sites)
        instrumented.body = self._transform_body(instrumented.body, loops=[], top_level=True)
        instrumented.set_environment(environment())
        with guard():  # jinja2 folds constant expressions while compiling
            self.template = environment().from_string(instrumented)

    def _original(self, node: _N) -> _N:
        """The node of ``source.ast`` that ``node`` of the instrumented copy was copied from."""
        # the copy has the original's shape, so its counterpart is a node of the same class
        return cast(_N, self._originals[id(node)])

    # -- AST transform -------------------------------------------------------------------------
    def _transform_body(
        self, body: list[nodes.Node], loops: list[nodes.For], top_level: bool
    ) -> list[nodes.Node]:
        result: list[nodes.Node] = []
        assigned: dict[str, nodes.Assign] = {}  # `{% set x = ... %}` directly followed by outputs
        for node in body:
            if hf_environment.is_generation_block(node):
                assigned.clear()
                result.extend(self._transform_body(node.body, loops, top_level))
                continue
            if isinstance(node, nodes.Output):
                if top_level:
                    self._instrument_output(node, loops, assigned)
                else:
                    _cover_output(node, self._originals, self.sites)
                result.append(node)
                continue
            assigned.clear()
            if isinstance(node, nodes.Assign) and isinstance(node.target, nodes.Name):
                assigned[node.target.name] = node
            result.extend(self._transform_statement(node, loops, top_level))
        return result

    def _transform_statement(
        self, node: nodes.Node, loops: list[nodes.For], top_level: bool
    ) -> list[nodes.Node]:
        if isinstance(node, nodes.For):
            inner_top = top_level and not node.recursive
            original_loop = self._original(node)
            loop_id = len(self.loops)
            self.loops.append(original_loop)
            inner_loops = [*loops, original_loop] if inner_top else loops
            node.body = self._transform_body(node.body, inner_loops, inner_top)
            node.else_ = self._transform_body(node.else_, loops, top_level)
            if not inner_top:
                return [node]
            marker = _call(ITERATION, nodes.Const(loop_id), _as_load(node.target), nodes.Name("loop", "load"))
            node.body.insert(0, nodes.Output([marker]).set_lineno(node.lineno))
            end = nodes.Output([_call(LOOP_END, nodes.Const(loop_id))]).set_lineno(node.lineno)
            return [node, end]
        transparent = isinstance(node, (nodes.If, nodes.With, nodes.Scope, nodes.ScopedEvalContextModifier))
        inner_top = top_level and transparent
        if isinstance(node, nodes.If) and top_level:
            self._instrument_if(node, loops)
        if isinstance(node, nodes.If):
            _cover_if(node, self._originals, self.sites)
        for name in ("body", "else_", "elif_"):
            children = getattr(node, name, None)
            if isinstance(children, list):
                if name == "elif_":
                    for elif_node in children:
                        elif_node.body = self._transform_body(elif_node.body, loops, inner_top)
                        elif_node.else_ = self._transform_body(elif_node.else_, loops, inner_top)
                else:
                    setattr(node, name, self._transform_body(children, loops, inner_top))
        return [node]

    def _instrument_if(self, node: nodes.If, loops: list[nodes.For]) -> None:
        """Record which branch of an if/elif chain is taken (conditions for markers reuse the tests)."""
        if_id = len(self.ifs)
        original = self._original(node)
        self.ifs.append(IfChain(if_id, original, [original.test] + [e.test for e in original.elif_], loops))
        branches = [node, *node.elif_]
        for index, branch in enumerate(branches):
            branch.test = _call(
                TEST, nodes.Const(if_id), nodes.Const(index), nodes.Const(len(branches)), branch.test
            )
            branch.test.set_lineno(node.lineno)

    def _instrument_output(
        self, output: nodes.Output, loops: list[nodes.For], assigned: dict[str, nodes.Assign] | None = None
    ) -> None:
        original_output = self._original(output)
        new_children: list[nodes.Expr] = []
        for child, original_child in zip(output.nodes, original_output.nodes, strict=True):
            inlined = None
            if isinstance(child, nodes.Name) and assigned and child.name in assigned:
                # `{% set x = a + b %}{{ x }}`: x is a+b here, so report (and later split) a and b.
                assign = assigned[child.name]
                inlined = self._originals[id(assign.node)]
                child = copy_tree(cast(nodes.Expr, assign.node))  # a `{% set %}` value is an expression
            parts, operators = flatten_chain(inlined if inlined is not None else original_child)
            atom = Atom(len(self.atoms), original_child, original_output, parts, operators, loops, inlined)
            self.atoms.append(atom)
            scope_pairs = []
            for loop in loops:
                for name in _target_names(loop.target):
                    scope_pairs.append(nodes.Pair(nodes.Const(name), nodes.Name(name, "load")))
            if loops:
                scope_pairs.append(nodes.Pair(nodes.Const("loop"), nodes.Name("loop", "load")))
            targets = {name for loop in loops for name in _target_names(loop.target)}
            set_pairs = [
                nodes.Pair(nodes.Const(name), nodes.Name(name, "load"))
                for name in sorted(_assigned_names(loops[-1]) - targets if loops else ())
            ]
            value = child
            if len(parts) > 1:
                value = self._wrap_parts(child, atom.id)
            site = self.sites.output_ids[id(original_child)]
            value = _call(COVER, nodes.Const(site), value)
            option_pairs = [
                nodes.Pair(nodes.Const(name), nodes.Name(name, "load"))
                for name in sorted(self.reassigned - targets - {"loop"})
            ]
            new_children.append(
                _call(
                    EMIT, nodes.Const(atom.id), value, nodes.Dict(scope_pairs), nodes.Dict(set_pairs),
                    nodes.Dict(option_pairs),
                )
            )
        output.nodes = new_children
        output.set_lineno(output.lineno)

    def _wrap_parts(self, expression: nodes.Expr, atom_id: int) -> nodes.Expr:
        """Wrap each operand of the chain in a recording call that returns it unchanged."""
        counter = [0]

        def wrap(node: nodes.Expr) -> nodes.Expr:
            if isinstance(node, nodes.Add):
                node.left = wrap(node.left)
                node.right = wrap(node.right)
                return node
            if isinstance(node, nodes.Concat):
                node.nodes = [wrap(n) for n in node.nodes]
                return node
            index = counter[0]
            counter[0] += 1
            return _call(PART, nodes.Const(atom_id), nodes.Const(index), node)

        return wrap(expression)

    def _ifs_by_loop(self) -> dict[int, list[int]]:
        """For each loop, the if chains inside its body (forgotten when a new iteration starts)."""
        index = {id(loop): loop_id for loop_id, loop in enumerate(self.loops)}
        result: dict[int, list[int]] = {}
        for chain in self.ifs:
            for loop in chain.loops:
                result.setdefault(index[id(loop)], []).append(chain.id)
        return result

    # -- rendering ----------------------------------------------------------------------------
    def trace(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        special_tokens: Mapping[str, Any] | None = None,
        **template_kwargs: Any,
    ) -> Trace:
        """Render with hooks; the text equals ``render(...)`` of the original template."""
        loop_ifs = self._ifs_by_loop()
        chat, variables = template_variables(
            messages, add_generation_prompt, tools, documents, special_tokens, template_kwargs
        )
        hooks = TraceHooks(chat, loop_ifs)
        return hooks.result(render_with_hooks(self.template, variables, hooks))

    def cover(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        special_tokens: Mapping[str, Any] | None = None,
        **template_kwargs: Any,
    ) -> CoverageTrace:
        """Render with the coverage hooks only: which outputs wrote text, which outcomes were taken.

        The text equals ``render(...)`` of the original template.

        Raises:
            TemplateRejected: the template called ``raise_exception``.
            RenderError: any other failure while rendering.
        """
        _, variables = template_variables(
            messages, add_generation_prompt, tools, documents, special_tokens, template_kwargs
        )
        hooks = Hooks()
        text = render_with_hooks(self.template, variables, hooks)
        return CoverageTrace(text, hooks.covered, hooks.outcomes, hooks.events)


def _cover_output(output: nodes.Output, originals: dict[int, nodes.Node], sites: Sites) -> None:
    """Wrap each child of a (copied) ``Output`` in the coverage hook."""
    children = []
    for child in output.nodes:
        original = originals.get(id(child))
        site = sites.output_ids.get(id(original)) if original is not None else None
        children.append(child if site is None else _call(COVER, nodes.Const(site), child))
    output.nodes = children


def _cover_if(node: nodes.If, originals: dict[int, nodes.Node], sites: Sites) -> None:
    """Wrap each test of a (copied) if/elif chain in the branch hook."""
    site = sites.branch_ids.get(id(originals.get(id(node))))
    if site is None:
        return
    branches = [node, *node.elif_]
    for index, branch in enumerate(branches):
        branch.test = _call(
            BRANCH, nodes.Const(site), nodes.Const(index), nodes.Const(len(branches)), branch.test
        ).set_lineno(node.lineno)


def _cover_conditional_expressions(tree: nodes.Node, originals: dict[int, nodes.Node], sites: Sites) -> None:
    """Wrap the test of every ``a if c else b`` in the (copied) tree in the branch hook."""
    for node in list(tree.find_all(nodes.CondExpr)):
        site = sites.branch_ids.get(id(originals.get(id(node))))
        if site is not None:
            test = _call(BRANCH, nodes.Const(site), nodes.Const(0), nodes.Const(1), node.test)
            test.set_lineno(node.lineno)
            node.test = test


def flatten_chain(node: nodes.Node) -> tuple[list[nodes.Node], list[str]]:
    """Operands and operators of a ``+``/``~`` chain, left to right (``a + (b ~ c)`` → a, b, c)."""
    if isinstance(node, nodes.Add):
        left, left_ops = flatten_chain(node.left)
        right, right_ops = flatten_chain(node.right)
        return left + right, left_ops + ["+"] + right_ops
    if isinstance(node, nodes.Concat):
        parts: list[nodes.Node] = []
        operators: list[str] = []
        for index, child in enumerate(node.nodes):
            child_parts, child_ops = flatten_chain(child)
            if index:
                operators.append("~")
            parts.extend(child_parts)
            operators.extend(child_ops)
        return parts, operators
    return [node], []


def _set_names(roots: list[nodes.Node]) -> set[str]:
    """Names ``{% set name = … %}`` assigns under ``roots``, not in macros and call blocks."""
    found: set[str] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if isinstance(node, (nodes.Macro, nodes.CallBlock)):
            continue
        if isinstance(node, nodes.Assign) and isinstance(node.target, nodes.Name):
            found.add(node.target.name)
        stack.extend(node.iter_child_nodes())
    return found


def _reassigned_names(tree: nodes.Template) -> frozenset[str]:
    """Names ``{% set name = … %}`` assigns anywhere outside macros and call blocks."""
    return frozenset(_set_names([tree]))


_ASSIGNED: dict[int, frozenset[str]] = {}


def _assigned_names(loop: nodes.For) -> frozenset[str]:
    """Names that ``{% set name = … %}`` assigns in a loop's body (not in macros inside it)."""
    names = _ASSIGNED.get(id(loop))
    if names is None:
        names = _ASSIGNED[id(loop)] = frozenset(_set_names(list(loop.body)) - {"loop"})
    return names


def _pair_nodes(original: nodes.Node, duplicate: nodes.Node, mapping: dict[int, nodes.Node]) -> None:
    mapping[id(duplicate)] = original
    for a, b in zip(original.iter_child_nodes(), duplicate.iter_child_nodes(), strict=True):
        _pair_nodes(a, b, mapping)


def _call(name: str, *args: nodes.Node) -> nodes.Call:
    """A call of the hook ``name`` (a plain Python call, not a sandboxed one: ``trusted_call``)."""
    return trusted_call(name, list(args))


def _target_names(target: nodes.Node) -> list[str]:
    if isinstance(target, nodes.Name):
        return [target.name]
    if isinstance(target, nodes.Tuple):
        return [name for item in target.items for name in _target_names(item)]
    return []


def _as_load(target: nodes.Node) -> nodes.Node:
    if isinstance(target, nodes.Name):
        return nodes.Name(target.name, "load")
    if isinstance(target, nodes.Tuple):
        return nodes.Tuple([_as_load(item) for item in target.items], "load")
    return nodes.Const(None)
