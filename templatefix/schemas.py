"""Tool definitions for probe conversations: fixed JSON-schema shapes and a seeded grammar.

Templates turn ``tools`` into text with macros that branch on every part of a JSON schema
(``type`` as a name or a list, ``items`` present or not, ``enum``, ``nullable``, ``default``,
``oneOf``, nested ``properties`` and ``required``…). Those branches write text, so SPEC §4 asks
the probes to reach them. The fixed shapes here cover the common cases in a few tools;
:func:`random_tool` draws further schemas from a small grammar, seeded, so the coverage search
(``templatefix.coverage.search``) can reach the rarer combinations.

Each function here is a conversation change (``templatefix.derive.Change``): it adds tools to
``kwargs["tools"]`` and returns whether it changed anything.

Example:
    >>> from templatefix.conversation import WordSource
    >>> kwargs = {}
    >>> random_tool([], kwargs, WordSource(start=900))
    True
    >>> kwargs["tools"][0]["type"]
    'function'
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from templatefix.conversation import Message, WordSource, tool_schema

#: A change to a conversation (messages and template arguments, changed in place); ``False`` when
#: it does not apply to that conversation.
Change = Callable[[list[Message], dict[str, Any], WordSource], bool]

_SCALARS = ("string", "number", "integer", "boolean")
#: The grammar's kinds of schema, containers weighted up: their branches are the deepest.
_KINDS = (*_SCALARS, "enum", "array", "array", "array", "object", "object", "type_list", "one_of", "any_of",
          "untyped", "null")  # fmt: skip


def function_tool(
    name: str, words: WordSource, parameters: dict[str, Any] | None, description: bool = True
) -> dict[str, Any]:
    """An OpenAI-style function tool named ``name`` with ``parameters`` (omitted when ``None``)."""
    function: dict[str, Any] = {"name": name}
    if description:
        function["description"] = words()
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def described(properties: dict[str, Any], words: WordSource) -> dict[str, Any]:
    """Give every property (and nested property) a description: some templates require one."""
    for spec in properties.values():
        if isinstance(spec, dict):
            spec.setdefault("description", words())
            if isinstance(spec.get("properties"), dict):
                described(spec["properties"], words)
    return properties


def tools_without_calls(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Tools offered in a conversation that calls none."""
    kwargs["tools"] = [tool_schema("lookup_" + words(), words)]
    return True


