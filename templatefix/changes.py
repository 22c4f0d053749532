"""Changes to a probe conversation, one per kind of thing a template reads.

Each change takes the messages and the template arguments, changes them in place and returns
whether it changed anything (``False``: it does not apply to that conversation). They are
plain functions or factories of them; ``templatefix.derive`` decides which apply to a template,
and on which conversations.

Example:
    >>> from templatefix.shapes import make_probe
    >>> probe = make_probe("tool_calls")
    >>> messages, kwargs = [dict(m) for m in probe.messages], dict(probe.kwargs)
    >>> ends_with_call(messages, kwargs, WordSource(start=900)), messages[-1]["role"]
    (True, 'assistant')
"""

from __future__ import annotations

import json
from typing import Any

from templatefix.conversation import Message, WordSource, tool_schema
from templatefix.reads import ANY_VALUE, ELEMENT, MESSAGE, Path, Reads
from templatefix.schemas import Change


def calls(messages: list[Message]) -> list[dict[str, Any]]:
    return [call for message in messages for call in message.get("tool_calls") or ()]


def arguments_of(call: dict[str, Any]) -> Any:
    return (call.get("function") or call).get("arguments")


def set_arguments(call: dict[str, Any], value: Any) -> None:
    (call["function"] if "function" in call else call)["arguments"] = value


