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
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes

from templatefix import changes
from templatefix.conversation import Probe, WordSource
from templatefix.errors import RenderLimitExceeded
from templatefix.flags import STANDARD_NAMES, find_flags, template_reads
from templatefix.reads import ELEMENT, MESSAGE, Reads, template_reads_of
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
from templatefix.shapes import BASE_SHAPE_BUILDERS
from templatefix.template import ChatTemplate

#: Seeded random combinations tried after the systematic candidates.
RANDOM_COMBINATIONS = 60
#: Tools drawn from the schema grammar, each rendered alone, for :func:`tool_zoo`.
SCHEMA_DRAWS = 48

_CALL = MESSAGE + ("tool_calls", ELEMENT)
_CONTENT = MESSAGE + ("content",)
_KNOWN_FIELDS = frozenset(
    {"role", "content", "tool_calls", "tool_call_id", "name", "reasoning_content", "thinking", "reasoning"}
)
_STANDARD_ROLES = frozenset({"system", "user", "assistant", "tool"})
_TOOL_SHAPES = ("tool_calls", "tool_calls_multi", "reasoning_tool_calls")
_CHAT_SHAPES = ("system_multi_turn", "multi_turn")
_MULTI_AND_TOOLS = ("multi_turn", "tool_calls")
_TOOLS_AND_MULTI = ("tool_calls", "multi_turn")
_SYSTEM_AND_TOOLS = ("system_multi_turn", "tool_calls")
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


def candidates(template: ChatTemplate | str, seed: int = 0) -> Iterator[Probe]:
    """Probe conversations for ``template``'s reads, systematic first, then seeded random ones.

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.
    """
    template = ChatTemplate.of(template)
    variations, flag_values = _vocabulary(template)
    systematic = [variation for variation in variations if variation.carriers]
    yield from first_pass(template)
    # a template may need all its arguments at once (a date and a function list; documents and
    # the options that say how to cite them)
    options = [v for v in systematic if v.name.startswith("option_") or v.name == "documents"]
    if len(options) > 1:
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


def first_pass(template: ChatTemplate | str) -> list[Probe]:
    """The first candidates of :func:`candidates`: the tool zoo, then every variation alone on
    each of its carriers (every variation once before any variation twice). Each says one thing
    the template reads, so the coverage search renders them all before its patience may stop it.
    """
    template = ChatTemplate.of(template)
    return list(template.resolve(_first_pass))


def _first_pass(template: ChatTemplate) -> tuple[Probe, ...]:
    variations, _ = _vocabulary(template)
    systematic = [variation for variation in variations if variation.carriers]
    found: list[Probe] = []
    zoo = tool_zoo(template)
    if zoo is not None:
        found.append(zoo)
    for round_ in range(max((len(v.carriers) for v in systematic), default=0)):
        for variation in systematic:  # every variation once before any variation twice
            if round_ < len(variation.carriers):
                probe = _build(variation.carriers[round_], [variation], {})
                if probe is not None:
                    found.append(probe)
    return tuple(found)


class Mutator:
    """Changes a probe by one more variation or flag value, for the coverage search.

    ``templatefix.coverage.search`` stacks changes on the probes that reached something new, so a
    branch nested under several conditions (a tool message, with list content, holding an image,
    under a flag) is reached step by step. Deterministic for a given ``rng``.

    Example:
        >>> from templatefix.shapes import make_probe
        >>> template = "{% for m in messages %}{{ m.content }}{{ m.tool_calls }}{% endfor %}"
        >>> mutate = Mutator(template)
        >>> child = mutate([make_probe("tool_calls")], random.Random(0))
        >>> child is None or child.name.startswith("tool_calls+")
        True
    """

    def __init__(self, template: ChatTemplate | str) -> None:
        self.variations, self.flag_values = _vocabulary(ChatTemplate.of(template))
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
        if {key for message in probe.messages for key in message} - _KNOWN_FIELDS:
            return None  # a conversation with a made-up field is not changed further (``stackable``)
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


def tool_zoo(template: ChatTemplate | str, draws: int = SCHEMA_DRAWS) -> Probe | None:
    """One probe offering every drawn tool that reached something new in ``template``.

    Tool definitions are rendered the same whatever the conversation, so each of ``draws`` tools
    from the schema grammar (``templatefix.schemas.drawn_tool``) is rendered alone with a
    one-turn conversation, and kept when it reaches an output or a branch outcome the kept ones
    do not. The kept tools together make one probe: it reaches in one render what the draws
    reached. ``None`` when the template does not read ``tools`` or no draw renders.
    """
    from templatefix.coverage import probe_features
    from templatefix.schemas import drawn_tool
    from templatefix.shapes import make_probe

    template = ChatTemplate.of(template)
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


def _vocabulary(template: ChatTemplate) -> tuple[list[Variation], list[tuple[str, Any]]]:
    """The variations that apply to ``template`` and every flag value it reads."""
    flags = find_flags(template)
    data = tuple(sorted(template_reads(template) - STANDARD_NAMES - set(flags) - _assigned(template)))
    reads = template_reads_of(template, data)
    flag_values = [(flag, value) for flag, values in flags.items() for value in values]
    return applicable(reads, data), flag_values


