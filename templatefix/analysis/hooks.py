"""The functions an instrumented template calls, and the render that hands them over.

``templatefix.analysis.instrument`` rewrites a template so that its outputs, loops and tests call
functions by the names below. One table (:meth:`Hooks.table`) gives them: :class:`Hooks` records
coverage alone (which outputs wrote text, which branch outcomes were taken) and passes everything
else through; :class:`TraceHooks` also records every emission, loop iteration, loop end and the
branch each top-level ``if`` took. Every hook returns its argument unchanged (or ``""`` where it
stands alone as an output), so the render is the original's.

Example:
    >>> hooks = Hooks()
    >>> hooks.table()[COVER](3, "text"), hooks.covered
    ('text', {3})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from templatefix import environment as hf_environment
from templatefix.analysis.records import Emission, Iteration, LoopState, Trace
from templatefix.errors import RenderError, TemplateRejected
from templatefix.jinja.guard import render_template
from templatefix.render import template_arguments

EMIT = "__templatefix_emit__"
PART = "__templatefix_part__"
ITERATION = "__templatefix_iteration__"
LOOP_END = "__templatefix_loop_end__"
TEST = "__templatefix_test__"
COVER = "__templatefix_cover__"
BRANCH = "__templatefix_branch__"


class Hooks:
    """The hooks of a coverage render: ``cover`` and ``branch`` record, the others pass through.

    Attributes:
        covered: the output sites that wrote text.
        outcomes: the ``(branch site, outcome)`` pairs taken.
    """

    def __init__(self) -> None:
        self.covered: set[int] = set()
        self.outcomes: set[tuple[int, int]] = set()
        self.events = 0

    def table(self) -> dict[str, Any]:
        """The variables that give the instrumented template its hooks."""
        return {
            EMIT: self.emit,
            PART: self.part,
            ITERATION: self.iteration,
            LOOP_END: self.loop_end,
            TEST: self.test,
            COVER: self.cover,
            BRANCH: self.branch,
        }

    def emit(
        self,
        atom_id: int,
        value: Any,
        scope: dict[str, Any],
        assigned: dict[str, Any],
        options: dict[str, Any] | None = None,
    ) -> Any:
        """A top-level output (atom ``atom_id``) wrote ``value``."""
        return value

    def part(self, atom_id: int, index: int, value: Any) -> Any:
        """Operand ``index`` of atom ``atom_id``'s ``+``/``~`` chain is ``value``."""
        return value

    def iteration(self, loop_id: int, item: Any, loop: Any) -> str:
        """Top-level loop ``loop_id`` starts an iteration on ``item``."""
        return ""

    def loop_end(self, loop_id: int) -> str:
        """Top-level loop ``loop_id`` ended."""
        return ""

    def test(self, if_id: int, index: int, count: int, value: Any) -> Any:
        """Test ``index`` of the ``count`` tests of top-level if chain ``if_id`` gave ``value``."""
        return value

    def cover(self, site: int, value: Any) -> Any:
        """Output site ``site`` produced ``value``; it counts as covered when that is not empty."""
        self.events += 1
        if site not in self.covered and str(value):
            self.covered.add(site)
        return value

    def branch(self, site: int, index: int, count: int, value: Any) -> Any:
        """Test ``index`` of branch site ``site`` gave ``value`` (outcome ``count``: none was true)."""
        self.events += 1
        if value:
            self.outcomes.add((site, index))
        elif index == count - 1:
            self.outcomes.add((site, count))
        return value


