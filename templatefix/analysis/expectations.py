"""What the oracle answers: where each assistant turn's span must lie in the full render.

``templatefix.oracle.expected_turns`` fills these records; the verifier and the patcher read them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from templatefix.render import Span

TurnKind = Literal["exact", "rewritten", "mismatch"]


class ProbeLike(Protocol):
    """What the oracle needs from a probe (``templatefix.conversation.Probe`` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def messages(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def kwargs(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class TurnExpectation:
    """Where one assistant message's span must lie in the full render ``R``.

    Attributes:
        message_index: index of the assistant message in the probe conversation.
        kind: ``exact`` | ``rewritten`` | ``mismatch`` (see module docstring).
        trained: whether the policy trains this message; untrained ones must have no span.
        start: first character of the span in ``R``.
        end_out: span end with trailing whitespace out (the default policy).
        end_in: span end with trailing whitespace in.
        end: the end the policy chose (``end_out`` or ``end_in``).
        end_of_turn: the end-of-turn text (``<|im_end|>``…) as seen in ``R``, may be empty.
        end_of_turn_range: where that text lies in ``R`` (``None`` if not found).
        located_by: how the end was found: ``prefix`` (exact), ``trace``, ``end-of-turn``,
            ``next-message`` or ``end-of-render``.
        note: human explanation for rewritten / mismatch turns.
        blank: ``G`` is only whitespace (a tool call the template does not render, an empty
            reply): nothing is owed, so no span or one within ``[start, end_in)`` are both right.
        open_end: ``G`` ends with words, not an end-of-turn token: its trailing whitespace is
            part of the message's own text, so an end anywhere in ``[end_out, end_in]`` is right.
        pieces: the ranges of ``R`` the span must cover, in order: ``(start, end)`` alone for most
            turns; several when the policy leaves part of the turn out from the middle (tool
            calls) or the turn writes text after other messages' text (Gemma 4's answer after
            the tool results); none when nothing of the turn is trained. ``None``: ``(start,
            end)`` if trained.
    """

    message_index: int
    kind: TurnKind
    trained: bool
    start: int
    end_out: int
    end_in: int
    end: int
    end_of_turn: str
    end_of_turn_range: Span | None
    located_by: str
    note: str = ""
    blank: bool = False
    open_end: bool = False
    pieces: tuple[Span, ...] | None = None

    @property
    def span(self) -> Span | None:
        """The expected span, or ``None`` when the policy does not train this message (for a
        turn in several pieces, from the first piece's start to the last one's end)."""
        spans = self.spans
        return (spans[0][0], spans[-1][1]) if spans else None

    @property
    def spans(self) -> list[Span]:
        """The ranges the span must cover (see ``pieces``)."""
        if not self.trained:
            return []
        return list(self.pieces) if self.pieces is not None else [(self.start, self.end)]

    @property
    def single(self) -> bool:
        """Whether the expected span is the one range ``(start, end)`` (or nothing, untrained)."""
        return not self.trained or self.spans == [(self.start, self.end)]

    def to_json(self) -> dict[str, Any]:
        return {
            "message_index": self.message_index,
            "kind": self.kind,
            "trained": self.trained,
            "start": self.start,
            "end": self.end,
            "end_out": self.end_out,
            "end_in": self.end_in,
            "end_of_turn": self.end_of_turn,
            "end_of_turn_range": list(self.end_of_turn_range) if self.end_of_turn_range else None,
            "located_by": self.located_by,
            "note": self.note,
            "blank": self.blank,
            "open_end": self.open_end,
            "pieces": [list(piece) for piece in self.spans],
        }


@dataclass
class ProbeExpectation:
    """The oracle's answer for one probe.

    Attributes:
        probe_name: the probe's name.
        text: the full render ``R`` of the original template.
        turns: one entry per assistant message, in message order.
        renders: every render the oracle made, keyed ``(number of messages, add_generation_prompt)``;
            the verifier renders the patched template with the same arguments (SPEC rule 1).
    """

    probe_name: str
    text: str
    turns: list[TurnExpectation] = field(default_factory=list)
    renders: dict[tuple[int, bool], str] = field(default_factory=dict)

    @property
    def spans(self) -> list[Span]:
        """Expected spans of the trained turns, in order."""
        return [span for turn in self.turns for span in turn.spans]
