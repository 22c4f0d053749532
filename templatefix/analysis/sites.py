"""Every output and branch of a template, numbered in source order (what coverage counts).

An :class:`OutputSite` is an output that writes text (literal text or ``{{ expression }}``, at top
level or inside macros, ``{% set %}`` blocks and nested loops); a :class:`BranchSite` is an
``{% if %}`` chain or an ``a if c else b`` anywhere. The instrumented template
(``templatefix.analysis.instrument``) reports which outputs wrote text and which branch outcomes
were taken, by these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from jinja2 import nodes

from templatefix.source import TemplateSource


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
        span = self.source.spans.get(node)
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
        for inner in node.iter_child_nodes():
            if id(inner) in elifs:
                self._visit_elif(cast(nodes.If, inner), macro)  # one of ``node.elif_``
            else:
                self._visit(inner, macro)

    def _visit_elif(self, node: nodes.If, macro: str | None) -> None:
        for child in node.iter_child_nodes():
            self._visit(child, macro)

    def _branch(self, node: nodes.Node, count: int) -> None:
        site = BranchSite(len(self.branches), node, self._line(node), count)
        self.branch_ids[id(node)] = site.id
        self.branches.append(site)
