"""Training policies (SPEC §6). Each option's default comes first.

Example:
    >>> Policy(turns="last").turns
    'last'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

TurnsPolicy = Literal["all", "last", "last_message"]
ReasoningPolicy = Literal["trained", "not_trained", "final_channel_only"]
WhitespacePolicy = Literal["out", "in"]
ToolCallsPolicy = Literal["trained", "not_trained"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "turns": ("all", "last", "last_message"),
    "reasoning": ("trained", "not_trained", "final_channel_only"),
    "trailing_whitespace": ("out", "in"),
    "tool_calls": ("trained", "not_trained"),
}


#: The fields of an assistant message a policy trains or not: its text (content, each content
#: part), its reasoning, and its tool calls (names and arguments).
FIELDS = ("content", "reasoning", "tool_calls")

#: Names a message field cannot have in a Jinja test (``m.role`` decides the turn anyway).
_RESERVED = frozenset(
    {"role", "true", "false", "none", "True", "False", "None", "not", "and", "or", "is", "in", "if", "else"}
)


@dataclass(frozen=True)
class Policy:
    """What to train.

    Attributes:
        turns: ``all`` assistant turns; only the ``last`` turn (every assistant message after
            the last user message, tool calls and all); or only the ``last_message`` (the
            conversation's final assistant message).
        reasoning: ``trained``; ``not_trained`` (reasoning text is outside the span);
            ``final_channel_only`` (only the answers, gpt-oss's ``final`` messages: reasoning,
            tool calls and the text written beside tool calls, gpt-oss's analysis and
            commentary, are outside; a message with tool calls is not trained at all).
        trailing_whitespace: whitespace after the end-of-turn text is ``out`` of or ``in`` the span.
        tool_calls: tool calls the assistant writes are ``trained`` or ``not_trained``. Not
            trained: the calls, the markup that opens them and the end-of-turn text after them
            are outside; the text the assistant wrote beside them stays inside (with the
            end-of-turn text that follows that text).
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

    def trained_fields(self, messages: Sequence[Any], index: int) -> frozenset[str]:
        """Which of message ``index``'s fields are trained: a subset of :data:`FIELDS`.

        Empty for a message that is not an assistant's, or that the policy does not train.

        Example:
            >>> conversation = [{"role": "user", "content": "q"},
            ...                 {"role": "assistant", "content": "a", "tool_calls": [{}]}]
            >>> sorted(Policy(tool_calls="not_trained").trained_fields(conversation, 1))
            ['content', 'reasoning']
        """
        message = messages[index]
        if not hasattr(message, "get") or message.get("role") != "assistant" or not self.trains(message):
            return frozenset()
        roles = [m.get("role") if hasattr(m, "get") else None for m in messages]
        if self.turns == "last_message":
            if any(role == "assistant" for role in roles[index + 1:]):
                return frozenset()
        elif self.turns == "last" and "user" in roles[index + 1:]:
            return frozenset()
        fields = set(FIELDS)
        if self.reasoning != "trained":
            fields.discard("reasoning")
        if self.tool_calls == "not_trained" or self.reasoning == "final_channel_only":
            fields.discard("tool_calls")
        if self.reasoning == "final_channel_only" and message.get("tool_calls"):
            fields.discard("content")
        return frozenset(fields)

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
