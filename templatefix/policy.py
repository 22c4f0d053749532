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


#: Names a message field cannot have in a Jinja test (``m.role`` decides the turn anyway).
_RESERVED = frozenset(
    {"role", "true", "false", "none", "True", "False", "None", "not", "and", "or", "is", "in", "if", "else"}
)


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
        train_field: a message field that gates training per turn (e.g. ``"train"``): an
            assistant message whose field is ``false`` is not trained; absent or true, it is.
            ``None`` (default): no such field. The patched template tests the field itself, so
            the render never changes.
    """

    turns: TurnsPolicy = "all"
    reasoning: ReasoningPolicy = "trained"
    trailing_whitespace: WhitespacePolicy = "out"
    tool_calls: ToolCallsPolicy = "trained"
    train_field: str | None = None

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"policy {name}={value!r}: choose one of {', '.join(choices)}")
        field_name = self.train_field
        if field_name is not None and not (
            isinstance(field_name, str) and field_name.isidentifier() and field_name not in _RESERVED
        ):
            raise ValueError(f"policy train_field={field_name!r}: give a message field name (an identifier)")

    def trains(self, message: Any) -> bool:
        """Whether ``train_field`` lets this message be trained (``false`` is the only no).

        Example:
            >>> Policy(train_field="train").trains({"role": "assistant", "train": False})
            False
        """
        if self.train_field is None or not hasattr(message, "get"):
            return True
        return message.get(self.train_field) is not False

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> Policy:
        """Build from keyword arguments, rejecting unknown names with a clear message."""
        unknown = set(kwargs) - set(_CHOICES) - {"train_field"}
        if unknown:
            raise ValueError(f"unknown policy option(s): {', '.join(sorted(unknown))}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_default(self) -> bool:
        return self == Policy()
