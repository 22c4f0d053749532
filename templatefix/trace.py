"""Instrumented rendering: which piece of the template produced which characters.

We rewrite jinja2's AST (never the text) so that every output in the *top-level output stream*
reports what it emitted:

- each child of an ``Output`` node (literal text or ``{{ expression }}``) becomes an *atom*;
- an expression that is a ``+``/``~`` chain also reports each operand (its *parts*), so a later
  edit can split it between operands;
- each ``for`` loop reports where every iteration starts and which item it is on, so we know which
  characters the iteration for message *j* produced (``message_regions``).

Outputs inside macros, ``{% set %}`` blocks, ``{% call %}``/``{% filter %}`` bodies and recursive
loops are not top level: their text reaches the output through an expression at the call site,
which is the atom. (transformers' ``generation`` offsets are only right in the top-level stream,
so those are also the only places markers may go.) Existing ``{% generation %}`` blocks are made
transparent.

Coverage hooks reach further: every output of the template that writes text (literal text or
``{{ expression }}``, at top level or inside macros, ``{% set %}`` blocks and nested loops) is an
:class:`OutputSite`, and every ``{% if %}`` chain and ``a if c else b`` anywhere is a
:class:`BranchSite`. A trace records which outputs wrote text and which branch outcomes were
taken; :meth:`Instrumented.cover` records coverage alone (cheaper, for searching probe
conversations).

The instrumented template renders byte-identically to the original: the hooks return their
argument unchanged and record on the side. ``trace`` checks this on every call.

Example:
    >>> from templatefix.source import TemplateSource
    >>> source = TemplateSource.parse("{% for m in messages %}{{ m.role + ':' + m.content }}{% endfor %}")
    >>> result = trace(source, [{"role": "user", "content": "hi"}])
    >>> result.text, [(e.start, e.end, e.part_ranges) for e in result.emissions]
    ('user:hi', [(0, 7, [(0, 4), (4, 5), (5, 7)])])
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import nodes

from templatefix import environment as hf_environment
from templatefix import limits
from templatefix.errors import RenderError, TemplateRejected
from templatefix.render import environment, template_arguments
from templatefix.source import TemplateSource

_EMIT = "__templatefix_emit__"
_PART = "__templatefix_part__"
_ITERATION = "__templatefix_iteration__"
_LOOP_END = "__templatefix_loop_end__"
_TEST = "__templatefix_test__"
_COVER = "__templatefix_cover__"
_BRANCH = "__templatefix_branch__"


@dataclass(frozen=True)
class OutputSite:
    """One output of the template anywhere in it: literal text or a ``{{ expression }}``.

    Attributes:
        id: index in ``Sites.outputs`` (source order).
        node: the output's node in ``TemplateSource.ast``.
        line: its line in the template.
        literal: literal text (``TemplateData``), as opposed to an expression.
        raises: the expression is a ``raise_exception(...)`` call: it never writes text.
        macro: the macro it is in (``None`` outside macros).
    """

    id: int
    node: nodes.Node
    line: int
    literal: bool
    raises: bool
    macro: str | None


@dataclass(frozen=True)
class BranchSite:
    """An ``{% if %}…{% elif %}…{% else %}`` chain or a conditional expression.

    Outcome ``i < count`` is "test ``i`` was true"; outcome ``count`` is "no test was true" (the
    ``else`` branch, or nothing).
    """

    id: int
    node: nodes.Node
    line: int
    count: int


class Sites:
    """Every output and branch of a template, numbered in source order.

    Example:
        >>> sites = Sites(TemplateSource.parse("{% macro m() %}x{% endmacro %}\\n{{ m() if a else 'y' }}"))
        >>> [(site.line, site.literal, site.macro) for site in sites.outputs]
        [(1, True, 'm'), (2, False, None)]
        >>> [site.count for site in sites.branches]
        [1]
    """

    def __init__(self, source: TemplateSource) -> None:
        self.source = source
        self.outputs: list[OutputSite] = []
        self.branches: list[BranchSite] = []
        self.output_ids: dict[int, int] = {}  # id(original node) -> site id
        self.branch_ids: dict[int, int] = {}
        self._visit(source.ast, None)

    def _line(self, node: nodes.Node) -> int:
        span = getattr(node, "tf_span", None)
        return self.source.line_of(span[0]) if span is not None else 0

    def _visit(self, node: nodes.Node, macro: str | None) -> None:
        if isinstance(node, nodes.Macro):
            macro = node.name
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                raises = (
                    isinstance(child, nodes.Call)
                    and isinstance(child.node, nodes.Name)
                    and child.node.name == "raise_exception"
                )
                literal = isinstance(child, nodes.TemplateData)
                site = OutputSite(len(self.outputs), child, self._line(child), literal, raises, macro)
                self.output_ids[id(child)] = site.id
                self.outputs.append(site)
        if isinstance(node, nodes.If):
            self._branch(node, 1 + len(node.elif_))
        elif isinstance(node, nodes.CondExpr):
            self._branch(node, 1)
        elifs = {id(branch) for branch in node.elif_} if isinstance(node, nodes.If) else set()
        for child in node.iter_child_nodes():
            if id(child) in elifs:
                self._visit_elif(child, macro)
            else:
                self._visit(child, macro)

    def _visit_elif(self, node: nodes.If, macro: str | None) -> None:
        for child in node.iter_child_nodes():
            self._visit(child, macro)

    def _branch(self, node: nodes.Node, count: int) -> None:
        site = BranchSite(len(self.branches), node, self._line(node), count)
        self.branch_ids[id(node)] = site.id
        self.branches.append(site)


@dataclass
class IfChain:
    """A top-level ``{% if %}…{% elif %}…`` chain whose taken branch each emission knows."""

    id: int
    node: nodes.If
    tests: list[nodes.Node]
    loops: list[nodes.For]


@dataclass
class Atom:
    """One child of a top-level ``Output`` node.

    Attributes:
        id: index in ``Instrumented.atoms``.
        node: the child node in ``TemplateSource.ast`` (``TemplateData`` or an expression).
        output: the enclosing ``Output`` node.
        parts: the operands of a ``+``/``~`` chain, in order (``[node]`` when not a chain).
        operators: the operator between consecutive parts (``"+"`` or ``"~"``).
        loops: enclosing ``for`` nodes, outermost first.
    """

    id: int
    node: nodes.Node
    output: nodes.Output
    parts: list[nodes.Node]
    operators: list[str]
    loops: list[nodes.For]
    inlined: nodes.Node | None = None  # the ``{% set %}`` value a bare variable output stands for

    @property
    def is_literal(self) -> bool:
        return isinstance(self.node, nodes.TemplateData)


@dataclass(frozen=True)
class LoopState:
    """The innermost ``loop`` object at an emission: its flags and its neighbours' roles."""

    index0: int
    first: bool
    last: bool
    previous_role: str | None
    next_role: str | None


