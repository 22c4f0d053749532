"""Random training conversations, drawn either by hypothesis or by a seeded ``random.Random``.

One generator (``build``) is written against a small ``Picker`` interface, so hypothesis
(``conversations()``, which shrinks towards fewer features) and plain seeded randomness
(``random_conversation(seed)``, for benchmarks) draw the same shapes:

- a system message or none; 1-4 user turns, each answered by an assistant;
- reasoning (``reasoning_content``) in some assistant messages and not others;
- one or two tool calls in some assistant messages (OpenAI shape ``{"type": "function",
  "function": {"name", "arguments"}}``), arguments as an object or as a JSON string, one or two
  keys, with or without ``id``, with or without text content; then one ``tool`` message per call
  (with or without ``tool_call_id`` / ``name``) and a final assistant answer;
- content as a string, as a list of text parts (per conversation: never, sometimes or always),
  or empty; spaces and newlines at its edges;
- ``enable_thinking`` and ``reasoning_effort`` set at random, ``tools`` schemas when calls exist.

No value is ever ``None`` (transformers 5 drops None-valued keys before rendering, 4.x does
not; leaving them out keeps both the same). Every non-assistant text carries a tag unique to
its message (``u1q``, ``t4q``...), so the judge can find it in a render.

Example:
    >>> conversation = random_conversation(3)
    >>> conversation.messages[-1]["role"]
    'assistant'
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from hypothesis import strategies as st

T = TypeVar("T")

WORDS = ("alpha", "bravo", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper")
EDGES = ("", "", "", " ", "\n", "\n\n", " \n")
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "get_weather": ("city", "unit"),
    "search_web": ("query", "limit"),
    "convert": ("amount", "currency"),
}


@dataclass
class Conversation:
    """Messages plus the template arguments they are rendered with (``tools``, flags)."""

    messages: list[dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, "kwargs": self.kwargs}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Conversation:
        return cls(list(data["messages"]), dict(data.get("kwargs", {})))


class Picker(Protocol):
    """The only randomness ``build`` uses."""

    def integer(self, low: int, high: int) -> int: ...

    def choice(self, options: Sequence[T]) -> T: ...

    def chance(self, percent: int) -> bool: ...


class RandomPicker:
    """``Picker`` over ``random.Random(seed)``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def chance(self, percent: int) -> bool:
        return self.rng.randrange(100) < percent


class DrawPicker:
    """``Picker`` over hypothesis' ``draw``; every choice shrinks towards the first option / no feature."""

    def __init__(self, draw: Any) -> None:
        self.draw = draw

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def choice(self, options: Sequence[T]) -> T:
        return options[self.draw(st.integers(0, len(options) - 1))]

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) >= 100 - percent


def _text(pick: Picker, tag: str, edges: bool = True) -> str:
    words = [pick.choice(WORDS) for _ in range(pick.integer(1, 3))]
    body = " ".join([*words, tag])
    if pick.chance(15):
        body += "\n" + pick.choice(WORDS)
    if not edges:
        return body
    return pick.choice(EDGES) + body + pick.choice(EDGES)


def _content(pick: Picker, tag: str, empty_percent: int, parts: int) -> str | list[dict[str, str]]:
    if pick.chance(empty_percent):
        return ""
    if pick.chance(parts):
        return [{"type": "text", "text": _text(pick, f"{tag}p{i}")} for i in range(pick.integer(1, 2))]
    return _text(pick, tag)


def _tool_call(pick: Picker, number: int) -> dict[str, Any]:
    name = pick.choice(tuple(FUNCTIONS))
    keys = FUNCTIONS[name][: pick.integer(1, 2)]
    arguments: dict[str, Any] = {}
    for key in keys:
        arguments[key] = pick.integer(1, 99) if pick.chance(30) else pick.choice(WORDS)
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if pick.chance(50):
        call["function"]["arguments"] = json.dumps(arguments)
    if pick.chance(50):
        call = {"id": f"call_{number}", **call}
    return call


def _assistant(pick: Picker, index: int, calls: bool, parts: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant"}
    tool_calls = [_tool_call(pick, index * 10 + n) for n in range(pick.integer(1, 2))] if calls else []
    if tool_calls:
        if pick.chance(40):
            message["content"] = _content(pick, f"a{index}q", 0, parts)
        elif pick.chance(80):
            message["content"] = ""
    else:
        message["content"] = _content(pick, f"a{index}q", 8, parts)
    if pick.chance(40):
        message["reasoning_content"] = _text(pick, f"r{index}q")
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _tool_result(pick: Picker, index: int, call: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "tool", "content": _text(pick, f"t{index}q", edges=False)}
    if pick.chance(25):
        message["content"] = json.dumps({"result": message["content"]})
    if "id" in call and pick.chance(85):
        message["tool_call_id"] = call["id"]
    if pick.chance(50):
        message["name"] = call["function"]["name"]
    return message


def build(pick: Picker) -> Conversation:
    """One conversation ending with an assistant message; see the module docstring for the shapes."""
    messages: list[dict[str, Any]] = []
    # Many templates reject list content anywhere, so it is a per-conversation choice: most
    # conversations use strings only, some use parts sometimes or always.
    parts = pick.choice((0, 0, 0, 30, 100))
    if pick.chance(50):
        messages.append({"role": "system", "content": _content(pick, "s0q", 0, parts)})
    used: set[str] = set()
    for _ in range(pick.integer(1, 4)):
        messages.append({"role": "user", "content": _content(pick, f"u{len(messages)}q", 3, parts)})
        assistant = _assistant(pick, len(messages), pick.chance(35), parts)
        messages.append(assistant)
        calls = assistant.get("tool_calls", [])
        for call in calls:
            used.add(call["function"]["name"])
            messages.append(_tool_result(pick, len(messages), call))
        if calls:
            messages.append(_assistant(pick, len(messages), False, parts))
    kwargs: dict[str, Any] = {}
    thinking = pick.choice(("absent", True, False))
    if thinking != "absent":
        kwargs["enable_thinking"] = thinking
    effort = pick.choice(("absent", "low", "medium", "high"))
    if effort != "absent":
        kwargs["reasoning_effort"] = effort
    if used:
        kwargs["tools"] = [_schema(name) for name in sorted(used)]
    return Conversation(messages, kwargs)


def _schema(name: str) -> dict[str, Any]:
    keys = FUNCTIONS[name]
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"Tool {name}.",
            "parameters": {
                "type": "object",
                "properties": {key: {"type": "string", "description": key} for key in keys},
                "required": [keys[0]],
            },
        },
    }


def random_conversation(seed: int) -> Conversation:
    """The conversation for ``seed`` (deterministic across runs and machines)."""
    return build(RandomPicker(seed))


@st.composite
def conversations(draw: Any) -> Conversation:
    """Hypothesis strategy for ``Conversation``s (shrinks towards one plain turn)."""
    return build(DrawPicker(draw))
