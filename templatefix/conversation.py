"""The pieces probe conversations are made of: :class:`Probe`, distinct words, messages, tools.

A :class:`Probe` is one conversation plus the template arguments to render it with. Every text
in a probe comes from a :class:`WordSource` (``"alpha101"``, ``"bravo102"``, ...), so the
verifier can find each message in a render by search. :func:`tool_schema`, :func:`tool_call`,
:func:`tool_result` and the ``*_message`` builders are what ``templatefix.shapes``,
``templatefix.probes`` and ``templatefix.derive`` build conversations from.

Example:
    >>> words = WordSource()
    >>> call = tool_call("lookup", words)
    >>> tool_result(call, words)["tool_call_id"] == call["id"]
    True
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from templatefix.environment import detected_behaviour

Message = dict[str, Any]

_WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
)  # fmt: skip


@dataclass(frozen=True)
class Probe:
    """One probe conversation and the template arguments to render it with.

    ``messages`` and ``kwargs`` are plain data; treat them as read-only and use
    :meth:`conversation` / :meth:`render_kwargs` for copies to hand to code that may mutate them.
    A probe hashes by name only (its dicts are not hashable).

    Example:
        >>> from templatefix.render import render
        >>> probe = Probe("single_turn", ({"role": "user", "content": "alpha101"},), {"tools": None})
        >>> render("{{ messages[0].content }}", probe.conversation(), **probe.render_kwargs())
        'alpha101'
    """

    name: str
    messages: tuple[Message, ...] = field(hash=False)
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not detected_behaviour().aliases_reasoning:
            object.__setattr__(self, "messages", tuple(_reasoning_under_both_names(self.messages)))

    def conversation(self) -> list[Message]:
        """A deep copy of the messages as a list."""
        return copy.deepcopy(list(self.messages))

    def render_kwargs(self) -> dict[str, Any]:
        """A deep copy of the template arguments, ready for ``render(template, msgs, **kw)``."""
        return copy.deepcopy(dict(self.kwargs))

    def texts(self) -> list[str]:
        """Every non-empty text this probe puts into the conversation (for locating messages).

        Texts are stripped (contents may carry whitespace at their edges). Tool-call arguments
        given as a JSON string count by their values.
        """
        return [text.strip() for text in _texts(self.messages) if text.strip()]


def _reasoning_under_both_names(messages: tuple[Message, ...]) -> Iterator[Message]:
    """Reasoning given as ``reasoning_content`` and as ``thinking``, as transformers 5 passes it.

    Releases that alias the reasoning fields (``templatefix.environment``) show a template both
    names whichever one the conversation uses; older ones pass only the one given. Probes give
    both there, so a template reading either name (gpt-oss reads ``thinking``) is probed alike
    on every supported release.
    """
    for message in messages:
        if isinstance(message, Mapping):
            given = [message.get(key) for key in ("reasoning_content", "thinking", "reasoning")]
            reasoning = next((value for value in given if value is not None), None)
            if reasoning is not None:
                message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        yield message


def _texts(value: Any) -> Iterator[str]:
    """All strings under ``value`` that are message text (not roles, types or keys)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key == "thinking" and item == value.get("reasoning_content"):
                continue  # the same reasoning under its alias
            if key == "arguments" and isinstance(item, str):
                yield from _texts(json.loads(item))
            elif isinstance(item, int) and not isinstance(item, bool):
                yield str(item)
            elif key not in ("role", "type", "tool_call_id", "id", "name"):
                yield from _texts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)


class WordSource:
    """Hands out distinct word-like strings: ``alpha101``, ``bravo102``, ...

    Numbers all have the same width, so no word is a substring of another.

    Example:
        >>> words = WordSource()
        >>> words(), words()
        ('alpha101', 'bravo102')
    """

    def __init__(self, start: int = 0) -> None:
        self._next = start

    def __call__(self) -> str:
        index = self._next
        self._next += 1
        return f"{_WORDS[index % len(_WORDS)]}{101 + index % 899}"

    def number(self) -> int:
        """A distinct five-digit number (for arguments that are not text)."""
        index = self._next
        self._next += 1
        return 90000 + index % 10000

    def call_id(self) -> str:
        """A tool-call id: 9 alphanumeric characters (Mistral's templates require exactly that)."""
        index = self._next
        self._next += 1
        return f"call{index % 100000:05d}"


# --- building blocks ---------------------------------------------------------------------------


def tool_schema(name: str, words: WordSource) -> dict[str, Any]:
    """An OpenAI-style function tool with one string parameter ``query``."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": words(),
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": words()}},
                "required": ["query"],
            },
        },
    }


def tool_call(name: str, words: WordSource) -> dict[str, Any]:
    """An OpenAI-style tool call with an id and dict arguments."""
    return {
        "id": words.call_id(),
        "type": "function",
        "function": {"name": name, "arguments": {"query": words()}},
    }


def tool_result(call: Mapping[str, Any], words: WordSource) -> Message:
    """The tool message answering ``call``."""
    return {
        "role": "tool",
        "tool_call_id": call["id"],
        "name": call["function"]["name"],
        "content": words(),
    }


def assistant_message(words: WordSource, *, reasoning: bool = False, content: str | None = None) -> Message:
    """An assistant message with a fresh word as content (or ``content``), with reasoning if asked."""
    message: Message = {"role": "assistant", "content": words() if content is None else content}
    if reasoning:
        message["reasoning_content"] = words()
    return message


def user_message(words: WordSource) -> Message:
    """A user message with a fresh word as content."""
    return {"role": "user", "content": words()}


def system_message(words: WordSource) -> Message:
    """A system message with a fresh word as content."""
    return {"role": "system", "content": words()}
