"""The probe texts of a message, where they occur in a render, and string helpers for the oracle.

No family knowledge: a message's texts are the strings it carries (reasoning, content, tool-call
arguments); "markup" is any token shaped ``<|x|>``, ``<x>``/``</x>`` or ``[X]``/``[/X]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from templatefix.render import Span

#: One markup token: ``<|x|>``, ``<x>``/``</x>``, ``[X]``/``[/X]``.
MARKUP = r"(?:<\|[^<>|]*\|>|</?[A-Za-z_][^<>\s]*>|\[/?[A-Za-z_][^\[\]\s]*\])"
TRAILING_MARKUP = re.compile(MARKUP + r"$")
LEADING_MARKUP = re.compile(r"\s*" + MARKUP)
MARKUP_RUN = re.compile(r"(?:\s*" + MARKUP + r")+\s*")


# --------------------------------------------------------------------------- probe texts


def reasoning_text(message: Mapping[str, Any]) -> str:
    """The reasoning a message carries (``reasoning_content`` / ``thinking`` / ``reasoning``)."""
    for key in ("reasoning_content", "thinking", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def message_texts(message: Mapping[str, Any]) -> list[str]:
    """The probe texts of a message, in the order templates usually render them.

    Reasoning first, then content (string or the ``text`` of each part), then each tool call's
    argument values (names are skipped: they also occur in the tool definitions).
    """
    texts: list[str] = []
    reasoning = reasoning_text(message)
    if reasoning:
        texts.append(reasoning)
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, Sequence):
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    for call in message.get("tool_calls") or ():
        function = call.get("function", call) if isinstance(call, Mapping) else {}
        arguments = function.get("arguments") if isinstance(function, Mapping) else None
        if isinstance(arguments, Mapping):
            texts.extend(str(value) for value in arguments.values() if isinstance(value, (str, int)))
        elif isinstance(arguments, str):
            texts.append(arguments)
    return [text.strip() for text in texts if text and text.strip()]


def field_texts(message: Mapping[str, Any], kinds: Sequence[str]) -> list[str]:
    """The probe texts of the given kinds of a message (``content``, ``reasoning``,
    ``tool_calls``), stripped: the content or the text of each part, the reasoning, and each tool
    call's name and argument values (arguments given as a JSON string count by their values).

    Example:
        >>> field_texts({"content": "hi", "tool_calls": [{"function": {"name": "f",
        ...              "arguments": '{"q": "x"}'}}]}, ["tool_calls"])
        ['f', 'x']
    """
    texts: list[str] = []
    if "reasoning" in kinds:
        texts.append(reasoning_text(message))
    content = message.get("content")
    if "content" in kinds and isinstance(content, str):
        texts.append(content)
    elif "content" in kinds and isinstance(content, Sequence):
        parts = [part for part in content if isinstance(part, Mapping)]
        texts.extend(part["text"] for part in parts if isinstance(part.get("text"), str))
    for call in (message.get("tool_calls") or ()) if "tool_calls" in kinds else ():
        function = call.get("function", call) if isinstance(call, Mapping) else {}
        if not isinstance(function, Mapping):
            continue
        if isinstance(function.get("name"), str):
            texts.append(function["name"])
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                texts.append(arguments)
        if isinstance(arguments, Mapping):
            texts.extend(str(value) for value in arguments.values() if isinstance(value, (str, int)))
    return [text.strip() for text in texts if isinstance(text, str) and text.strip()]


def locate_texts(text: str, messages: Sequence[Mapping[str, Any]]) -> list[list[Span]]:
    """Where each message's probe texts occur in ``text``, searching forward message by message.

    Texts the template does not render (dropped reasoning, say) are simply absent.

    Example:
        >>> locate_texts("u:hi a:yo", [{"role": "user", "content": "hi"},
        ...                            {"role": "assistant", "content": "yo"}])
        [[(2, 4)], [(7, 9)]]
    """
    cursor = 0
    found: list[list[Span]] = []
    for message in messages:
        spans: list[Span] = []
        for needle in message_texts(message):
            position = text.find(needle, cursor)
            if position >= 0:
                spans.append((position, position + len(needle)))
        spans.sort()
        if spans:
            # continue after the message's FIRST text: some templates write part of a message
            # after the messages that follow it (Gemma 4 puts content after the tool results)
            cursor = spans[0][1]
        found.append(spans)
    return found


# --------------------------------------------------------------------------- small string helpers


def common_prefix_length(a: str, b: str) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index


def common_suffix_length(a: str, b: str) -> int:
    """Length of the longest common suffix of ``a`` and ``b``."""
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[len(a) - 1 - index] == b[len(b) - 1 - index]:
        index += 1
    return index


def rstrip_end(text: str, start: int, end: int) -> int:
    """``end`` moved left over whitespace, never before ``start``."""
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def end_of_turn_text(tail: str) -> str:
    """The end-of-turn text in ``tail`` (what follows a turn's last probe text, stripped).

    The final markup token when there is one (``<|im_end|>``, ``</s>``…), else the whole tail.
    """
    tail = tail.strip()
    match = TRAILING_MARKUP.search(tail)
    return match.group(0) if match else tail


def markup_boundary(text: str, offset: int) -> int:
    """``offset`` moved back to the start of a markup token it would cut (``<|en`` of ``<|end|>``).

    Example:
        >>> markup_boundary("ok<|end|>", 4)
        2
    """
    opener = max(text.rfind("<", 0, offset), text.rfind("[", 0, offset))
    if opener < 0:
        return offset
    closer = text[opener:offset]
    if ">" in closer or "]" in closer or any(c.isspace() for c in closer):
        return offset
    return opener


def end_of_turn_from_generated(generated: str, message: Mapping[str, Any]) -> str:
    """The end-of-turn text of a generated turn: what follows its last probe text."""
    core = generated.rstrip()
    spans = locate_texts(core, [message])[0]
    tail = core[max(end for _, end in spans):] if spans else core
    return end_of_turn_text(tail)
