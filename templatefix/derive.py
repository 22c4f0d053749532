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

import copy
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes

from templatefix.errors import RenderLimitExceeded
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
from templatefix.schemas import (
    Change,
    random_tool,
    rich_tools,
    schema_minimal,
    schema_types,
    schema_undescribed,
    schema_unions,
    tools_without_calls,
)

#: Seeded random combinations tried after the systematic candidates.
RANDOM_COMBINATIONS = 60
#: Tools drawn from the schema grammar, each rendered alone, for :func:`tool_zoo`.
SCHEMA_DRAWS = 64

_CALL = MESSAGE + ("tool_calls", ELEMENT)
_CONTENT = MESSAGE + ("content",)
_KNOWN_FIELDS = frozenset(
    {"role", "content", "tool_calls", "tool_call_id", "name", "reasoning_content", "thinking", "reasoning"}
)
_STANDARD_ROLES = frozenset({"system", "user", "assistant", "tool"})
_TOOL_SHAPES = ("tool_calls", "tool_calls_multi", "reasoning_tool_calls")
_CHAT_SHAPES = ("system_multi_turn", "multi_turn")
#: Where a part is added to a message of another role than ``user``, and the shape that has one
#: (not to an assistant's: a model that writes text does not generate image parts).
_PART_CARRIERS = (("system", "system_multi_turn"), ("tool", "tool_calls"))
#: Base shapes tried under every flag value (the fixed battery has the reasoning ones).
_FLAG_CARRIERS = ("tool_calls", "tool_calls_multi", "content_parts", "whitespace_content")


@dataclass(frozen=True)
class Variation:
    """One change to a conversation, and the shapes it is applied to."""

    name: str
    change: Change
    carriers: tuple[str, ...]
    #: Whether :class:`Mutator` applies it to any probe. A field the template reads but no
    #: standard message has is made up from its reads and put on every assistant and tool
    #: message: on its carriers that is one telling conversation, stacked on a random one it is
    #: data nobody sends.
    stackable: bool = True


def candidates(template: str, seed: int = 0) -> Iterator[Probe]:
    """Probe conversations for ``template``'s reads, systematic first, then seeded random ones.

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.
    """
    variations, flag_values = _vocabulary(template)
    systematic = [variation for variation in variations if variation.carriers]
    zoo = tool_zoo(template)
    if zoo is not None:
        yield zoo
    for round_ in range(max((len(v.carriers) for v in systematic), default=0)):
        for variation in systematic:  # every variation once before any variation twice
            if round_ < len(variation.carriers):
                probe = _build(variation.carriers[round_], [variation], {})
                if probe is not None:
                    yield probe
    options = [variation for variation in systematic if variation.name.startswith("option_")]
    if len(options) > 1:  # a template may need all its options at once (a date and a function list)
        for shape in options[0].carriers:
            probe = _build(shape, options, {})
            if probe is not None:
                yield probe
    for flag, value in flag_values:
        for shape in _FLAG_CARRIERS:
            probe = _build(shape, [], {flag: value})
            if probe is not None:
                yield probe
    for variation in systematic:
        for flag, value in flag_values:
            probe = _build(variation.carriers[0], [variation], {flag: value})
            if probe is not None:
                yield probe
    for index, first in enumerate(systematic):
        for second in systematic[index + 1 :]:
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