@dataclass
class Emission:
    """Characters ``[start, end)`` of the render came from ``atom``.

    Attributes:
        atom: the atom's index in ``Instrumented.atoms``.
        start: first character in the render.
        end: one past the last character.
        part_ranges: each part's range (relative to ``start``) when the parts' texts join to the
            whole (always for ``~``; for ``+`` only when the operands were strings), else ``None``.
        scope: the enclosing loops' targets by name (``message``, ``tool_call``…).
        loop: the innermost loop's state, ``None`` outside any loop.
        branches: for each top-level if/elif chain decided in the current iteration, the index of
            the branch taken (``len(tests)`` when none was).
        final: the names in ``scope`` that hold the conversation's last message.
        assigned: the truth of each plain value (text, number, flag, none) that a ``{% set %}`` in
            the innermost loop's body names, as the output sees it (``reasoning_content``).
    """

    atom: int
    start: int
    end: int
    part_ranges: list[tuple[int, int]] | None
    scope: dict[str, Any]
    loop: LoopState | None = None
    branches: dict[int, int] = field(default_factory=dict)
    final: frozenset[str] = frozenset()
    assigned: dict[str, bool] = field(default_factory=dict)


@dataclass
class Iteration:
    loop: int
    item: Any
    index0: int
    start: int


