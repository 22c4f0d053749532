"""Probe conversations derived from what the template reads (``templatefix.reads``).

Each :class:`Variation` changes a conversation the way one kind of read asks for: the template
tests ``tool_call.id is defined``, so a variation drops the ids; it compares ``part.type`` with
``'image'``, so a variation adds image parts; it tests ``arguments is string``, so a variation
passes arguments as a JSON string; it reads ``message.name``, so a variation adds names; it
compares ``role`` with ``'ipython'``, so a variation uses that role. A variation applies only
when the template reads what it changes.

:func:`candidates` yields, in a fixed order: every applicable variation on each of its carrier
shapes; the tool, content-part and whitespace shapes under every flag value the template reads
(the fixed battery already has the reasoning shapes under them); every variation under every
flag value; every pair of variations; then seeded random combinations (a carrier, one to three
variations, whitespace at the edges of contents, and a flag setting).
``templatefix.coverage.search`` keeps those that reach something new.

Example:
    >>> template = ("{% for m in messages %}{% for c in m.tool_calls or [] %}"
    ...             "{% if c.id is defined %}{{ c.id }}{% else %}no-id{% endif %}{% endfor %}{% endfor %}")
    >>> first = next(candidates(template))
    >>> first.name, [("id" in c) for m in first.messages for c in m.get("tool_calls", [])]
    ('no_call_ids(tool_calls)', [False])
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes

from templatefix.probes import (
    BASE_SHAPE_BUILDERS,
    STANDARD_NAMES,
    Message,
    Probe,
    WordSource,
    find_flags,
    template_reads,
    tool_schema,
)
from templatefix.reads import ANY_VALUE, ELEMENT, MESSAGE, Path, Reads, template_reads_of
from templatefix.render import compile_template

#: Seeded random combinations tried after the systematic candidates.
RANDOM_COMBINATIONS = 60

_CALL = MESSAGE + ("tool_calls", ELEMENT)
_CONTENT = MESSAGE + ("content",)
_KNOWN_FIELDS = frozenset(
    {"role", "content", "tool_calls", "tool_call_id", "name", "reasoning_content", "thinking", "reasoning"}
)
_STANDARD_ROLES = frozenset({"system", "user", "assistant", "tool"})
_TOOL_SHAPES = ("tool_calls", "tool_calls_multi", "reasoning_tool_calls")
_CHAT_SHAPES = ("system_multi_turn", "multi_turn")
#: Base shapes tried under every flag value (the fixed battery has the reasoning ones).
_FLAG_CARRIERS = ("tool_calls", "tool_calls_multi", "content_parts", "whitespace_content")

Change = Callable[[list[Message], dict[str, Any], WordSource], bool]


@dataclass(frozen=True)
class Variation:
    """One change to a conversation, and the shapes it is applied to."""

    name: str
    change: Change
    carriers: tuple[str, ...]


def candidates(template: str, seed: int = 0) -> Iterator[Probe]:
    """Probe conversations for ``template``'s reads, systematic first, then seeded random ones.

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.
    """
    flags = find_flags(template)
    data = tuple(sorted(template_reads(template) - STANDARD_NAMES - set(flags) - _assigned(template)))
    reads = template_reads_of(template, data)
    variations = applicable(reads, data)
    flag_values = [(flag, value) for flag, values in flags.items() for value in values]
    for round_ in range(max((len(v.carriers) for v in variations), default=0)):
        for variation in variations:  # every variation once before any variation twice
            if round_ < len(variation.carriers):
                probe = _build(variation.carriers[round_], [variation], {})
                if probe is not None:
                    yield probe
    for flag, value in flag_values:
        for shape in _FLAG_CARRIERS:
            probe = _build(shape, [], {flag: value})
            if probe is not None:
                yield probe
    for variation in variations:
        for flag, value in flag_values:
            probe = _build(variation.carriers[0], [variation], {flag: value})
            if probe is not None:
                yield probe
    for index, first in enumerate(variations):
        for second in variations[index + 1 :]:
            probe = _build(first.carriers[0], [first, second], {})
            if probe is not None:
                yield probe
    rng = random.Random(seed)
    shapes = sorted(BASE_SHAPE_BUILDERS)
    for _ in range(RANDOM_COMBINATIONS):
        chosen = rng.sample(variations, min(len(variations), rng.randint(1, 3))) if variations else []
        flags = dict(rng.sample(flag_values, min(len(flag_values), rng.randint(0, 2))))
        chosen.append(_WHITESPACE) if rng.random() < 0.5 else None
        probe = _build(rng.choice(shapes), chosen, flags)
        if probe is not None:
            yield probe


def _assigned(template: str) -> set[str]:
    """Names the template assigns itself (locals, loop variables, macros)."""
    tree = compile_template(template).environment.parse(template)
    # macro parameters are not excluded: ``knobs`` may be a macro's parameter and a caller's option
    names = {node.name for node in tree.find_all(nodes.Name) if node.ctx == "store"}
    names |= {node.name for node in tree.find_all(nodes.NSRef)}
    names |= {node.name for node in tree.find_all(nodes.Macro)}
    return names


def applicable(reads: Reads, data: tuple[str, ...] = ()) -> list[Variation]:
    """The variations whose change the template reads, in a fixed order.

    ``data``: other names the template reads as data (not flags), given values shaped by the reads.
    """
    found: list[Variation] = []
    calls = reads.reads(MESSAGE + ("tool_calls",))
    if calls and (reads.reads(_CALL + ("id",)) or reads.reads(MESSAGE + ("tool_call_id",))):
        found.append(Variation("no_call_ids", _no_call_ids, _TOOL_SHAPES[:2]))
    if reads.reads(MESSAGE + ("tool_call_id",)):
        found.append(Variation("no_tool_call_id", _no_tool_call_id, _TOOL_SHAPES[:1]))
    if calls and (reads.use(_CALL + ("function",)).tested or reads.reads(_CALL + ("name",))):
        found.append(Variation("flat_calls", _flat_calls, _TOOL_SHAPES[:2]))
    if reads.reads(_CALL + ("type",)):
        found.append(Variation("no_call_type", _no_call_type, _TOOL_SHAPES[:1]))
    if calls:
        found.append(
            Variation("string_arguments", _string_arguments, ("tool_calls_multi", "reasoning_tool_calls"))
        )
        found.append(Variation("two_arguments", _two_arguments, _TOOL_SHAPES))
        found.append(Variation("typed_arguments", _typed_arguments, _TOOL_SHAPES[:2]))
        found.append(Variation("three_calls", _three_calls, _TOOL_SHAPES[:1]))
        found.append(Variation("two_tool_rounds", _two_tool_rounds, _TOOL_SHAPES[:1]))
        found.append(Variation("no_tool_call_text", _no_content_on_calls, _TOOL_SHAPES))
    content = reads.use(_CONTENT)
    if content.tests & {"string", "iterable", "sequence", "mapping"} or reads.reads(_CONTENT + (ELEMENT,)):
        found.append(Variation("parts_everywhere", _parts_everywhere, (*_CHAT_SHAPES, "tool_calls")))
    if reads.use(_CONTENT + (ELEMENT,)).tests & {"string"}:
        found.append(Variation("string_parts", _string_parts, _CHAT_SHAPES[:1]))
    for part_type in reads.part_types():
        if part_type != "text":
            found.append(Variation(f"part_{part_type}", _with_part(part_type), _CHAT_SHAPES[:1]))
    if "mapping" in content.tests:
        found.append(Variation("mapping_tool_result", _mapping_tool_result, ("tool_calls",)))
    if reads.reads(MESSAGE + ("name",)):
        found.append(Variation("names", _names, (*_CHAT_SHAPES[:1], "tool_calls")))
        found.append(Variation("no_tool_name", _no_tool_name, ("tool_calls",)))
    for compared in reads.roles():
        # an upper-case constant is compared after ``| upper``: the message says it in lower case
        role = compared.lower() if compared.isupper() else compared
        if role not in _STANDARD_ROLES:
            found.append(Variation(f"role_{role}", _with_role(role), ("system_multi_turn", "tool_calls")))
            found.append(Variation(f"added_{role}", _adding_role(role), ("system_multi_turn", "tool_calls")))
    for text in _contained(reads):
        found.append(Variation(f"contains_{text}", _containing(text), ("multi_turn", "reasoning_multi_turn")))
    for field_name in reads.fields(MESSAGE):
        if field_name not in _KNOWN_FIELDS:
            found.append(
                Variation(f"field_{field_name}", _with_field(field_name, reads), ("multi_turn", "tool_calls"))
            )
    if "system" in reads.roles():
        found.append(Variation("late_system", _late_system, ("multi_turn",)))
    if reads.reads(("documents",)):
        found.append(Variation("documents", _documents, ("multi_turn", "tool_calls")))
    for name in data:
        if reads.reads((name,)) and reads.paths.keys() - {(name,)}:
            found.append(Variation(f"option_{name}", _with_option(name, reads), ("multi_turn", "tool_calls")))
    found.append(Variation("reasoning_first_only", _reasoning_first_only, ("reasoning_multi_turn",)))
    found.append(Variation("empty_user", _empty_user, ("system_multi_turn",)))
    found.append(_WHITESPACE)
    # tool schemas last: their renders are long, and they only reach the tool definitions
    if calls or reads.reads(("tools",)):
        found.append(Variation("tools_without_calls", _tools_without_calls, _CHAT_SHAPES))
        found.append(Variation("rich_tools", _rich_tools, ("tool_calls",)))
        schema_types = _schema_types(_type_names(reads))
        found.append(Variation("schema_types", schema_types, ("tool_calls", "multi_turn")))
        found.append(Variation("schema_unions", _schema_unions, ("tool_calls", "multi_turn")))
        found.append(Variation("schema_minimal", _schema_minimal, ("tool_calls", "multi_turn")))
        found.append(Variation("tools_from_reads", _tools_from_reads(reads), ("tool_calls", "multi_turn")))
    return found


def _build(shape: str, variations: list[Variation], flags: dict[str, Any]) -> Probe | None:
    """``shape`` changed by ``variations`` (``None`` if none applies), or plain with ``flags``."""
    words = WordSource(start=500)
    messages, kwargs = BASE_SHAPE_BUILDERS[shape](words)
    names = []
    for variation in variations:
        if variation.change(messages, kwargs, words):
            names.append(variation.name)
    if variations and not names:
        return None
    kwargs.update(flags)
    flag_text = "".join(f"[{flag}={value!r}]" for flag, value in flags.items())
    name = f"{'+'.join(names)}({shape})" if names else shape
    return Probe(f"{name}{flag_text}", tuple(messages), kwargs)


def _calls(messages: list[Message]) -> list[dict[str, Any]]:
    return [call for message in messages for call in message.get("tool_calls") or ()]


def _arguments_of(call: dict[str, Any]) -> Any:
    return (call.get("function") or call).get("arguments")


def _set_arguments(call: dict[str, Any], value: Any) -> None:
    (call["function"] if "function" in call else call)["arguments"] = value


# --- the changes -------------------------------------------------------------------------------


def _no_call_ids(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    changed = False
    for message in messages:
        for call in message.get("tool_calls") or ():
            changed = call.pop("id", None) is not None or changed
        changed = message.pop("tool_call_id", None) is not None or changed
    return changed


def _no_tool_call_id(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    return any([message.pop("tool_call_id", None) is not None for message in messages])


def _flat_calls(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    for message in messages:
        if message.get("tool_calls"):
            message["tool_calls"] = [
                {**({"id": call["id"]} if "id" in call else {}), **call["function"]}
                for call in message["tool_calls"]
            ]
    return bool(_calls(messages))


def _no_call_type(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    return any([call.pop("type", None) is not None for call in _calls(messages)])


def _string_arguments(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    for call in _calls(messages):
        _set_arguments(call, json.dumps(_arguments_of(call)))
    return bool(_calls(messages))


def _two_arguments(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    for call in _calls(messages):
        _set_arguments(call, {"query": words(), "scope": words()})
    return bool(_calls(messages))


def _typed_arguments(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    for call in _calls(messages):
        _set_arguments(
            call,
            {"query": words(), "count": words.number(), "ratio": 0.25, "exact": True,
             "tags": [words(), words()], "filter": {"field": words()}},
        )  # fmt: skip
    return bool(_calls(messages))


def _three_calls(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    from templatefix.probes import tool_call, tool_result

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


def _two_tool_rounds(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Call, result, another call, result, answer: a tool round right after a tool result."""
    from templatefix.probes import tool_call, tool_result

    if not messages or messages[-1].get("role") != "assistant" or not _calls(messages):
        return False
    name = "fetch_" + words()
    kwargs.setdefault("tools", []).append(tool_schema(name, words))
    call = tool_call(name, words)
    final = messages.pop()
    caller = {"role": "assistant", "content": "", "tool_calls": [call]}
    messages.extend([caller, tool_result(call, words), final])
    return True


