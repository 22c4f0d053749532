"""The base shapes of probe conversations (SPEC §4) and :func:`make_probe`.

Each shape builder takes a :class:`~templatefix.conversation.WordSource` and returns the messages
and the template arguments (``tools``, ``documents``) of one conversation shape: one turn, a
system prompt and several turns, tool calls with results (dict or JSON-string arguments, several,
parallel, without ids), reasoning, content parts, empty and whitespace content, documents.
``templatefix.probes`` puts them in every battery; ``templatefix.derive`` varies them.

Example:
    >>> [m["role"] for m in make_probe("tool_calls").messages]
    ['user', 'assistant', 'tool', 'assistant']
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from templatefix.conversation import (
    Message,
    Probe,
    WordSource,
    assistant_message,
    system_message,
    tool_call,
    tool_result,
    tool_schema,
    user_message,
)


def _single_turn(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    return [user_message(words), assistant_message(words)], {}


def _system_multi_turn(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    messages = [
        system_message(words),
        user_message(words),
        assistant_message(words),
        user_message(words),
        assistant_message(words),
    ]
    return messages, {}


def _multi_turn(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    return [user_message(words), assistant_message(words), user_message(words), assistant_message(words)], {}


def _tool_calls(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    name = "lookup_" + words()
    tools = [tool_schema(name, words)]
    call = tool_call(name, words)
    messages = [
        user_message(words),
        {"role": "assistant", "content": "", "tool_calls": [call]},
        tool_result(call, words),
        assistant_message(words),
    ]
    return messages, {"tools": tools}


def _tool_calls_string_arguments(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Three calls with arguments as JSON strings (as some templates expect), no text and no
    ``content`` key at all (as OpenAI clients send it): what a template writes before the first,
    a middle and the last call must not depend on text."""
    names = ["search_" + words(), "fetch_" + words(), "lookup_" + words()]
    tools = [tool_schema(name, words) for name in names]
    calls = [tool_call(name, words) for name in names]
    for call in calls:
        call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    messages = [
        user_message(words),
        {"role": "assistant", "tool_calls": calls},
        *(tool_result(call, words) for call in calls),
        assistant_message(words),
    ]
    return messages, {"tools": tools}


