"""Random training conversations, drawn either by hypothesis or by a seeded ``random.Random``.

One generator (``build``) is written against a small ``Picker`` interface, so hypothesis
(``conversations()``, which shrinks towards fewer features) and plain seeded randomness
(``random_conversation(seed)``, for benchmarks) draw the same shapes:

- a system message or none; 1-4 user turns, each answered by an assistant;
- reasoning in some assistant messages and not others, per conversation in ``reasoning_content``
  or in ``thinking`` (gpt-oss reads the latter);
- one or two tool calls in some assistant messages (OpenAI shape ``{"type": "function",
  "function": {"name", "arguments"}}``), arguments as an object or as a JSON string, one or two
  keys, with or without ``id``, with or without text content; then one ``tool`` message per call
  (with or without ``tool_call_id`` / ``name``) and a final assistant answer;
- content as a string, as a list of text parts (per conversation: never, sometimes or always),
  or empty; spaces and newlines at its edges;
- ``enable_thinking`` and ``reasoning_effort`` set at random, ``tools`` schemas when calls exist.

No value is ever ``None`` (transformers 5 drops None-valued keys before rendering, 4.x does
not; leaving them out keeps both the same).

Every text a message field holds is made of *words* unique to the conversation (``WORD``: a
vocabulary word, a number and ``q``, such as ``cedar17q``; no word is part of another): each
content or content part, reasoning, tool result, system and user text, each tool-call name
(``get_weather_ember12q``; the ``tools`` schemas keep the plain names, so the name is written
nowhere else) and each string argument value. So the judges find every message's text in a
render, whatever the template does around it (``independent.words``). Integer argument values
are drawn too and are not words.

Example:
    >>> conversation = random_conversation(3)
    >>> conversation.messages[-1]["role"]
    'assistant'
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from hypothesis import strategies as st

T = TypeVar("T")

#: A word of a generated text: unique to its conversation, and never part of another word.
WORD = re.compile(r"[a-z]+[0-9]+q")
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


class Words:
    """Hands out the conversation's words: ``cedar1q``, ``alpha2q``... (never the same number twice)."""

    def __init__(self, pick: Picker) -> None:
        self.pick = pick
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"{self.pick.choice(WORDS)}{self.count}q"


def _text(pick: Picker, words: Words, edges: bool = True) -> str:
    body = " ".join(words() for _ in range(pick.integer(1, 3)))
    if pick.chance(15):
        body += "\n" + words()
    if not edges:
        return body
    return pick.choice(EDGES) + body + pick.choice(EDGES)


def _content(pick: Picker, words: Words, empty_percent: int, parts: int) -> str | list[dict[str, str]]:
    if pick.chance(empty_percent):
        return ""
    if pick.chance(parts):
        return [{"type": "text", "text": _text(pick, words)} for _ in range(pick.integer(1, 2))]
    return _text(pick, words)


def _tool_call(pick: Picker, words: Words, number: int) -> dict[str, Any]:
    name = pick.choice(tuple(FUNCTIONS))
    keys = FUNCTIONS[name][: pick.integer(1, 2)]
    arguments: dict[str, Any] = {}
    for key in keys:
        arguments[key] = pick.integer(1, 99) if pick.chance(30) else words()
    function = {"name": f"{name}_{words()}", "arguments": arguments}
    call: dict[str, Any] = {"type": "function", "function": function}
    if pick.chance(50):
        call["function"]["arguments"] = json.dumps(arguments)
    if pick.chance(50):
        call = {"id": f"call_{number}", **call}
    return call


def _assistant(
    pick: Picker, words: Words, index: int, calls: bool, parts: int, reasoning: str
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant"}
    tool_calls = [_tool_call(pick, words, index * 10 + n) for n in range(pick.integer(1, 2))] if calls else []
    if tool_calls:
        if pick.chance(40):
            message["content"] = _content(pick, words, 0, parts)
        elif pick.chance(80):
            message["content"] = ""
    else:
        message["content"] = _content(pick, words, 8, parts)
    if pick.chance(40):
        message[reasoning] = _text(pick, words)
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _tool_result(pick: Picker, words: Words, call: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "tool", "content": _text(pick, words, edges=False)}
    if pick.chance(25):
        message["content"] = json.dumps({"result": message["content"]})
    if "id" in call and pick.chance(85):
        message["tool_call_id"] = call["id"]
    if pick.chance(50):
        message["name"] = call["function"]["name"].rsplit("_", 1)[0]
    return message


def build(pick: Picker) -> Conversation:
    """One conversation ending with an assistant message; see the module docstring for the shapes."""
    messages: list[dict[str, Any]] = []
    words = Words(pick)
    reasoning = pick.choice(("reasoning_content", "reasoning_content", "thinking"))
    # Many templates reject list content anywhere, so it is a per-conversation choice: most
    # conversations use strings only, some use parts sometimes or always.
    parts = pick.choice((0, 0, 0, 30, 100))
    if pick.chance(50):
        messages.append({"role": "system", "content": _content(pick, words, 0, parts)})
    used: set[str] = set()
    for _ in range(pick.integer(1, 4)):
        messages.append({"role": "user", "content": _content(pick, words, 3, parts)})
        assistant = _assistant(pick, words, len(messages), pick.chance(35), parts, reasoning)
        messages.append(assistant)
        calls = assistant.get("tool_calls", [])
        for call in calls:
            used.add(call["function"]["name"].rsplit("_", 1)[0])
            messages.append(_tool_result(pick, words, call))
        if calls:
            messages.append(_assistant(pick, words, len(messages), False, parts, reasoning))
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


def switch_off(conversation: Conversation, field_name: str, seed: int) -> Conversation:
    """A copy in which some assistant messages carry ``field_name: false`` (at least one), some ``true``.

    Example:
        >>> turns = [{"role": "user", "content": "a1q"}, {"role": "assistant", "content": "b2q"}]
        >>> switch_off(Conversation(turns), "train", 0).messages[1]["train"]
        False
    """
    rng = random.Random(seed)
    messages = [dict(m) for m in conversation.messages]
    assistants = [m for m in messages if m.get("role") == "assistant"]
    for message in assistants:
        draw = rng.randrange(100)
        if draw < 40:
            message[field_name] = False
        elif draw < 55:
            message[field_name] = True
    if assistants and not any(m.get(field_name) is False for m in assistants):
        assistants[rng.randrange(len(assistants))][field_name] = False
    return Conversation(messages, dict(conversation.kwargs))