def _no_content_on_calls(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    changed = False
    for message in messages:
        if message.get("tool_calls") and "content" in message:
            del message["content"]
            changed = True
    return changed


def _tools_without_calls(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    kwargs["tools"] = [tool_schema("lookup_" + words(), words)]
    return True


def _rich_tools(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """A tool whose parameters have many JSON-schema types, an enum, nesting and no description."""
    tools = kwargs.setdefault("tools", [])
    tools.append(
        {
            "type": "function",
            "function": {
                "name": "plan_" + words(),
                "parameters": {
                    "type": "object",
                    "properties": _described(
                        {
                            "mode": {"type": "string", "enum": [words(), words()], "description": words()},
                            "count": {"type": "integer"},
                            "ratio": {"type": "number", "nullable": True},
                            "tags": {"type": "array", "items": {"type": "string"}},
                            "rows": {
                                "type": "array",
                                "description": words(),
                                "items": {
                                    "type": "object",
                                    "properties": {"key": {"type": "string", "description": words()}},
                                    "required": ["key"],
                                },
                            },
                            "filter": {
                                "type": "object",
                                "description": words(),
                                "properties": {"field": {"type": "string"}, "level": {"type": "integer"}},
                                "required": ["field"],
                            },
                            "exact": {"type": "boolean", "default": False},
                        },
                        words,
                    ),
                    "required": ["mode"],
                },
            },
        }
    )
    return True


def _described(properties: dict[str, Any], words: WordSource) -> dict[str, Any]:
    """Give every property (and nested property) a description: some templates require one."""
    for spec in properties.values():
        if isinstance(spec, dict):
            spec.setdefault("description", words())
            if isinstance(spec.get("properties"), dict):
                _described(spec["properties"], words)
    return properties


def _type_names(reads: Reads) -> tuple[str, ...]:
    """Every constant a ``type`` field of the tool schemas is compared with (``'OBJECT'``…)."""
    names = {
        constant
        for path, use in reads.paths.items()
        if path[:1] == ("tools",) and path[-1] == "type"
        for constant in use.constants
        if isinstance(constant, str)
    }
    return tuple(sorted(names))


def _tools_from_reads(reads: Reads) -> Change:
    """One more tool shaped by every field the template reads of a tool (``response``…)."""

    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        tool = _synthesize(("tools", ELEMENT), reads, words)
        if not isinstance(tool, dict):
            return False
        function = tool.get("function")
        if isinstance(function, dict):
            function["name"] = "shaped_" + words()
        kwargs.setdefault("tools", []).append(tool)
        return True

    return change


def _function(
    name: str, words: WordSource, parameters: dict[str, Any] | None, description: bool = True
) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if description:
        function["description"] = words()
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def _schema_types(type_names: tuple[str, ...]) -> Change:
    """A tool whose parameters use every JSON-schema type, as values and as array items, with
    enums, defaults, nullables, nested objects, and the type names the template compares."""

    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        basic = ("string", "number", "integer", "boolean")
        properties: dict[str, Any] = {
            "text": {"type": "string", "description": words()},
            "choice": {"type": "string", "enum": [words(), words()], "description": words()},
            "maybe": {"type": "string", "nullable": True},
            "count": {"type": "integer", "default": 3, "description": words()},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1},
            "flag": {"type": "boolean"},
            "anything": {"type": "array", "nullable": True},
            "nested": {
                "type": "object",
                "description": words(),
                "properties": {"field": {"type": "string", "description": words()}},
                "required": ["field"],
                "additionalProperties": False,
            },
            "mapping": {"type": "object", "additionalProperties": {"type": "string"}},
            "rows": {
                "type": "array",
                "items": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]},
            },
        }
        for item_type in basic:
            items = {"type": item_type}
            properties[f"list_{item_type}"] = {"type": "array", "items": items, "nullable": True}
        for index, type_name in enumerate(name for name in type_names if name not in basic):
            properties[f"typed_{index}"] = {"type": type_name, "description": words()}
        parameters = {
            "type": "object",
            "properties": _described(properties, words),
            "required": ["text", "nested"],
        }
        kwargs.setdefault("tools", []).append(_function("schema_" + words(), words, parameters))
        return True

    return change