def _tool_calls_multi(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """System, text plus two parallel calls, two results, an answer, then one more turn."""
    first, second = "search_" + words(), "fetch_" + words()
    tools = [tool_schema(first, words), tool_schema(second, words)]
    calls = [tool_call(first, words), tool_call(second, words)]
    messages = [
        system_message(words),
        user_message(words),
        {"role": "assistant", "content": words(), "tool_calls": calls},
        *(tool_result(call, words) for call in calls),
        assistant_message(words),
        user_message(words),
        assistant_message(words),
    ]
    return messages, {"tools": tools}


def _tool_calls_two_turns(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """A tool call in each of two turns: a template that keeps state across messages (a flag set
    at the first call and never reset) writes the second call turn unlike its generation prompt."""
    name = "lookup_" + words()
    tools = [tool_schema(name, words)]
    first, second = tool_call(name, words), tool_call(name, words)
    messages = [
        user_message(words),
        {"role": "assistant", "content": words(), "tool_calls": [first]},
        tool_result(first, words),
        assistant_message(words),
        user_message(words),
        {"role": "assistant", "content": "", "tool_calls": [second]},
        tool_result(second, words),
        assistant_message(words),
    ]
    return messages, {"tools": tools}


def _tool_calls_parallel(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Two parallel calls with no text: separators between calls must not depend on content."""
    first, second = "search_" + words(), "fetch_" + words()
    tools = [tool_schema(first, words), tool_schema(second, words)]
    calls = [tool_call(first, words), tool_call(second, words)]
    messages = [
        user_message(words),
        {"role": "assistant", "content": "", "tool_calls": calls},
        *(tool_result(call, words) for call in calls),
        assistant_message(words),
    ]
    return messages, {"tools": tools}


def _tool_calls_no_id(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """A call without ``id`` and a result without ``tool_call_id`` (both are optional)."""
    messages, kwargs = _tool_calls(words)
    for message in messages:
        message.pop("tool_call_id", None)
        for call in message.get("tool_calls") or ():
            call.pop("id", None)
    return messages, kwargs


def _tool_calls_two_arguments(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Text and one call with two arguments: separators between arguments must be trained."""
    messages, kwargs = _tool_calls(words)
    messages[1]["content"] = words()
    messages[1]["tool_calls"][0]["function"]["arguments"] = {"query": words(), "scope": words()}
    return messages, kwargs


def _tool_calls_parallel_string_arguments(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Two calls, two arguments each, given as JSON strings, then another turn."""
    messages, kwargs = _tool_calls_multi(words)
    for call in messages[2]["tool_calls"]:
        call["function"]["arguments"] = json.dumps({"query": words(), "scope": words()})
    return messages, kwargs


def _tool_calls_rich_schema(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """A tool whose schema has what real tool definitions carry beyond a name and one string
    parameter: ``strict``, ``additionalProperties``, an array parameter with ``items``, a
    ``default``, an ``enum`` of strings and one of integers, and a list of types. Templates write
    such keys through outputs of their own."""
    name = "lookup_" + words()
    rich = tool_schema(name, words)
    function = rich["function"]
    function["strict"] = True
    parameters = function["parameters"]
    parameters["properties"]["query"]["default"] = words()
    parameters["properties"]["tags"] = {"type": "array", "description": words(), "items": {"type": "string"}}
    parameters["properties"]["mode"] = {"type": "string", "description": words(), "enum": [words(), words()]}
    parameters["properties"]["limit"] = {"type": ["integer", "string"], "description": words()}
    parameters["properties"]["level"] = {"type": "integer", "description": words(), "enum": [1, 2]}
    parameters["additionalProperties"] = False
    call = tool_call(name, words)
    messages = [
        user_message(words),
        {"role": "assistant", "content": words(), "tool_calls": [call]},
        tool_result(call, words),
        assistant_message(words),
    ]
    return messages, {"tools": [tool_schema("search_" + words(), words), rich]}


def _reasoning(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    return [user_message(words), assistant_message(words, reasoning=True)], {}


def _reasoning_multi_turn(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Reasoning on every assistant turn, so templates that drop old reasoning show it."""
    messages = [
        system_message(words),
        user_message(words),
        assistant_message(words, reasoning=True),
        user_message(words),
        assistant_message(words, reasoning=True),
    ]
    return messages, {}


def _reasoning_tool_calls(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Reasoning before a tool call and again before the answer (interleaved thinking)."""
    name = "lookup_" + words()
    tools = [tool_schema(name, words)]
    call = tool_call(name, words)
    thinking_call: Message = {
        "role": "assistant",
        "content": "",
        "reasoning_content": words(),
        "tool_calls": [call],
    }
    messages = [
        user_message(words),
        thinking_call,
        tool_result(call, words),
        assistant_message(words, reasoning=True),
        user_message(words),
        assistant_message(words, reasoning=True),
    ]
    return messages, {"tools": tools}


def _reasoning_some_turns(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Reasoning in the first and third turns, none in the second and the last."""
    messages = [system_message(words)]
    for turn in range(4):
        messages += [user_message(words), assistant_message(words, reasoning=turn % 2 == 0)]
    return messages, {}


def _whitespace_content(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Contents with leading and trailing whitespace and newlines, on every role."""
    messages = [
        {"role": "system", "content": f"  {words()}\n"},
        {"role": "user", "content": f"\n{words()}  "},
        {"role": "assistant", "content": f"\n\n{words()}\n"},
        {"role": "user", "content": f" {words()}\n\n"},
        {"role": "assistant", "content": f"  {words()} \n", "reasoning_content": f"\n{words()}\n"},
    ]
    return messages, {}


def _whitespace_tool_calls(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Leading and trailing newlines in the turns around a tool call: text beside the call, the
    answer after its result, and a later answer. A generation prompt that ends with ``\n`` takes
    the first ``\n`` of a reply that starts with one, and a template writes each of these turns
    through its own output."""
    name = "lookup_" + words()
    tools = [tool_schema(name, words)]
    call = tool_call(name, words)
    messages = [
        user_message(words),
        {"role": "assistant", "content": f"\n{words()}\n", "tool_calls": [call]},
        tool_result(call, words),
        {"role": "assistant", "content": f"\n\n{words()}\n"},
        user_message(words),
        {"role": "assistant", "content": f"\n{words()} "},
    ]
    return messages, {"tools": tools}


def _text_parts(words: WordSource, count: int = 1) -> list[dict[str, str]]:
    return [{"type": "text", "text": words()} for _ in range(count)]


def _content_parts(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Contents as lists of text parts: one part, and two in the assistant turns and in a user's
    (what a template writes between parts is the assistant's only in an assistant turn). The
    system message is a string (templates that add it to a string reject a list there, and would
    then reject the whole conversation)."""
    messages = [
        system_message(words),
        {"role": "user", "content": _text_parts(words)},
        {"role": "assistant", "content": _text_parts(words, 2)},
        {"role": "user", "content": _text_parts(words, 2)},
        {"role": "assistant", "content": _text_parts(words, 2)},
    ]
    return messages, {}


def _content_parts_tool_calls(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Contents as lists of parts beside a tool call, after its result and in a later turn: a
    template writes the parts of a call turn through the same output as any other turn's parts,
    and a policy that leaves call turns untrained must tell them apart."""
    name = "lookup_" + words()
    tools = [tool_schema(name, words)]
    call = tool_call(name, words)
    messages = [
        {"role": "user", "content": _text_parts(words)},
        {"role": "assistant", "content": _text_parts(words, 2), "tool_calls": [call]},
        tool_result(call, words),
        {"role": "assistant", "content": _text_parts(words)},
        {"role": "user", "content": _text_parts(words)},
        {"role": "assistant", "content": _text_parts(words, 2)},
    ]
    return messages, {"tools": tools}


def _empty_content(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    messages = [
        user_message(words),
        assistant_message(words, content=""),
        user_message(words),
        assistant_message(words),
    ]
    return messages, {}


def _documents(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    documents = [{"title": words(), "text": words()}, {"title": words(), "text": words()}]
    return [user_message(words), assistant_message(words)], {"documents": documents}


_BASE_SHAPES = {
    "single_turn": _single_turn,
    "system_multi_turn": _system_multi_turn,
    "multi_turn": _multi_turn,
    "tool_calls": _tool_calls,
    "tool_calls_string_arguments": _tool_calls_string_arguments,
    "tool_calls_multi": _tool_calls_multi,
    "tool_calls_parallel": _tool_calls_parallel,
    "tool_calls_no_id": _tool_calls_no_id,
    "tool_calls_two_arguments": _tool_calls_two_arguments,
    "tool_calls_parallel_string_arguments": _tool_calls_parallel_string_arguments,
    "reasoning": _reasoning,
    "reasoning_multi_turn": _reasoning_multi_turn,
    "reasoning_some_turns": _reasoning_some_turns,
    "reasoning_tool_calls": _reasoning_tool_calls,
    "content_parts": _content_parts,
    "empty_content": _empty_content,
    "whitespace_content": _whitespace_content,
    "whitespace_tool_calls": _whitespace_tool_calls,
    "tool_calls_two_turns": _tool_calls_two_turns,
    "tool_calls_rich_schema": _tool_calls_rich_schema,
    "content_parts_tool_calls": _content_parts_tool_calls,
}
#: The base shapes' builders by name (``templatefix.derive`` varies them).
BASE_SHAPE_BUILDERS = _BASE_SHAPES
#: Shapes repeated under each flag value, most telling first: reasoning in some turns shows history
#: rewriting and a final turn without reasoning after turns with it (Qwen3.6 with thinking off);
#: then tool calls: one call after reasoning, then history (a flag can change what a call turn
#: writes before its calls: an empty thinking block that is the prompt's under one value and the
#: answer's under another), one call with neither text nor reasoning, two calls after text, two
#: calls with neither.
FLAG_SHAPES = (
    "reasoning_some_turns",
    "reasoning_tool_calls",
    "tool_calls",
    "tool_calls_multi",
    "tool_calls_parallel",
    "reasoning_multi_turn",
    "system_multi_turn",
)


def _assistant_content_parts(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Only the assistant turns' contents are lists of parts: a template that adds the content to a
    string raises there, and so must the patched template (SPEC rule 1)."""
    messages = [
        user_message(words),
        {"role": "assistant", "content": _text_parts(words)},
        user_message(words),
        assistant_message(words),
    ]
    return messages, {}


def _call_without_content(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """One tool call with no ``content`` key and a plain answer after its result (a template that
    adds the undefined content to a string raises there)."""
    messages, kwargs = _tool_calls(words)
    del messages[1]["content"]
    return messages, kwargs


#: Shapes that make many templates raise, for SPEC rule 1's error half (``templatefix.verify``
#: checks every template on them, with the battery): where the original raises, the patched
#: template must raise the same exception type.
ERROR_SHAPES = {
    "assistant_content_parts": _assistant_content_parts,
    "call_without_content": _call_without_content,
}


def error_probes() -> list[Probe]:
    """The probes of :data:`ERROR_SHAPES`.

    Example:
        >>> [p.name for p in error_probes()]
        ['assistant_content_parts', 'call_without_content']
    """
    probes = []
    for name, builder in ERROR_SHAPES.items():
        messages, kwargs = builder(WordSource(start=900))
        probes.append(Probe(name, tuple(messages), kwargs))
    return probes


def make_probe(shape: str, extra_kwargs: Mapping[str, Any] | None = None, name: str | None = None) -> Probe:
    """Build the probe of base ``shape`` (one of :data:`SHAPES`), adding template arguments.

    Example:
        >>> make_probe("tool_calls").kwargs["tools"][0]["type"]
        'function'
    """
    builder = _BASE_SHAPES.get(shape) or {"documents": _documents}.get(shape)
    if builder is None:
        raise ValueError(f"unknown probe shape {shape!r}; choose from {', '.join(SHAPES)}")
    messages, kwargs = builder(WordSource())
    kwargs.update(extra_kwargs or {})
    return Probe(name or shape, tuple(messages), kwargs)


SHAPES = (*_BASE_SHAPES, "documents")
