"""What an instrumented render reports: atoms, emissions, loop iterations, coverage.

These are the records of ``templatefix.analysis.instrument.Instrumented`` (what it instruments)
and of its ``trace``/``cover`` renders (what they saw).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jinja2 import nodes


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
        last_turn: the names in ``scope`` that hold a message of the conversation's last turn
            (no user message comes after it).
        assigned: the truth of each plain value (text, number, flag, none, list, mapping) that a
            ``{% set %}`` in the innermost loop's body names, as the output sees it
            (``reasoning_content``).
        options: the plain value of each name the template assigns outside macros, as the output
            sees it (absent: undefined there), so a template argument the template gives a default
            (``enable_thinking``) is known as the template reads it.
        rebound: whether the template assigns ``messages`` itself (``{% set messages =
            messages[1:] %}``), so that ``messages`` at this output is the list it sees here, not
            necessarily the conversation; ``final`` and ``last_role`` then refer to that list.
        last_role: the role of the last item of ``messages`` as the output sees it (``None`` for
            an empty list or an item without a role); set only when ``rebound``.
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
    options: dict[str, Any] = field(default_factory=dict)
    last_turn: frozenset[str] = frozenset()
    rebound: bool = False
    last_role: str | None = None


@dataclass
class Iteration:
    """One iteration of a top-level loop: which loop, its item and index, where its text starts."""

    loop: int
    item: Any
    index0: int
    start: int


@dataclass
class Trace:
    """What :meth:`Instrumented.trace` saw: the text, every emission, iteration and loop end."""

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
    events: int = 0  # outputs written and tests evaluated: the work the render took