@dataclass
class Trace:
    text: str
    emissions: list[Emission]
    iterations: list[Iteration]
    loop_ends: list[tuple[int, int]] = field(default_factory=list)  # (loop id, offset)
    messages: list[Any] = field(default_factory=list)  # the message objects the template saw
    covered: set[int] = field(default_factory=set)  # output sites that wrote text
    outcomes: set[tuple[int, int]] = field(default_factory=set)  # (branch site, outcome) taken


@dataclass
class CoverageTrace:
    """What :meth:`Instrumented.cover` saw: the text, the outputs that wrote text, the outcomes."""

    text: str
    covered: set[int]
    outcomes: set[tuple[int, int]]


class Instrumented:
    """A template compiled with recording hooks, plus the atoms and loops it reports on."""

    def __init__(self, source: TemplateSource) -> None:
        self.source = source
        self.atoms: list[Atom] = []
        self.loops: list[nodes.For] = []
        self.ifs: list[IfChain] = []
        self.sites = Sites(source)
        instrumented = copy_tree(source.ast)
        self._originals: dict[int, nodes.Node] = {}
        _pair_nodes(source.ast, instrumented, self._originals)
        _cover_conditional_expressions(instrumented, self._originals, self.sites)
        instrumented.body = self._transform_body(instrumented.body, loops=[], top_level=True)
        instrumented.set_environment(environment())
        with limits.guard():  # jinja2 folds constant expressions while compiling
            self.template = environment().from_string(instrumented)

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
            original_loop = self._originals[id(node)]
            loop_id = len(self.loops)
            self.loops.append(original_loop)
            inner_loops = [*loops, original_loop] if inner_top else loops
            node.body = self._transform_body(node.body, inner_loops, inner_top)
            node.else_ = self._transform_body(node.else_, loops, top_level)
            if not inner_top:
                return [node]
            marker = _call(
                _ITERATION, nodes.Const(loop_id), _as_load(node.target), nodes.Name("loop", "load")
            )
            node.body.insert(0, nodes.Output([marker]).set_lineno(node.lineno))
            end = nodes.Output([_call(_LOOP_END, nodes.Const(loop_id))]).set_lineno(node.lineno)
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
        original = self._originals[id(node)]
        self.ifs.append(IfChain(if_id, original, [original.test] + [e.test for e in original.elif_], loops))
        branches = [node, *node.elif_]
        for index, branch in enumerate(branches):
            branch.test = _call(
                _TEST, nodes.Const(if_id), nodes.Const(index), nodes.Const(len(branches)), branch.test
            )
            branch.test.set_lineno(node.lineno)

    def _instrument_output(
        self, output: nodes.Output, loops: list[nodes.For], assigned: dict[str, nodes.Assign] | None = None
    ) -> None:
        original_output = self._originals[id(output)]
        new_children: list[nodes.Node] = []
        for child, original_child in zip(output.nodes, original_output.nodes, strict=True):
            inlined = None
            if isinstance(child, nodes.Name) and assigned and child.name in assigned:
                # `{% set x = a + b %}{{ x }}`: x is a+b here, so report (and later split) a and b.
                assign = assigned[child.name]
                inlined = self._originals[id(assign.node)]
                child = copy_tree(assign.node)
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
            value = _call(_COVER, nodes.Const(site), value)
            new_children.append(
                _call(_EMIT, nodes.Const(atom.id), value, nodes.Dict(scope_pairs), nodes.Dict(set_pairs))
            )
        output.nodes = new_children
        output.set_lineno(output.lineno)

    def _wrap_parts(self, expression: nodes.Node, atom_id: int) -> nodes.Node:
        """Wrap each operand of the chain in a recording call that returns it unchanged."""
        counter = [0]

        def wrap(node: nodes.Node) -> nodes.Node:
            if isinstance(node, (nodes.Add, nodes.Concat)):
                if isinstance(node, nodes.Add):
                    node.left = wrap(node.left)
                    node.right = wrap(node.right)
                else:
                    node.nodes = [wrap(n) for n in node.nodes]
                return node
            index = counter[0]
            counter[0] += 1
            return _call(_PART, nodes.Const(atom_id), nodes.Const(index), node)

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
        emissions: list[Emission] = []
        iterations: list[Iteration] = []
        loop_ends: list[tuple[int, int]] = []
        pending_parts: dict[int, list[str]] = {}
        position = [0]
        taken: dict[int, int] = {}  # if id -> taken branch (len(tests) when none), this iteration
        loop_ifs = self._ifs_by_loop()

        def emit(atom_id: int, value: Any, scope: dict[str, Any], assigned: dict[str, Any]) -> Any:
            text = str(value)
            parts = pending_parts.pop(atom_id, None)
            ranges = None
            if parts is not None and "".join(parts) == text:
                ranges, cursor = [], 0
                for part in parts:
                    ranges.append((cursor, cursor + len(part)))
                    cursor += len(part)
            variables = {k: v for k, v in scope.items() if k != "loop"}
            # which loop variables hold the conversation's final message (for "last turn only")
            final = frozenset(k for k, v in variables.items() if chat and v is chat[-1])
            state = None
            if "loop" in scope:
                loop = scope["loop"]
                state = LoopState(
                    loop.index0, loop.first, loop.last, _role_of(loop.previtem), _role_of(loop.nextitem)
                )
            start = position[0]
            position[0] += len(text)
            branches = dict(taken)
            truth = {k: bool(v) for k, v in assigned.items() if v is None or isinstance(v, (str, bool, int))}
            emissions.append(
                Emission(atom_id, start, position[0], ranges, variables, state, branches, final, truth)
            )
            return value

        def part(atom_id: int, index: int, value: Any) -> Any:
            pending_parts.setdefault(atom_id, []).append(str(value))
            return value

        def iteration(loop_id: int, item: Any, loop: Any) -> str:
            iterations.append(Iteration(loop_id, item, loop.index0, position[0]))
            for if_id in loop_ifs.get(loop_id, ()):
                taken.pop(if_id, None)
            return ""

        def test(if_id: int, index: int, count: int, value: Any) -> Any:
            if value:
                taken[if_id] = index
            elif index == count - 1:
                taken[if_id] = count
            return value

        def loop_end(loop_id: int) -> str:
            loop_ends.append((loop_id, position[0]))
            return ""

        covered: set[int] = set()
        outcomes: set[tuple[int, int]] = set()
        chat, variables = _variables(
            messages, add_generation_prompt, tools, documents, special_tokens, template_kwargs
        )
        variables.update(
            {
                _EMIT: emit,
                _PART: part,
                _ITERATION: iteration,
                _LOOP_END: loop_end,
                _TEST: test,
                **_coverage_hooks(covered, outcomes),
            }
        )
        text = _render(self.template, variables)
        return Trace(text, emissions, iterations, loop_ends, chat, covered, outcomes)

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
        covered: set[int] = set()
        outcomes: set[tuple[int, int]] = set()
        _, variables = _variables(
            messages, add_generation_prompt, tools, documents, special_tokens, template_kwargs
        )
        variables.update(
            {
                _EMIT: _emit_value,
                _PART: _last_value,
                _ITERATION: _nothing,
                _LOOP_END: _nothing,
                _TEST: _last_value,
                **_coverage_hooks(covered, outcomes),
            }
        )
        text = _render(self.template, variables)
        return CoverageTrace(text, covered, outcomes)


