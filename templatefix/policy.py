"""Training policies (SPEC §6). Each option's default comes first.

Example:
    >>> Policy(turns="last").turns
    'last'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

TurnsPolicy = Literal["all", "last"]
ReasoningPolicy = Literal["trained", "not_trained", "final_channel_only"]
WhitespacePolicy = Literal["out", "in"]
ToolCallsPolicy = Literal["trained", "not_trained"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "turns": ("all", "last"),
    "reasoning": ("trained", "not_trained", "final_channel_only"),
    "trailing_whitespace": ("out", "in"),
    "tool_calls": ("trained", "not_trained"),
}


@dataclass(frozen=True)
class Policy:
    """What to train.

    Attributes:
        turns: ``all`` assistant turns, or only the ``last`` one.
        reasoning: ``trained``; ``not_trained`` (reasoning text is outside the span);
            ``final_channel_only`` (gpt-oss: only ``final`` messages are trained; elsewhere the
            same as ``not_trained``).
        trailing_whitespace: whitespace after the end-of-turn text is ``out`` of or ``in`` the span.
        tool_calls: tool calls the assistant writes are ``trained`` or ``not_trained``.
    """

    turns: TurnsPolicy = "all"
    reasoning: ReasoningPolicy = "trained"
    trailing_whitespace: WhitespacePolicy = "out"
    tool_calls: ToolCallsPolicy = "trained"

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"policy {name}={value!r}: choose one of {', '.join(choices)}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> Policy:
        """Build from keyword arguments, rejecting unknown names with a clear message."""
        unknown = set(kwargs) - set(_CHOICES)
        if unknown:
            raise ValueError(f"unknown policy option(s): {', '.join(sorted(unknown))}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @property
    def is_default(self) -> bool:
        return self == Policy()