class Mutator:
    """Changes a probe by one more variation or flag value, for the coverage search.

    ``templatefix.coverage.search`` stacks changes on the probes that reached something new, so a
    branch nested under several conditions (a tool message, with list content, holding an image,
    under a flag) is reached step by step. Deterministic for a given ``rng``.

    Example:
        >>> from templatefix.probes import make_probe
        >>> template = "{% for m in messages %}{{ m.content }}{{ m.tool_calls }}{% endfor %}"
        >>> mutate = Mutator(template)
        >>> child = mutate([make_probe("tool_calls")], random.Random(0))
        >>> child is None or child.name.startswith("tool_calls+")
        True
    """

    def __init__(self, template: str) -> None:
        self.variations, self.flag_values = _vocabulary(template)
        self._count = 0
        self._queue: list[Variation] = []

    @property
    def changes(self) -> int:
        """How many distinct changes the mutator makes (variations and flag values)."""
        return len(self.variations) + len(self.flag_values)

    def __call__(
        self, parents: Sequence[Probe], rng: random.Random, names: frozenset[str] = frozenset()
    ) -> Probe | None:
        """A copy of one of ``parents`` changed by the next change in turn, or ``None`` when that
        change applies to none of up to three parents tried.

        ``names``: what the tests on the way to the unreached outputs read; a flag among them
        is set to a true value half the time.
        """
        if not self._queue:  # every variation once, in a shuffled order, before any twice
            self._queue = [variation for variation in self.variations if variation.stackable]
            rng.shuffle(self._queue)
        wanted = [(flag, value) for flag, value in self.flag_values if flag in names and value]
        chosen: Variation | tuple[str, Any]
        if wanted and rng.random() < 0.5:
            chosen = rng.choice(wanted)
        # flags are few and change much: a flag value a third of the time
        elif self.flag_values and (not self._queue or rng.random() < 0.3):
            chosen = rng.choice(self.flag_values)
        elif self._queue:
            chosen = self._queue.pop()
        else:
            return None
        for parent in rng.sample(list(parents), min(3, len(parents))):
            child = self._apply(chosen, parent)
            if child is not None:
                return child
        return None

    def _apply(self, chosen: Variation | tuple[str, Any], probe: Probe) -> Probe | None:
        made_up = {key for message in probe.messages for key in message} - _KNOWN_FIELDS
        if made_up and not (isinstance(chosen, Variation) and chosen.name.startswith("mappings_in_")):
            return None  # a conversation with a made-up field is only reshaped there (see ``stackable``)
        messages = copy.deepcopy(list(probe.messages))
        kwargs = copy.deepcopy(dict(probe.kwargs))
        self._count += 1
        words = WordSource(start=2000 + 60 * (self._count % 300))
        if isinstance(chosen, tuple):
            flag, value = chosen
            if kwargs.get(flag, object()) == value:
                return None
            kwargs[flag] = value
            change = f"{flag}={value!r}"
        else:
            try:
                if not chosen.change(messages, kwargs, words):
                    return None
            except (KeyError, TypeError, AttributeError):  # a change made for another shape of data
                return None
            change = chosen.name
        return Probe(f"{probe.name}+{change}", tuple(messages), kwargs)


def tool_zoo(template: str, draws: int = SCHEMA_DRAWS) -> Probe | None:
    """One probe offering every drawn tool that reached something new in ``template``.

    Tool definitions are rendered the same whatever the conversation, so each of ``draws`` tools
    from the schema grammar (``templatefix.schemas.drawn_tool``) is rendered alone with a
    one-turn conversation, and kept when it reaches an output or a branch outcome the kept ones
    do not. The kept tools together make one probe: it reaches in one render what the draws
    reached. ``None`` when the template does not read ``tools`` or no draw renders.
    """
    from templatefix.coverage import probe_features
    from templatefix.probes import make_probe
    from templatefix.schemas import drawn_tool

    if "tools" not in template_reads(template):
        return None
    base = make_probe("single_turn")
    words = WordSource(start=7000)
    seen: set[Any] = set()
    kept: list[dict[str, Any]] = []
    for draw in range(draws):
        tool = drawn_tool(draw, words)
        try:
            features = probe_features(template, Probe("draw", base.messages, {"tools": [tool]}))
        except RenderLimitExceeded:
            continue  # a schema nested deeper than the template can render is not offered
        if features is not None and not features <= seen:
            seen |= features
            kept.append(tool)
    if not kept:
        return None
    zoo = Probe(f"tool_zoo({len(kept)} tools)", base.messages, {"tools": kept})
    try:
        return zoo if probe_features(template, zoo) is not None else None
    except RenderLimitExceeded:
        return None