def _variables(
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool,
    tools: Sequence[Mapping[str, Any]] | None,
    documents: Sequence[Mapping[str, Any]] | None,
    special_tokens: Mapping[str, Any] | None,
    template_kwargs: Mapping[str, Any],
) -> tuple[list[Any], dict[str, Any]]:
    """The message objects and the variables a render gets, prepared as transformers does."""
    inputs = hf_environment.prepare_inputs(
        messages, tools, documents, template_arguments(special_tokens, **template_kwargs)
    )
    return inputs.messages, dict(inputs.variables(add_generation_prompt))


def _render(template: Any, variables: dict[str, Any]) -> str:
    try:
        return limits.render_template(template, **variables)
    except RenderError:
        raise  # RenderLimitExceeded keeps its message
    except Exception as error:  # the original decides whether this conversation is valid
        if type(error).__name__ == "TemplateError":
            raise TemplateRejected(f"template rejected the conversation: {error}") from None
        raise RenderError(f"template error: {type(error).__name__}: {error}") from None


def _emit_value(atom_id: int, value: Any, scope: Any, assigned: Any) -> Any:
    """An ``emit`` hook that records nothing."""
    return value


def _last_value(*arguments: Any) -> Any:
    """A ``part``/``test`` hook that records nothing: the value is the last argument."""
    return arguments[-1]