def rich_tools(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """A tool whose parameters have many JSON-schema types, an enum, nesting and no description."""
    properties = {
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
    }
    parameters = {"type": "object", "properties": described(properties, words), "required": ["mode"]}
    kwargs.setdefault("tools", []).append(function_tool("plan_" + words(), words, parameters))
    return True


def schema_types(type_names: tuple[str, ...]) -> Change:
    """A change adding a tool whose parameters use every JSON-schema type, as values and as array
    items, with enums, defaults, nullables, nested objects, and ``type_names`` (the type names the
    template compares, such as ``'OBJECT'``)."""

    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
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
        for item_type in _SCALARS:
            properties[f"list_{item_type}"] = {
                "type": "array",
                "items": {"type": item_type},
                "nullable": True,
            }
        for index, type_name in enumerate(name for name in type_names if name not in _SCALARS):
            properties[f"typed_{index}"] = {"type": type_name, "description": words()}
        parameters = {
            "type": "object",
            "properties": described(properties, words),
            "required": ["text", "nested"],
        }
        kwargs.setdefault("tools", []).append(function_tool("schema_" + words(), words, parameters))
        return True

    return change


def schema_unions(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Union types: a list of type names, ``oneOf`` (with descriptions and defaults) and ``anyOf``."""
    properties = {
        "either": {"type": ["string", "null"]},
        "pair": {"type": ["object", "array"]},
        "one": {"oneOf": [{"type": "string", "description": words()}, {"type": "integer", "default": 1}]},
        "objects": {"oneOf": [{"type": "object"}, {"type": "object", "properties": {}}]},
        "any": {"anyOf": [{"type": "string"}, {"type": "number"}], "description": words()},
    }
    parameters = {"type": "object", "properties": described(properties, words)}
    kwargs.setdefault("tools", []).append(function_tool("union_" + words(), words, parameters))
    return True


def schema_minimal(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Tools with no parameters and with empty properties."""
    tools = kwargs.setdefault("tools", [])
    empty = {"type": "object", "properties": {}}
    tools.append(function_tool("bare_" + words(), words, None))
    tools.append(function_tool("empty_" + words(), words, empty))
    return True


def schema_undescribed(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Tools without a description, with and without parameters."""
    tools = kwargs.setdefault("tools", [])
    tools.append(function_tool("plain_" + words(), words, None, description=False))
    parameters = {"type": "object", "properties": {"query": {"type": "string"}}}
    tools.append(function_tool("terse_" + words(), words, parameters, description=False))
    return True


def drawn_tool(seed: int, words: WordSource) -> dict[str, Any]:
    """One tool with parameters drawn from the schema grammar, seeded by ``seed``: one parameter
    for even seeds (a template that refuses one kind of parameter refuses only that draw), one
    to three for odd ones (what a template writes between parameters); every property described
    in half of them."""
    rng = random.Random(seed)
    count = 1 if seed % 2 == 0 else rng.randint(1, 3)
    properties = {f"p_{words()}": random_schema(rng, words) for _ in range(count)}
    if seed % 4 < 2:  # half the draws describe every property: some templates require it
        described(properties, words)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if rng.random() < 0.7:
        parameters["required"] = rng.sample(list(properties), rng.randint(0, len(properties)))
    tool = function_tool("draw_" + words(), words, None if rng.random() < 0.1 else parameters)
    if rng.random() < 0.2:  # keys beside name, description and parameters (OpenAI's ``strict``)
        tool["function"]["strict"] = rng.random() < 0.5
    if rng.random() < 0.1:
        tool["function"]["examples"] = [{words(): words()}]
    return tool


def random_tool(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Two tools with two to four parameters each, drawn from the schema grammar
    (:func:`random_schema`).

    The draw is seeded from ``words``, so the same word source gives the same tools.
    """
    rng = random.Random(words.number())
    for _ in range(2):
        properties = {f"p_{words()}": random_schema(rng, words) for _ in range(rng.randint(2, 4))}
        names = list(properties)
        parameters: dict[str, Any] = {"type": "object", "properties": properties}
        if rng.random() < 0.7:
            parameters["required"] = rng.sample(names, rng.randint(0, len(names)))
        without = rng.random() < 0.1
        tool = function_tool("draw_" + words(), words, None if without else parameters)
        kwargs.setdefault("tools", []).append(tool)
    return True


def random_schema(rng: random.Random, words: WordSource, depth: int = 0) -> dict[str, Any]:
    """One JSON schema from a small grammar: every type, arrays with and without ``items``, nested
    objects with ``required`` subsets, type lists, ``oneOf``/``anyOf``, untyped and ``null``
    schemas; each with or without a description, a default, ``nullable`` and other keywords.

    Example:
        >>> schema = random_schema(random.Random(4), WordSource())
        >>> isinstance(schema, dict)
        True
    """
    kinds = _KINDS if depth < 2 else (*_SCALARS, "enum", "untyped")
    kind = rng.choice(kinds)
    spec: dict[str, Any]
    if kind in _SCALARS:
        spec = {"type": kind}
        if rng.random() < 0.3:
            spec["default"] = _value(kind, rng, words)
        if kind in ("number", "integer") and rng.random() < 0.3:
            spec["minimum"] = 0
    elif kind == "enum":
        spec = {"type": "string", "enum": [words() for _ in range(rng.randint(1, 3))]}
        if rng.random() < 0.4:
            spec["default"] = spec["enum"][0]
    elif kind == "array":
        spec = {"type": "array"}
        draw = rng.random()
        if draw < 0.75:
            spec["items"] = random_schema(rng, words, depth + 1)
        elif draw < 0.85:
            spec["items"] = {}  # empty: falsy, where a missing key reads as ``dict.items``
    elif kind == "object":
        spec = {"type": "object"}
        if rng.random() < 0.8:
            properties = {
                f"f_{words()}": random_schema(rng, words, depth + 1) for _ in range(rng.randint(0, 3))
            }
            spec["properties"] = properties
            if properties and rng.random() < 0.7:
                spec["required"] = rng.sample(list(properties), rng.randint(0, len(properties)))
        if rng.random() < 0.3:
            spec["additionalProperties"] = rng.choice([False, {"type": rng.choice(_SCALARS)}])
    elif kind == "type_list":
        spec = {"type": rng.sample([*_SCALARS, "null", "object", "array"], rng.randint(1, 3))}
    elif kind in ("one_of", "any_of"):
        variants = [random_schema(rng, words, depth + 1) for _ in range(rng.randint(1, 3))]
        spec = {"oneOf" if kind == "one_of" else "anyOf": variants}
        if rng.random() < 0.5:
            spec["default"] = words()
    elif kind == "null":
        spec = {"type": "null"}
    else:
        spec = {}
        if rng.random() < 0.5:
            spec["default"] = words()
    if rng.random() < 0.6:
        spec["description"] = words()
    if rng.random() < 0.35 and kind not in ("type_list", "null"):
        spec["nullable"] = True
    if rng.random() < 0.1:
        spec["title"] = words()
    return spec


def _value(kind: str, rng: random.Random, words: WordSource) -> Any:
    if kind == "string":
        return words()
    if kind == "boolean":
        return rng.random() < 0.5
    return words.number()