def _vocabulary(template: str) -> tuple[list[Variation], list[tuple[str, Any]]]:
    """The variations that apply to ``template`` and every flag value it reads."""
    flags = find_flags(template)
    data = tuple(sorted(template_reads(template) - STANDARD_NAMES - set(flags) - _assigned(template)))
    reads = template_reads_of(template, data)
    flag_values = [(flag, value) for flag, values in flags.items() for value in values]
    return applicable(reads, data), flag_values


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
        found.append(Variation("ends_with_call", _ends_with_call, _TOOL_SHAPES[::2]))
        found.append(Variation("ends_with_result", _ends_with_result, _TOOL_SHAPES[:1]))
        found.append(Variation("nested_arguments", _nested_arguments, _TOOL_SHAPES[:1]))
    content = reads.use(_CONTENT)
    if content.tests & {"string", "iterable", "sequence", "mapping"} or reads.reads(_CONTENT + (ELEMENT,)):
        found.append(Variation("parts_everywhere", _parts_everywhere, (*_CHAT_SHAPES, "tool_calls")))
    if reads.use(_CONTENT + (ELEMENT,)).tests & {"string"}:
        found.append(Variation("string_parts", _string_parts, _CHAT_SHAPES[:1]))
    for part_type in reads.part_types():
        if part_type != "text":
            found.append(Variation(f"part_{part_type}", _with_part(part_type), _CHAT_SHAPES[:1]))
            for role, carrier in _PART_CARRIERS:
                found.append(Variation(f"part_{part_type}@{role}", _with_part(part_type, role), (carrier,)))
    if "mapping" in content.tests:
        found.append(Variation("mapping_tool_result", _mapping_tool_result, ("tool_calls",)))
    elif calls:  # the content may be tested under another name (``tool_body is mapping``)
        found.append(Variation("mapping_tool_result", _mapping_tool_result, ("tool_calls",)))
    if calls:
        found.append(Variation("tool_result_without_content", _tool_result_without_content, ("tool_calls",)))
    if reads.reads(MESSAGE + ("name",)):
        found.append(Variation("names", _names, (*_CHAT_SHAPES[:1], "tool_calls")))
        found.append(Variation("no_tool_name", _no_tool_name, ("tool_calls",)))
    for compared in reads.roles():
        # an upper-case constant is compared after ``| upper``: the message says it in lower case
        role = compared.lower() if compared.isupper() else compared
        if role not in _STANDARD_ROLES:
            found.append(Variation(f"role_{role}", _with_role(role), ("system_multi_turn", "tool_calls")))
            found.append(Variation(f"added_{role}", _adding_role(role), ("system_multi_turn", "tool_calls")))
    if "developer" not in {role.lower() for role in reads.roles()}:  # a role the template does not name
        found.append(Variation("added_developer", _adding_role("developer"), ("system_multi_turn",)))
    for text in _contained(reads):
        found.append(Variation(f"contains_{text}", _containing(text), ("multi_turn", "reasoning_multi_turn")))
    for field_name in reads.fields(MESSAGE):
        if field_name not in _KNOWN_FIELDS:
            found.append(
                Variation(
                    f"field_{field_name}", _with_field(field_name, reads), ("multi_turn", "tool_calls"), False
                )
            )
            found.append(Variation(f"mappings_in_{field_name}", _mappings_in(field_name), ()))
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
        found.append(Variation("tools_without_calls", tools_without_calls, _CHAT_SHAPES))
        found.append(Variation("rich_tools", rich_tools, ("tool_calls",)))
        types = schema_types(_type_names(reads))
        found.append(Variation("schema_types", types, ("tool_calls", "multi_turn")))
        found.append(Variation("schema_unions", schema_unions, ("tool_calls", "multi_turn")))
        found.append(Variation("schema_minimal", schema_minimal, ("tool_calls", "multi_turn")))
        found.append(Variation("schema_undescribed", schema_undescribed, ("tool_calls",)))
        found.append(Variation("random_tool", random_tool, ("multi_turn", "tool_calls")))
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
            message["tool_calls"] = [_flat(call) for call in message["tool_calls"]]
    return bool(_calls(messages))


def _flat(call: dict[str, Any]) -> dict[str, Any]:
    if "function" not in call:
        return call
    return {**({"id": call["id"]} if "id" in call else {}), **call["function"]}


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


def _ends_with_call(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """The conversation ends with the last assistant message that calls tools (no results)."""
    callers = [index for index, message in enumerate(messages) if message.get("tool_calls")]
    if not callers:
        return False
    del messages[callers[-1] + 1 :]
    return True


def _ends_with_result(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
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


def _nested_arguments(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
    """Arguments holding a nested object, a list of objects, ``null`` and ``false``."""
    for call in _calls(messages):
        arguments = _arguments_of(call)
        if isinstance(arguments, dict):
            nested = {"filter": {"field": words(), "range": [1, 2]}, "rows": [{"key": words()}]}
            _set_arguments(call, {**arguments, **nested, "unset": None, "strict": False})
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


def _with_part(part_type: str, role: str = "user") -> Change:
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
                    message["content"] = [part, *_parts(content or words())]
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


def _tool_result_without_content(
    messages: list[Message], kwargs: dict[str, Any], words: WordSource
) -> bool:
    """Tool messages without ``content`` (a tool that returned nothing)."""
    tools = [message for message in messages if message["role"] == "tool"]
    return any([message.pop("content", None) is not None for message in tools])


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


def _mappings_in(field_name: str) -> Change:
    """The values inside a message field become mappings (a mutation after ``field_…``): a text,
    and every value of a mapping in it but its ``name``; lists keep their shape."""

    def mapping(words: WordSource) -> dict[str, Any]:
        return {words(): words(), words(): [words(), words.number()]}

    def deepen(value: Any, words: WordSource) -> Any:
        if isinstance(value, list):
            return [deepen(item, words) for item in value]
        if isinstance(value, dict):
            return {key: item if key == "name" else mapping(words) for key, item in value.items()}
        return mapping(words) if isinstance(value, str) else value

    def change(messages: list[Message], kwargs: dict[str, Any], words: WordSource) -> bool:
        changed = False
        for message in messages:
            if field_name in message:
                message[field_name] = deepen(message[field_name], words)
                changed = True
        return changed

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