def _nothing(*arguments: Any) -> str:
    return ""


def _coverage_hooks(covered: set[int], outcomes: set[tuple[int, int]]) -> dict[str, Any]:
    """The two coverage hooks, recording into ``covered`` and ``outcomes``."""

    def cover(site: int, value: Any) -> Any:
        if site not in covered and str(value):
            covered.add(site)
        return value

    def branch(site: int, index: int, count: int, value: Any) -> Any:
        if value:
            outcomes.add((site, index))
        elif index == count - 1:
            outcomes.add((site, count))
        return value

    return {_COVER: cover, _BRANCH: branch}


def _cover_output(output: nodes.Output, originals: dict[int, nodes.Node], sites: Sites) -> None:
    """Wrap each child of a (copied) ``Output`` in the coverage hook."""
    children = []
    for child in output.nodes:
        original = originals.get(id(child))
        site = sites.output_ids.get(id(original)) if original is not None else None
        children.append(child if site is None else _call(_COVER, nodes.Const(site), child))
    output.nodes = children


def _cover_if(node: nodes.If, originals: dict[int, nodes.Node], sites: Sites) -> None:
    """Wrap each test of a (copied) if/elif chain in the branch hook."""
    site = sites.branch_ids.get(id(originals.get(id(node))))
    if site is None:
        return
    branches = [node, *node.elif_]
    for index, branch in enumerate(branches):
        branch.test = _call(
            _BRANCH, nodes.Const(site), nodes.Const(index), nodes.Const(len(branches)), branch.test
        ).set_lineno(node.lineno)


def _cover_conditional_expressions(tree: nodes.Node, originals: dict[int, nodes.Node], sites: Sites) -> None:
    """Wrap the test of every ``a if c else b`` in the (copied) tree in the branch hook."""
    for node in list(tree.find_all(nodes.CondExpr)):
        site = sites.branch_ids.get(id(originals.get(id(node))))
        if site is not None:
            node.test = _call(
                _BRANCH, nodes.Const(site), nodes.Const(0), nodes.Const(1), node.test
            ).set_lineno(node.lineno)


def copy_tree(node: nodes.Node) -> nodes.Node:
    """A deep copy of a jinja2 AST that shares, never copies, the environment its nodes point at.

    Parsed nodes keep a reference to their environment; copying it would copy transformers'
    generation extension (and whatever state it holds, e.g. a ``ContextVar``, which cannot be copied).
    """
    shared = {
        id(env): env
        for n in (node, *node.find_all(nodes.Node))
        if (env := n.__dict__.get("environment")) is not None
    }
    return copy.deepcopy(node, memo=shared)


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


