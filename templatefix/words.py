"""SPEC §7: every word the assistant wrote is inside a span, and every other word is outside.

Probe texts are made of distinct words (``alpha101``, ``bravo102``…, from
``templatefix.conversation.WordSource``). :func:`probe_words` gives each word of a conversation
its owner: the message and the field it came from (content, each content part, reasoning, each
tool call's name and arguments, or another field), or a template argument (``tools``,
``documents``…). :func:`check_words` then judges the full render of the conversation by rule:

* a word of an assistant message's field that the policy trains (``Policy.trained_fields``)
  must be inside a span at every place the render writes it;
* every other word (system, user and tool messages, template arguments, assistant fields the
  policy leaves out) must be outside. An assistant's other fields (``name``) are no text it
  wrote, and are not judged.

The judgment uses only the conversation, the policy, the render and its spans, never the oracle
that placed the spans. A word given by more than one field (a tool's name is in its definition,
in the call and in the tool message answering it) cannot be told apart in the render and is not
judged; the words around it are.

Example:
    >>> conversation = [{"role": "user", "content": "alpha101"},
    ...                 {"role": "assistant", "content": "bravo102"}]
    >>> text = "U: alpha101\\nA: bravo102<end>"
    >>> check_words(text, [(15, 28)], conversation)
    []
    >>> [problem.describe() for problem in check_words(text, [(3, 28)], conversation)]
    ["word 'alpha101' of message 0 (user) content is inside a span at offset 3; it must be outside"]
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from templatefix.policy import Policy
from templatefix.render import Span, merge_spans

#: A probe word: lowercase letters and three digits (``alpha101``, the ``alpha101`` in
#: ``search_alpha101``); tool-call ids (``call00005``) have more digits and are not words.
WORD = re.compile(r"(?<![a-z])[a-z]+[0-9]{3}(?![0-9])")

_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


@dataclass(frozen=True)
class Word:
    """One word and who wrote it.

    Attributes:
        text: the word.
        message_index: the message that holds it, ``None`` for a template argument.
        role: that message's role, or the template argument's name.
        field: where in the message: ``content``, ``content[1]``, ``reasoning``,
            ``tool_calls[0].name``, ``tool_calls[0].arguments``, or another key.
        inside: whether the policy trains it (it must be inside a span) or not (outside);
            ``None`` for an assistant's field that is no text it wrote (``name``): not judged.
    """

    text: str
    message_index: int | None
    role: str
    field: str
    inside: bool | None

    def owner(self) -> str:
        if self.message_index is None:
            return f"template argument {self.role!r}"
        return f"message {self.message_index} ({self.role}) {self.field}"


@dataclass(frozen=True)
class WordProblem:
    """A word on the wrong side of a span edge."""

    word: Word
    offset: int

    def describe(self) -> str:
        where, must = ("inside", "outside") if not self.word.inside else ("outside", "inside")
        return (
            f"word {self.word.text!r} of {self.word.owner()} is {where} a span at offset {self.offset}; "
            f"it must be {must}"
        )


def _words_in(value: Any) -> Iterator[str]:
    """Every probe word in the strings under ``value`` (JSON-string arguments included)."""
    if isinstance(value, str):
        yield from WORD.findall(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _words_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _words_in(item)


def _message_fields(message: Mapping[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """``(kind, field, value)`` for each field of a message; ``kind`` is a policy field
    (``content``, ``reasoning``, ``tool_calls``) or ``other``."""
    reasoning_done = False
    for key, value in message.items():
        if key == "role":
            continue
        if key in _REASONING_KEYS:
            if not reasoning_done:  # one reasoning, under one or several names
                reasoning_done = True
                for other in _REASONING_KEYS:
                    if other in message:
                        yield "reasoning", "reasoning", message[other]
            continue
        if key == "content" and isinstance(value, (list, tuple)):
            for index, part in enumerate(value):
                yield "content", f"content[{index}]", part
        elif key == "content":
            yield "content", "content", value
        elif key == "tool_calls" and isinstance(value, (list, tuple)):
            for index, call in enumerate(value):
                function = call.get("function", call) if isinstance(call, Mapping) else {}
                if not isinstance(function, Mapping):
                    continue
                for name, item in function.items():
                    kind = "tool_calls" if name in ("name", "arguments") else "other"
                    yield kind, f"tool_calls[{index}].{name}", item
                if isinstance(call, Mapping):
                    for name, item in call.items():
                        if name != "function":
                            yield "other", f"tool_calls[{index}].{name}", item
        else:
            yield "other", key, value


def probe_words(
    messages: Sequence[Mapping[str, Any]],
    kwargs: Mapping[str, Any] | None = None,
    policy: Policy | None = None,
) -> list[Word]:
    """The words of a conversation and its template arguments that one field alone gives.

    Example:
        >>> conversation = [{"role": "user", "content": "alpha101"},
        ...                 {"role": "assistant", "content": "bravo102", "reasoning_content": "charlie103"}]
        >>> [(w.text, w.inside) for w in probe_words(conversation, policy=Policy(reasoning="not_trained"))]
        [('alpha101', False), ('bravo102', True), ('charlie103', False)]
    """
    policy = policy or Policy()
    owners: dict[str, set[tuple[Any, str]]] = {}
    found: dict[str, Word] = {}

    def add(text: str, word: Word, source: tuple[Any, str]) -> None:
        owners.setdefault(text, set()).add(source)
        found.setdefault(text, word)

    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            continue
        role = str(message.get("role"))
        trained = policy.trained_fields(messages, index) if role == "assistant" else frozenset()
        for kind, field_name, value in _message_fields(message):
            source = (index, field_name.split(".")[0] if kind == "tool_calls" else field_name)
            for text in _words_in(value):
                inside = None if role == "assistant" and kind == "other" else kind in trained
                add(text, Word(text, index, role, field_name, inside), source)
    for name, value in (kwargs or {}).items():
        for text in _words_in(value):
            add(text, Word(text, None, name, name, False), (None, name))
    return [word for text, word in found.items() if len(owners[text]) == 1]


def occurrences(text: str, word: str) -> Iterator[int]:
    """Where ``word`` stands in ``text`` as a whole word (not inside a longer one)."""
    position = text.find(word)
    while position >= 0:
        before = text[position - 1] if position else ""
        after = text[position + len(word)] if position + len(word) < len(text) else ""
        if not ("a" <= before <= "z") and not after.isdigit():
            yield position
        position = text.find(word, position + 1)


def check_words(
    text: str,
    spans: Sequence[Span],
    messages: Sequence[Mapping[str, Any]],
    kwargs: Mapping[str, Any] | None = None,
    policy: Policy | None = None,
) -> list[WordProblem]:
    """Every word of the conversation on the wrong side of the spans, in the render ``text``.

    A word lies inside when all its characters are in one merged span; outside when none is.
    """
    merged = merge_spans(list(spans))
    problems: list[WordProblem] = []
    for word in probe_words(messages, kwargs, policy):
        if word.inside is None:
            continue
        for position in occurrences(text, word.text):
            end = position + len(word.text)
            inside = any(start <= position and end <= stop for start, stop in merged)
            touched = any(start < end and position < stop for start, stop in merged)
            if (word.inside and not inside) or (not word.inside and touched):
                problems.append(WordProblem(word, position))
    problems.sort(key=lambda problem: problem.offset)
    return problems