def no_call_ids(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    changed = False
    for message in messages:
        for call in message.get("tool_calls") or ():
            changed = call.pop("id", None) is not None or changed
        changed = message.pop("tool_call_id", None) is not None or changed
    return changed


def no_tool_call_id(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    return any([message.pop("tool_call_id", None) is not None for message in messages])


def flat_calls(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    for message in messages:
        if message.get("tool_calls"):
            message["tool_calls"] = [flat(call) for call in message["tool_calls"]]
    return bool(calls(messages))


def flat(call: dict[str, Any]) -> dict[str, Any]:
    if "function" not in call:
        return call
    return {**({"id": call["id"]} if "id" in call else {}), **call["function"]}


def no_call_type(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    return any([call.pop("type", None) is not None for call in calls(messages)])


def string_arguments(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    for call in calls(messages):
        set_arguments(call, json.dumps(arguments_of(call)))
    return bool(calls(messages))


def two_arguments(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    for call in calls(messages):
        set_arguments(call, {"query": words(), "scope": words()})
    return bool(calls(messages))


def typed_arguments(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    for call in calls(messages):
        set_arguments(
            call,
            {"query": words(), "count": words.number(), "ratio": 0.25, "exact": True,
             "tags": [words(), words()], "filter": {"field": words()}},
        )  # fmt: skip
    return bool(calls(messages))


def ends_with_call(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """The conversation ends with the last assistant message that calls tools (no results)."""
    callers = [index for index, message in enumerate(messages) if message.get("tool_calls")]
    if not callers:
        return False
    del messages[callers[-1] + 1 :]
    return True


def ends_with_result(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """The conversation ends with the tool results of its last call (no answer after them)."""
    callers = [index for index, message in enumerate(messages) if message.get("tool_calls")]
    if not callers:
        return False
    end = callers[-1] + 1
    while end < len(messages) and messages[end].get("role") == "tool":
        end += 1
    if end == len(messages) or end == callers[-1] + 1:
        return False
    del messages[end:]
    return True


def nested_arguments(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Arguments holding a nested object, a list of objects, ``null`` and ``false``."""
    for call in calls(messages):
        arguments = arguments_of(call)
        if isinstance(arguments, dict):
            nested = {"filter": {"field": words(), "range": [1, 2]}, "rows": [{"key": words()}]}
            set_arguments(call, {**arguments, **nested, "unset": None, "strict": False})
    return bool(calls(messages))


def three_calls(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    from templatefix.conversation import tool_call, tool_result

    for index, message in enumerate(messages):
        if message.get("tool_calls"):
            names = ["lookup_" + words(), "search_" + words()]
            kwargs.setdefault("tools", []).extend(tool_schema(name, words) for name in names)
            extra = [tool_call(name, words) for name in names]
            message["tool_calls"] = [*message["tool_calls"], *extra]
            position = index + 1
            while position < len(messages) and messages[position].get("role") == "tool":
                position += 1
            messages[position:position] = [tool_result(call, words) for call in extra]
            return True
    return False


def two_tool_rounds(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Call, result, another call, result, answer: a tool round right after a tool result."""
    from templatefix.conversation import tool_call, tool_result

    if not messages or messages[-1].get("role") != "assistant" or not calls(messages):
        return False
    name = "fetch_" + words()
    kwargs.setdefault("tools", []).append(tool_schema(name, words))
    call = tool_call(name, words)
    final = messages.pop()
    caller = {"role": "assistant", "content": "", "tool_calls": [call]}
    messages.extend([caller, tool_result(call, words), final])
    return True


def no_content_on_calls(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    changed = False
    for message in messages:
        if message.get("tool_calls") and "content" in message:
            del message["content"]
            changed = True
    return changed


def tools_from_reads(reads: Reads) -> Change:
    """One more tool shaped by every field the template reads of a tool (``response``…)."""

    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        tool = synthesize(("tools", ELEMENT), reads, words)
        if not isinstance(tool, dict):
            return False
        function = tool.get("function")
        if isinstance(function, dict):
            function["name"] = "shaped_" + words()
        kwargs.setdefault("tools", []).append(tool)
        return True

    return change


def parts(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}]


def parts_everywhere(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Every text content as text parts: two, so that what a template writes between parts is
    seen in every role's messages, not only in the assistant's."""
    changed = False
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and (content or message.get("tool_calls")):
            message["content"] = [*parts(content or words()), *parts(words())]  # a call message gets text too
            changed = True
    return changed


def string_parts(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    for message in messages:
        if message["role"] == "user":
            message["content"] = [message["content"]]
    return True


def with_part(part_type: str, role: str = "user") -> Change:
    """A part of ``part_type`` before the text of the first ``role`` message."""

    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        part: dict[str, Any] = {"type": part_type}
        if part_type == "image_url":
            part["image_url"] = {"url": f"https://example.com/{words()}.png"}
        elif part_type in ("image", "video", "audio"):
            part[part_type] = f"https://example.com/{words()}.bin"
        else:
            part[part_type] = words()
        for message in messages:
            if message["role"] == role:
                content = message.get("content")
                if isinstance(content, list):
                    message["content"] = [part, *content]
                else:
                    message["content"] = [part, *parts(content or words())]
                return True
        return False

    return change


def mapping_tool_result(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    changed = False
    for message in messages:
        if message["role"] == "tool" and "content" in message:  # another change may have taken it
            message["content"] = {"result": message["content"]}
            changed = True
    return changed


def tool_result_without_content(
    messages: list[Message], kwargs: dict[str, Any], words: WordSource
) -> bool:
    """Tool messages without ``content`` (a tool that returned nothing)."""
    tools = [message for message in messages if message["role"] == "tool"]
    return any([message.pop("content", None) is not None for message in tools])


def calls_without_tools(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Tool calls with no ``tools`` argument (data that kept the calls but not the definitions)."""
    return kwargs.pop("tools", None) is not None


def names(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    for message in messages:
        if message["role"] in ("user", "system", "assistant"):
            message["name"] = "agent_" + words()
    return True


def no_tool_name(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    return any([message.pop("name", None) is not None for message in messages if message["role"] == "tool"])


def with_role(role: str) -> Change:
    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        changed = False
        for message in messages:
            if message["role"] in ("system", "tool"):
                message["role"] = role
                changed = True
        return changed

    return change


def adding_role(role: str) -> Change:
    """A message with ``role`` added after the system message (or first)."""

    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        position = 1 if messages and messages[0]["role"] == "system" else 0
        messages.insert(position, {"role": role, "content": words()})
        return True

    return change


def containing(text: str, role: str = "assistant") -> Change:
    """The content of every ``role`` message holding ``text`` (a switch such as ``/no_think`` in
    a user's or the system's message); a closing tag ``</x>`` comes after its ``<x>``."""

    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        opener = "<" + text[2:] if text.startswith("</") else ""
        changed = False
        for message in messages:
            if message["role"] == role:
                message["content"] = f"{opener}{words()}{text}{words()}"
                changed = True
        return changed

    return change


def synthesize(
    path: Path, reads: Reads, words: WordSource, depth: int = 0, mappings: bool = False
) -> Any:
    """A value for ``path`` shaped like the template reads it (lists, mappings, constants, text).

    With ``mappings``, a value the template tests ``is mapping`` (and reads no field of) is a
    mapping of two entries, a text and a list, instead of what the other reads suggest.
    """
    use = reads.use(path)
    constants = [c for c in reads.constants(path) if isinstance(c, str)]
    if depth > 3:
        return words()
    element_constants = [c for c in reads.constants(path + (ELEMENT,)) if isinstance(c, str)]
    if element_constants:  # ``for t in builtin_tools`` + ``t == 'browser'``: a list of those
        return element_constants
    keys = reads.fields(path)
    if keys:  # a mapping when fields are read (an over-approximated "[]" beside them is ignored)
        return {key: synthesize(path + (key,), reads, words, depth + 1, mappings) for key in keys}
    if mappings and "mapping" in use.tests:
        return {words(): words(), words(): [words(), words.number()]}
    if reads.reads(path + (ELEMENT,)):
        return [synthesize(path + (ELEMENT,), reads, words, depth + 1, mappings)]
    if reads.reads(path + (ANY_VALUE,)):
        return {words(): synthesize(path + (ANY_VALUE,), reads, words, depth + 1, mappings)}
    if constants:
        return constants[0]
    if use.contains:  # ``'browser' in builtin_tools``: a list holding what is looked for
        return sorted(use.contains)
    if use.iterated:
        return [words()]
    return words()


def with_field(field_name: str, reads: Reads, mappings: bool = False) -> Change:
    """A made-up field on every assistant and tool message, shaped by the reads (see
    :func:`synthesize`)."""

    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        for message in messages:
            if message["role"] in ("assistant", "tool"):
                message[field_name] = synthesize(MESSAGE + (field_name,), reads, words, mappings=mappings)
        return True

    return change


def late_system(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """A system message in the middle of the conversation, after the first answer."""
    for index, message in enumerate(messages):
        if index and message["role"] == "user":
            messages.insert(index, {"role": "system", "content": words()})
            return True
    return False


def documents(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Two documents; the second has a field besides ``title`` and ``text``."""
    kwargs["documents"] = [
        {"title": words(), "text": words()},
        {"title": words(), "text": words(), "source": words()},
    ]
    return True


def with_option(name: str, reads: Reads) -> Change:
    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        kwargs[name] = synthesize((name,), reads, words)
        return True

    return change


def reasoning_first_only(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Reasoning on the first assistant turn only: the final turn has none."""
    assistants = [m for m in messages if m["role"] == "assistant"]
    for message in assistants[1:]:
        message.pop("reasoning_content", None)
    return len(assistants) > 1


def empty_user(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    for message in messages:
        if message["role"] in ("user", "system"):
            message["content"] = ""
            return True
    return False


def whitespace(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Leading and trailing whitespace and newlines around every string content and reasoning."""
    for message in messages:
        for key in ("content", "reasoning_content"):
            if isinstance(message.get(key), str) and message[key]:
                message[key] = f"\n {message[key]}\n\n"
    return True
