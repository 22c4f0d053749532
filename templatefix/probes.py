"""Probe conversations: the shapes SPEC §4 asks every patch to be checked on.

A :class:`Probe` is one conversation plus the template arguments to render it with. Every text
in a probe (message contents, reasoning, tool arguments and results) is a distinct word-like
string such as ``"alpha101"``, so the verifier can find each message in a render by search.

:func:`probe_battery` gives the shapes of SPEC §4 (one turn, system and several turns, tool calls
with results, reasoning, content parts, empty content, documents when the template reads them)
and repeats the shapes that show history rewriting under every value of every flag the template
reads (:func:`templatefix.flags.find_flags`, e.g. ``enable_thinking``). Shapes a template rejects
stay in the battery; the verifier skips them (:func:`accepts`). The conversations' building
blocks live in ``templatefix.conversation``, the base shapes in ``templatefix.shapes``.

Example:
    >>> battery = probe_battery("{% for m in messages %}{{ m.content }}{% endfor %}")
    >>> battery[0].name, [m["role"] for m in battery[0].messages]
    ('single_turn', ['user', 'assistant'])
    >>> find_flags("{% if enable_thinking is defined and not enable_thinking %}x{% endif %}")
    {'enable_thinking': (True, False)}
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from functools import lru_cache
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
from templatefix.errors import RenderError
from templatefix.flags import find_flags, template_reads
from templatefix.render import render
from templatefix.shapes import BASE_SHAPE_BUILDERS, FLAG_SHAPES, make_probe
from templatefix.template import ChatTemplate

#: At most this many probes per battery. Each probe costs several renders per assistant turn in
#: verification (prompt and full render per turn, patched and original), so the battery stays
#: small; base shapes always fit, flag variants fill the rest.
MAX_BATTERY = 30

#: At most this many flag combinations (a flag value with a shape of
#: :data:`templatefix.shapes.FLAG_SHAPES`) on top of :data:`MAX_BATTERY`; combinations that
#: behave like the shape without the flag are not counted (nor kept).
MAX_FLAG_PROBES = 90

#: Seeds of the random conversations added to every battery (SPEC §4: random conversations
#: too), chosen for variety: parts, parallel calls, reasoning before calls, empty answers.
RANDOM_SEEDS = (3, 9, 12, 14, 18)


def random_conversation(seed: int) -> Probe:
    """A random but reproducible conversation: optional system, 1–3 turns mixing plain answers,
    reasoning, parallel tool calls with results, list-of-parts content and empty answers.

    Example:
        >>> random_conversation(3) == random_conversation(3)
        True
    """
    rng = random.Random(seed)
    words = WordSource(start=300 + 37 * seed)
    messages: list[Message] = [system_message(words)] if rng.random() < 0.5 else []
    tools: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 3)):
        user = user_message(words)
        if rng.random() < 0.2:
            user["content"] = [{"type": "text", "text": user["content"]}]
        messages.append(user)
        if rng.random() < 0.35:
            calls = []
            for _ in range(rng.randint(1, 2)):
                name = rng.choice(("search_", "fetch_", "lookup_")) + words()
                tools.append(tool_schema(name, words))
                calls.append(tool_call(name, words))
            call_message: Message = {
                "role": "assistant",
                "content": words() if rng.random() < 0.4 else "",
                "tool_calls": calls,
            }
            if rng.random() < 0.4:
                call_message["reasoning_content"] = words()
            messages.append(call_message)
            messages.extend(tool_result(call, words) for call in calls)
        answer = assistant_message(words, reasoning=rng.random() < 0.4)
        if rng.random() < 0.15:
            answer["content"] = ""
        messages.append(answer)
    return Probe(f"random-{seed}", tuple(messages), {"tools": tools} if tools else {})


def probe_battery(
    template: ChatTemplate | str, *, limit: int = MAX_BATTERY, search: bool = True
) -> list[Probe]:
    """The probe conversations for ``template`` (SPEC §4).

    First the fixed battery (:func:`fixed_battery`, at most ``limit`` probes); then, with
    ``search``, the conversations derived from what the template reads
    (``templatefix.derive``) that reach an output or branch outcome the others do not
    (``templatefix.coverage.search``, within its budget), then the conversations built from the
    path condition of each output still unreached (``templatefix.solve.reach``). Cached per
    template.

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.
        RenderLimitExceeded: a render hit a bound.
    """
    return list(_battery(ChatTemplate.of(template), limit, search))


@lru_cache(maxsize=64)
def _battery(template: ChatTemplate, limit: int, search: bool) -> tuple[Probe, ...]:
    from templatefix import coverage, derive, solve

    battery = fixed_battery(template, limit=limit)
    if search:
        mutate = derive.Mutator(template)
        # nothing new for two candidates per kind of change in a row: each had its chance
        patience = max(coverage.PATIENCE, 2 * mutate.changes)
        battery += coverage.search(
            template,
            battery,
            derive.candidates(template),
            mutate=mutate,
            patience=patience,
            first=len(derive.first_pass(template)),
        )
        # what the search left unreached: conversations built from each output's path condition
        battery += solve.reach(template, battery)
        # every output reached under every flag value too
        battery += coverage.flag_cover(template, battery, find_flags(template))
    return tuple(battery)


def fixed_battery(template: ChatTemplate | str, *, limit: int = MAX_BATTERY) -> list[Probe]:
    """The probe conversations every template gets (SPEC §4).

    First the base shapes (plus ``documents`` if the template reads ``documents``) and the random
    conversations, at most ``limit`` of them; then, for every flag value from :func:`find_flags`,
    the shapes in :data:`FLAG_SHAPES` (tool calls with one and several calls, with and without
    text and reasoning; earlier turns with and without reasoning), named like
    ``"reasoning_multi_turn[enable_thinking=False]"``. A flag value changes which markers are
    right (a literal that is the generation prompt's under one value and part of the answer under
    another), so every value is combined with every such shape; a combination whose renders
    (the conversation, and the prompt before its last assistant turn) and the outputs that wrote
    text equal the shape's without the flag is left out: it checks nothing the shape does not. At
    most :data:`MAX_FLAG_PROBES` flag combinations, added round-robin (every value's first shape
    before any value's second).

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.
    """
    template = ChatTemplate.of(template)
    battery = [make_probe(shape) for shape in BASE_SHAPE_BUILDERS]
    if "documents" in template_reads(template):
        battery.append(make_probe("documents"))
    battery.extend(random_conversation(seed) for seed in RANDOM_SEEDS)
    battery = battery[:limit]
    variants = [(flag, value) for flag, values in find_flags(template).items() for value in values]
    added = 0
    for shape in FLAG_SHAPES:
        plain = _behaviour(template, make_probe(shape)) if variants else None
        for flag, value in variants:
            if added >= MAX_FLAG_PROBES:
                return battery
            probe = make_probe(shape, {flag: value}, name=f"{shape}[{flag}={value!r}]")
            if plain is not None and _behaviour(template, probe) == plain:
                continue
            battery.append(probe)
            added += 1
    return battery


def _behaviour(template: ChatTemplate, probe: Probe) -> tuple[Any, ...] | None:
    """What the original template does on ``probe``: the full render, the render of the prompt
    before its last assistant turn, and the outputs that wrote text (not the branch outcomes: a flag
    passed with its default value takes other outcomes of ``is defined`` and nothing else);
    ``None`` if a render fails (such a probe is kept: the patch must fail alike)."""
    from templatefix.coverage import probe_features
    from templatefix.oracle import remembered_render

    messages = list(probe.messages)
    kwargs = probe.render_kwargs()
    try:
        renders = [remembered_render(template.text, messages, kwargs, False, None)]
        last = max((i for i, message in enumerate(messages) if message.get("role") == "assistant"), default=0)
        renders.append(remembered_render(template.text, messages[:last], kwargs, True, None))
        features = probe_features(template, probe)
    except RenderError:
        return None
    outputs = frozenset(feature for feature in features or () if feature[0] == "out")
    return (tuple(renders), outputs)


def accepts(template: str, probe: Probe, special_tokens: Mapping[str, Any] | None = None) -> bool:
    """Whether ``template`` renders ``probe`` (``add_generation_prompt=False``) without failing.

    A refusal through ``raise_exception`` and any other render failure both count as "no".

    Example:
        >>> accepts("{{ raise_exception('no') }}", make_probe("single_turn"))
        False
    """
    try:
        render(template, probe.conversation(), special_tokens=special_tokens, **probe.render_kwargs())
    except RenderError:
        return False
    return True


def train_field_variants(probes: list[Probe], field_name: str) -> list[Probe]:
    """``probes`` plus, for each probe with assistant turns, one per turn switched off through
    ``field_name`` (the ``train_field`` policy), so every kind of turn is probed both ways.

    In each variant one assistant turn gets ``field_name: false``; with several turns the others
    get ``true`` (so "the last turn", "the first turn" and "the field is set" are all told apart
    from "the field is not false"). A turn in every position is switched off once: a template
    writes a turn after tool results, or the last one, through other outputs than the first.

    Example:
        >>> probe = Probe("p", ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}))
        >>> train_field_variants([probe], "train")[1].messages[1]["train"]
        False
    """
    variants = list(probes)
    for probe in probes:
        assistants = [i for i, m in enumerate(probe.messages) if m.get("role") == "assistant"]
        for off, switched in enumerate(assistants):
            messages = [dict(m) for m in probe.messages]
            for index in assistants:
                messages[index][field_name] = len(assistants) > 1 and index != switched
            suffix = f"[{field_name}]" if off == 0 else f"[{field_name}@{off}]"
            variants.append(Probe(f"{probe.name}{suffix}", tuple(messages), dict(probe.kwargs)))
    return variants


def policy_probes(probes: list[Probe], policy: Any) -> list[Probe]:
    """The probes a policy needs: ``train_field`` adds :func:`train_field_variants`."""
    field_name = getattr(policy, "train_field", None)
    return train_field_variants(probes, field_name) if field_name else list(probes)