def _schema_unions(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Union types: a list of type names, ``oneOf`` (with descriptions and defaults) and ``anyOf``."""
    properties = {
        "either": {"type": ["string", "null"]},
        "pair": {"type": ["object", "array"]},
        "one": {"oneOf": [{"type": "string", "description": words()}, {"type": "integer", "default": 1}]},
        "objects": {"oneOf": [{"type": "object"}, {"type": "object", "properties": {}}]},
        "any": {"anyOf": [{"type": "string"}, {"type": "number"}], "description": words()},
    }
    parameters = {"type": "object", "properties": _described(properties, words)}
    kwargs.setdefault("tools", []).append(_function("union_" + words(), words, parameters))
    return True


def _schema_minimal(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Tools with no description, with no parameters, and with empty properties."""
    tools = kwargs.setdefault("tools", [])
    tools.append(_function("bare_" + words(), words, None, description=False))
    empty = {"type": "object", "properties": {}}
    tools.append(_function("empty_" + words(), words, empty, description=False))
    return True


def _parts(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}]


def _parts_everywhere(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    changed = False
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and (content or message.get("tool_calls")):
            message["content"] = _parts(content or words())  # a call message gets text too
            changed = True
    return changed


def _string_parts(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    for message in messages:
        if message["role"] == "user":
            message["content"] = [message["content"]]
    return True


def _with_part(part_type: str) -> Change:
    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        part: dict[str, Any] = {"type": part_type}
        if part_type == "image_url":
            part["image_url"] = {"url": f"https://example.com/{words()}.png"}
        elif part_type in ("image", "video", "audio"):
            part[part_type] = f"https://example.com/{words()}.bin"
        else:
            part[part_type] = words()
        for message in messages:
            if message["role"] == "user":
                message["content"] = [part, *_parts(message["content"])]
                return True
        return False

    return change


def _mapping_tool_result(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    changed = False
    for message in messages:
        if message["role"] == "tool":
            message["content"] = {"result": message["content"]}
            changed = True
    return changed


def _names(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    for message in messages:
        if message["role"] in ("user", "system", "assistant"):
            message["name"] = "agent_" + words()
    return True


def _no_tool_name(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    return any([message.pop("name", None) is not None for message in messages if message["role"] == "tool"])


def _with_role(role: str) -> Change:
    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        changed = False
        for message in messages:
            if message["role"] in ("system", "tool"):
                message["role"] = role
                changed = True
        return changed

    return change


def _adding_role(role: str) -> Change:
    """A message with ``role`` added after the system message (or first)."""

    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        position = 1 if messages and messages[0]["role"] == "system" else 0
        messages.insert(position, {"role": role, "content": words()})
        return True

    return change


def _contained(reads: Reads) -> list[str]:
    texts: set[str] = set()
    for path in (_CONTENT, MESSAGE + ("reasoning_content",)):
        texts |= {text for text in reads.use(path).contains if text.strip()}
    return sorted(texts)


def _containing(text: str) -> Change:
    """Assistant content holding ``text``; a closing tag ``</x>`` comes after its ``<x>``."""

    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        opener = "<" + text[2:] if text.startswith("</") else ""
        for message in messages:
            if message["role"] == "assistant":
                message["content"] = f"{opener}{words()}{text}{words()}"
        return True

    return change


def _synthesize(path: Path, reads: Reads, words: WordSource, depth: int = 0) -> Any:
    """A value for ``path`` shaped like the template reads it (lists, mappings, constants, text)."""
    use = reads.use(path)
    constants = [c for c in reads.constants(path) if isinstance(c, str)]
    if depth > 3:
        return words()
    element_constants = [c for c in reads.constants(path + (ELEMENT,)) if isinstance(c, str)]
    if element_constants:  # ``for t in builtin_tools`` + ``t == 'browser'``: a list of those
        return element_constants
    keys = reads.fields(path)
    if keys:  # a mapping when fields are read (an over-approximated "[]" beside them is ignored)
        return {key: _synthesize(path + (key,), reads, words, depth + 1) for key in keys}
    if reads.reads(path + (ELEMENT,)):
        return [_synthesize(path + (ELEMENT,), reads, words, depth + 1)]
    if reads.reads(path + (ANY_VALUE,)):
        return {words(): _synthesize(path + (ANY_VALUE,), reads, words, depth + 1)}
    if constants:
        return constants[0]
    if use.contains:  # ``'browser' in builtin_tools``: a list holding what is looked for
        return sorted(use.contains)
    if use.iterated:
        return [words()]
    return words()


def _with_field(field_name: str, reads: Reads) -> Change:
    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        for message in messages:
            if message["role"] in ("assistant", "tool"):
                message[field_name] = _synthesize(MESSAGE + (field_name,), reads, words)
        return True

    return change


def _late_system(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """A system message in the middle of the conversation, after the first answer."""
    for index, message in enumerate(messages):
        if index and message["role"] == "user":
            messages.insert(index, {"role": "system", "content": words()})
            return True
    return False


def _documents(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Two documents; the second has a field besides ``title`` and ``text``."""
    kwargs["documents"] = [
        {"title": words(), "text": words()},
        {"title": words(), "text": words(), "source": words()},
    ]
    return True


def _with_option(name: str, reads: Reads) -> Change:
    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        kwargs[name] = _synthesize((name,), reads, words)
        return True

    return change


def _reasoning_first_only(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Reasoning on the first assistant turn only: the final turn has none."""
    assistants = [m for m in messages if m["role"] == "assistant"]
    for message in assistants[1:]:
        message.pop("reasoning_content", None)
    return len(assistants) > 1


def _empty_user(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    for message in messages:
        if message["role"] in ("user", "system"):
            message["content"] = ""
            return True
    return False


def _whitespace(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Leading and trailing whitespace and newlines around every string content and reasoning."""
    for message in messages:
        for key in ("content", "reasoning_content"):
            if isinstance(message.get(key), str) and message[key]:
                message[key] = f"\n {message[key]}\n\n"
    return True


_WHITESPACE = Variation("whitespace", _whitespace, ("multi_turn", "reasoning_multi_turn", "tool_calls_multi"))