def _assigned(template: ChatTemplate) -> set[str]:
    """Names the template assigns itself (locals, loop variables, macros)."""
    tree = template.ast
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
        found.append(Variation("no_call_ids", changes.no_call_ids, _TOOL_SHAPES[:2]))
    if reads.reads(MESSAGE + ("tool_call_id",)):
        found.append(Variation("no_tool_call_id", changes.no_tool_call_id, _TOOL_SHAPES[:1]))
    if calls and (reads.use(_CALL + ("function",)).tested or reads.reads(_CALL + ("name",))):
        found.append(Variation("flat_calls", changes.flat_calls, _TOOL_SHAPES[:2]))
    if reads.reads(_CALL + ("type",)):
        found.append(Variation("no_call_type", changes.no_call_type, _TOOL_SHAPES[:1]))
    if calls:
        found.append(
            Variation(
                "string_arguments",
                changes.string_arguments,
                (*_TOOL_SHAPES[1:], "tool_calls_rich_schema"),
            )
        )
        found.append(Variation("two_arguments", changes.two_arguments, _TOOL_SHAPES))
        found.append(Variation("typed_arguments", changes.typed_arguments, _TOOL_SHAPES[:2]))
        found.append(Variation("three_calls", changes.three_calls, _TOOL_SHAPES[:1]))
        found.append(Variation("two_tool_rounds", changes.two_tool_rounds, _TOOL_SHAPES[:1]))
        found.append(Variation("no_tool_call_text", changes.no_content_on_calls, _TOOL_SHAPES))
        found.append(Variation("ends_with_call", changes.ends_with_call, _TOOL_SHAPES[::2]))
        found.append(Variation("ends_with_result", changes.ends_with_result, _TOOL_SHAPES[:1]))
        found.append(Variation("nested_arguments", changes.nested_arguments, _TOOL_SHAPES[:1]))
    content = reads.use(_CONTENT)
    if content.tests & {"string", "iterable", "sequence", "mapping"} or reads.reads(_CONTENT + (ELEMENT,)):
        # the last: a system message and tools
        carriers: tuple[str, ...] = (*_CHAT_SHAPES, "tool_calls", "tool_calls_multi")
        found.append(Variation("parts_everywhere", changes.parts_everywhere, carriers))
    if reads.use(_CONTENT + (ELEMENT,)).tests & {"string"}:
        found.append(Variation("string_parts", changes.string_parts, _CHAT_SHAPES[:1]))
    for part_type in reads.part_types():
        if part_type != "text":
            found.append(Variation(f"part_{part_type}", changes.with_part(part_type), _CHAT_SHAPES[:1]))
            for role, carrier in _PART_CARRIERS:
                change = changes.with_part(part_type, role)
                found.append(Variation(f"part_{part_type}@{role}", change, (carrier,)))
    if "mapping" in content.tests:
        found.append(Variation("mapping_tool_result", changes.mapping_tool_result, ("tool_calls",)))
    elif calls:  # the content may be tested under another name (``tool_body is mapping``)
        found.append(Variation("mapping_tool_result", changes.mapping_tool_result, ("tool_calls",)))
    if calls:
        no_content = changes.tool_result_without_content
        found.append(Variation("tool_result_without_content", no_content, ("tool_calls",)))
        if reads.reads(("tools",)):
            found.append(Variation("calls_without_tools", changes.calls_without_tools, ("tool_calls",)))
    if reads.reads(MESSAGE + ("name",)):
        found.append(Variation("names", changes.names, (*_CHAT_SHAPES[:1], "tool_calls")))
        found.append(Variation("no_tool_name", changes.no_tool_name, ("tool_calls",)))
    for compared in reads.roles():
        # an upper-case constant is compared after ``| upper``: the message says it in lower case
        role = compared.lower() if compared.isupper() else compared
        if role not in _STANDARD_ROLES:
            found.append(Variation(f"role_{role}", changes.with_role(role), _SYSTEM_AND_TOOLS))
            found.append(Variation(f"added_{role}", changes.adding_role(role), _SYSTEM_AND_TOOLS))
    if "developer" not in {role.lower() for role in reads.roles()}:  # a role the template does not name
        found.append(Variation("added_developer", changes.adding_role("developer"), ("system_multi_turn",)))
    for text in _contained(reads):
        carriers = ("multi_turn", "reasoning_multi_turn", "tool_calls")  # call turns have content too
        found.append(Variation(f"contains_{text}", changes.containing(text), carriers))
        found.append(Variation(f"contains_{text}@user", changes.containing(text, "user"), carriers))
        system_text = changes.containing(text, "system")
        found.append(Variation(f"contains_{text}@system", system_text, ("system_multi_turn",)))
    for field_name in reads.fields(MESSAGE):
        if field_name not in _KNOWN_FIELDS:
            change = changes.with_field(field_name, reads)
            found.append(Variation(f"field_{field_name}", change, _MULTI_AND_TOOLS, stackable=False))
            change = changes.with_field(field_name, reads, mappings=True)
            found.append(Variation(f"field_{field_name}_mappings", change, ("multi_turn",), stackable=False))
    found.append(Variation("late_system", changes.late_system, ("multi_turn",)))
    if reads.reads(("documents",)):
        found.append(Variation("documents", changes.documents, ("multi_turn", "tool_calls")))
    for name in data:
        if reads.reads((name,)) and reads.paths.keys() - {(name,)}:
            found.append(Variation(f"option_{name}", changes.with_option(name, reads), _MULTI_AND_TOOLS))
    found.append(Variation("reasoning_first_only", changes.reasoning_first_only, ("reasoning_multi_turn",)))
    found.append(Variation("empty_user", changes.empty_user, ("system_multi_turn",)))
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
        found.append(Variation("tools_from_reads", changes.tools_from_reads(reads), _TOOLS_AND_MULTI))
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



def _contained(reads: Reads) -> list[str]:
    texts: set[str] = set()
    for path in (_CONTENT, MESSAGE + ("reasoning_content",)):
        texts |= {text for text in reads.use(path).contains if text.strip()}
    return sorted(texts)



_WHITESPACE = Variation(
    "whitespace", changes.whitespace, ("multi_turn", "reasoning_multi_turn", "tool_calls_multi")
)