def message_regions(
    template: str | TemplateSource,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, Any] | None = None,
    **template_kwargs: Any,
) -> tuple[str, list[tuple[int, int] | None]]:
    """The render, and per message the characters its loop iteration produced (None if unknown).

    The iteration for message *j* is the one whose loop item equals message *j* (as the template
    sees it); its region runs to the next iteration of the same loop, or the loop's end. When
    several loops visit the messages, the one that emits text for them wins.

    Example:
        >>> message_regions("{% for m in messages %}[{{ m.content }}]{% endfor %}!",
        ...                 [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
        ('[a][b]!', [(0, 3), (3, 6)])
    """
    instrumented = instrumented_for(template)
    result = instrumented.trace(
        messages,
        add_generation_prompt=add_generation_prompt,
        special_tokens=special_tokens,
        **template_kwargs,
    )
    chat = result.messages
    regions: list[tuple[int, int] | None] = [None] * len(chat)
    for loop_id in range(len(instrumented.loops)):
        for item, start, end in iteration_bounds(result, loop_id):
            # The very object the template was given; equal copies only when that is unambiguous
            # (two empty assistant messages are equal but are different turns).
            matches = [i for i, message in enumerate(chat) if item is message]
            if not matches and isinstance(item, dict):
                equal = [i for i, message in enumerate(chat) if item == message]
                matches = equal if len(equal) == 1 else []
            for index in matches:
                current = regions[index]
                if current is None or (current[1] - current[0]) < (end - start):
                    regions[index] = (start, end)
    return result.text, regions


def iteration_bounds(result: Trace, loop_id: int) -> list[tuple[Any, int, int]]:
    """(item, start, end) for each iteration of one loop, in order."""
    iterations = [it for it in result.iterations if it.loop == loop_id]
    ends = sorted(offset for lid, offset in result.loop_ends if lid == loop_id)
    bounds = []
    for index, it in enumerate(iterations):
        if index + 1 < len(iterations) and iterations[index + 1].index0 > it.index0:
            end = iterations[index + 1].start
        else:
            end = next((offset for offset in ends if offset >= it.start), len(result.text))
        bounds.append((it.item, it.start, end))
    return bounds


_CACHE: dict[str, Instrumented] = {}


def instrumented_for(source: TemplateSource | str) -> Instrumented:
    """Build (and cache by text) the instrumented template; a text is parsed only on a miss."""
    text = source.text if isinstance(source, TemplateSource) else source
    cached = _CACHE.get(text)
    if cached is None:
        if len(_CACHE) > 64:
            _CACHE.clear()
        parsed = source if isinstance(source, TemplateSource) else TemplateSource.parse(source)
        cached = _CACHE[text] = Instrumented(parsed)
    return cached


_ASSIGNED: dict[int, frozenset[str]] = {}


def _assigned_names(loop: nodes.For) -> frozenset[str]:
    """Names that ``{% set name = … %}`` assigns in a loop's body (not in macros inside it)."""
    names = _ASSIGNED.get(id(loop))
    if names is None:
        found = set()
        stack = list(loop.body)
        while stack:
            node = stack.pop()
            if isinstance(node, (nodes.Macro, nodes.CallBlock)):
                continue
            if isinstance(node, nodes.Assign) and isinstance(node.target, nodes.Name):
                found.add(node.target.name)
            stack.extend(node.iter_child_nodes())
        names = _ASSIGNED[id(loop)] = frozenset(found - {"loop"})
    return names


def _role_of(item: Any) -> str | None:
    return item.get("role") if isinstance(item, dict) and isinstance(item.get("role"), str) else None


def _pair_nodes(original: nodes.Node, duplicate: nodes.Node, mapping: dict[int, nodes.Node]) -> None:
    mapping[id(duplicate)] = original
    for a, b in zip(original.iter_child_nodes(), duplicate.iter_child_nodes(), strict=True):
        _pair_nodes(a, b, mapping)


def _call(name: str, *args: nodes.Node) -> nodes.Call:
    return nodes.Call(nodes.Name(name, "load"), list(args), [], None, None)


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