class TraceHooks(Hooks):
    """The hooks of a full trace: coverage, plus every emission, iteration and loop end.

    Args:
        chat: the message objects the template sees (to tell which hold the last message).
        loop_ifs: for each loop, the top-level if chains in its body (``Instrumented._ifs_by_loop``).
    """

    def __init__(self, chat: list[Any], loop_ifs: dict[int, list[int]]) -> None:
        super().__init__()
        self.chat = chat
        self.loop_ifs = loop_ifs
        self.emissions: list[Emission] = []
        self.iterations: list[Iteration] = []
        self.loop_ends: list[tuple[int, int]] = []
        self.pending_parts: dict[int, list[str]] = {}
        self.position = 0
        self.taken: dict[int, int] = {}  # if id -> taken branch (len(tests) when none), this iteration

    def result(self, text: str) -> Trace:
        """The trace of the render that produced ``text``."""
        return Trace(
            text, self.emissions, self.iterations, self.loop_ends, self.chat, self.covered, self.outcomes
        )

    def emit(
        self,
        atom_id: int,
        value: Any,
        scope: dict[str, Any],
        assigned: dict[str, Any],
        options: dict[str, Any] | None = None,
    ) -> Any:
        text = str(value)
        parts = self.pending_parts.pop(atom_id, None)
        ranges = None
        if parts is not None and "".join(parts) == text:
            ranges, cursor = [], 0
            for part in parts:
                ranges.append((cursor, cursor + len(part)))
                cursor += len(part)
        variables = {k: v for k, v in scope.items() if k != "loop"}
        # which loop variables hold the conversation's final message (for "last turn only")
        chat = self.chat
        # A template that assigns `messages` itself reads its own list there, not the conversation.
        rebound = options is not None and "messages" in options
        last_role = None
        if rebound:
            seen = (options or {}).get("messages")
            seen_list = list(seen) if isinstance(seen, (list, tuple)) else []
            last_role = _role_of(seen_list[-1]) if seen_list else None
            final = frozenset(k for k, v in variables.items() if seen_list and v is seen_list[-1])
        else:
            final = frozenset(k for k, v in variables.items() if chat and v is chat[-1])
        users = [i for i, m in enumerate(chat) if _role_of(m) == "user"]
        last_turn_messages = chat[users[-1] + 1:] if users else chat
        last_turn = frozenset(
            k for k, v in variables.items() if isinstance(v, dict) and any(v is m for m in last_turn_messages)
        )
        state = None
        if "loop" in scope:
            loop = scope["loop"]
            state = LoopState(
                loop.index0, loop.first, loop.last, _role_of(loop.previtem), _role_of(loop.nextitem)
            )
        start = self.position
        self.position += len(text)
        branches = dict(self.taken)
        # containers too: a list or mapping is true in Jinja exactly when it is non-empty
        truth = {
            k: bool(v)
            for k, v in assigned.items()
            if v is None or isinstance(v, (str, bool, int, float, list, tuple, dict))
        }
        plain = {k: v for k, v in (options or {}).items() if v is None or isinstance(v, (str, bool, int))}
        self.emissions.append(
            Emission(
                atom_id, start, self.position, ranges, variables, state, branches, final, truth,
                options=plain, last_turn=last_turn, rebound=rebound, last_role=last_role,
            )
        )
        return value

    def part(self, atom_id: int, index: int, value: Any) -> Any:
        self.pending_parts.setdefault(atom_id, []).append(str(value))
        return value

    def iteration(self, loop_id: int, item: Any, loop: Any) -> str:
        self.iterations.append(Iteration(loop_id, item, loop.index0, self.position))
        for if_id in self.loop_ifs.get(loop_id, ()):
            self.taken.pop(if_id, None)
        return ""

    def test(self, if_id: int, index: int, count: int, value: Any) -> Any:
        if value:
            self.taken[if_id] = index
        elif index == count - 1:
            self.taken[if_id] = count
        return value

    def loop_end(self, loop_id: int) -> str:
        self.loop_ends.append((loop_id, self.position))
        return ""


def template_variables(
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


def render_with_hooks(template: Any, variables: dict[str, Any], hooks: Hooks) -> str:
    """Render the instrumented ``template`` with ``variables`` and the table of ``hooks``, bounded.

    Raises:
        TemplateRejected: the template called ``raise_exception``.
        RenderError: any other failure while rendering (``RenderLimitExceeded`` past a bound).
    """
    variables.update(hooks.table())
    try:
        return render_template(template, **variables)
    except RenderError:
        raise  # RenderLimitExceeded keeps its message
    except Exception as error:  # the original decides whether this conversation is valid
        if type(error).__name__ == "TemplateError":
            raise TemplateRejected(f"template rejected the conversation: {error}") from None
        raise RenderError(f"template error: {type(error).__name__}: {error}") from None


def _role_of(item: Any) -> str | None:
    return item.get("role") if isinstance(item, dict) and isinstance(item.get("role"), str) else None
