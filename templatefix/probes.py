"""Probe conversations: the shapes SPEC §4 asks every patch to be checked on.

A :class:`Probe` is one conversation plus the template arguments to render it with. Every text
in a probe (message contents, reasoning, tool arguments and results) is a distinct word-like
string such as ``"alpha101"``, so the verifier can find each message in a render by search.

:func:`probe_battery` gives the shapes of SPEC §4 (one turn, system and several turns, tool calls
with results, reasoning, content parts, empty content, documents when the template reads them)
and repeats the shapes that show history rewriting under every value of every flag the template
reads (:func:`templatefix.flags.find_flags`, e.g. ``enable_thinking``). Shapes a template rejects stay in the
battery; the verifier skips them (:func:`accepts`).

Example:
    >>> battery = probe_battery("{% for m in messages %}{{ m.content }}{% endfor %}")
    >>> battery[0].name, [m["role"] for m in battery[0].messages]
    ('single_turn', ['user', 'assistant'])
    >>> find_flags("{% if enable_thinking is defined and not enable_thinking %}x{% endif %}")
    {'enable_thinking': (True, False)}
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from templatefix.environment import detected_behaviour
from templatefix.errors import RenderError
from templatefix.flags import MAX_VALUES_PER_FLAG as MAX_VALUES_PER_FLAG  # re-exported
from templatefix.flags import STANDARD_NAMES as STANDARD_NAMES  # re-exported
from templatefix.flags import find_flags as find_flags  # re-exported
from templatefix.flags import template_reads as template_reads  # re-exported
from templatefix.render import render

Message = dict[str, Any]

#: At most this many probes per battery. Each probe costs several renders per assistant turn in
#: verification (prompt and full render per turn, patched and original), so the battery stays
#: small; base shapes always fit, flag variants fill the rest.
MAX_BATTERY = 30

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


def _assistant(words: WordSource, *, reasoning: bool = False, content: str | None = None) -> Message:
    message: Message = {"role": "assistant", "content": words() if content is None else content}
    if reasoning:
        message["reasoning_content"] = words()
    return message


def _user(words: WordSource) -> Message:
    return {"role": "user", "content": words()}


def _system(words: WordSource) -> Message:
    return {"role": "system", "content": words()}


# --- the base shapes (SPEC §4) -----------------------------------------------------------------


def _single_turn(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    return [_user(words), _assistant(words)], {}


def _system_multi_turn(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    messages = [_system(words), _user(words), _assistant(words), _user(words), _assistant(words)]
    return messages, {}


def _multi_turn(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    return [_user(words), _assistant(words), _user(words), _assistant(words)], {}


def _tool_calls(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    name = "lookup_" + words()
    tools = [tool_schema(name, words)]
    call = tool_call(name, words)
    messages = [
        _user(words),
        {"role": "assistant", "content": "", "tool_calls": [call]},
        tool_result(call, words),
        _assistant(words),
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
        _user(words),
        {"role": "assistant", "tool_calls": calls},
        *(tool_result(call, words) for call in calls),
        _assistant(words),
    ]
    return messages, {"tools": tools}


def _tool_calls_multi(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """System, text plus two parallel calls, two results, an answer, then one more turn."""
    first, second = "search_" + words(), "fetch_" + words()
    tools = [tool_schema(first, words), tool_schema(second, words)]
    calls = [tool_call(first, words), tool_call(second, words)]
    messages = [
        _system(words),
        _user(words),
        {"role": "assistant", "content": words(), "tool_calls": calls},
        *(tool_result(call, words) for call in calls),
        _assistant(words),
        _user(words),
        _assistant(words),
    ]
    return messages, {"tools": tools}


def _tool_calls_parallel(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Two parallel calls with no text: separators between calls must not depend on content."""
    first, second = "search_" + words(), "fetch_" + words()
    tools = [tool_schema(first, words), tool_schema(second, words)]
    calls = [tool_call(first, words), tool_call(second, words)]
    messages = [
        _user(words),
        {"role": "assistant", "content": "", "tool_calls": calls},
        *(tool_result(call, words) for call in calls),
        _assistant(words),
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


def _reasoning(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    return [_user(words), _assistant(words, reasoning=True)], {}


def _reasoning_multi_turn(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Reasoning on every assistant turn, so templates that drop old reasoning show it."""
    messages = [
        _system(words),
        _user(words),
        _assistant(words, reasoning=True),
        _user(words),
        _assistant(words, reasoning=True),
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
        _user(words),
        thinking_call,
        tool_result(call, words),
        _assistant(words, reasoning=True),
        _user(words),
        _assistant(words, reasoning=True),
    ]
    return messages, {"tools": tools}


def _reasoning_some_turns(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Reasoning in the first and third turns, none in the second and the last."""
    messages = [_system(words)]
    for turn in range(4):
        messages += [_user(words), _assistant(words, reasoning=turn % 2 == 0)]
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


def _content_parts(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    """Contents as lists of text parts: one part, and two in the assistant turns. The system
    message is a string (templates that add it to a string reject a list there, and would then
    reject the whole conversation)."""

    def parts(count: int = 1) -> list[dict[str, str]]:
        return [{"type": "text", "text": words()} for _ in range(count)]

    messages = [
        _system(words),
        {"role": "user", "content": parts()},
        {"role": "assistant", "content": parts(2)},
        {"role": "user", "content": parts()},
        {"role": "assistant", "content": parts(2)},
    ]
    return messages, {}


def _empty_content(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    messages = [_user(words), _assistant(words, content=""), _user(words), _assistant(words)]
    return messages, {}


def _documents(words: WordSource) -> tuple[list[Message], dict[str, Any]]:
    documents = [{"title": words(), "text": words()}, {"title": words(), "text": words()}]
    return [_user(words), _assistant(words)], {"documents": documents}


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
}
#: The base shapes' builders by name (``templatefix.derive`` varies them).
BASE_SHAPE_BUILDERS = _BASE_SHAPES
#: Shapes repeated under each flag value, most telling first: reasoning in some turns shows history
#: rewriting and a final turn without reasoning after turns with it (Qwen3.6 with thinking off).
FLAG_SHAPES = ("reasoning_some_turns", "reasoning_multi_turn", "reasoning_tool_calls", "system_multi_turn")


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


# --- the battery -------------------------------------------------------------------------------


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
    messages: list[Message] = [_system(words)] if rng.random() < 0.5 else []
    tools: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 3)):
        user = _user(words)
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
        answer = _assistant(words, reasoning=rng.random() < 0.4)
        if rng.random() < 0.15:
            answer["content"] = ""
        messages.append(answer)
    return Probe(f"random-{seed}", tuple(messages), {"tools": tools} if tools else {})


def probe_battery(template: str, *, limit: int = MAX_BATTERY, search: bool = True) -> list[Probe]:
    """The probe conversations for ``template`` (SPEC §4).

    First the fixed battery (:func:`fixed_battery`, at most ``limit`` probes); then, with
    ``search``, the conversations derived from what the template reads
    (``templatefix.derive``) that reach an output or branch outcome the others do not
    (``templatefix.coverage.search``, within its budget). Cached per template.

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.
        RenderLimitExceeded: a render hit a bound.
    """
    return list(_battery(template, limit, search))


@lru_cache(maxsize=64)
def _battery(template: str, limit: int, search: bool) -> tuple[Probe, ...]:
    from templatefix import coverage, derive

    battery = fixed_battery(template, limit=limit)
    if search:
        mutate = derive.Mutator(template)
        # nothing new for two candidates per kind of change in a row: each had its chance
        patience = max(coverage.PATIENCE, 2 * mutate.changes)
        battery += coverage.search(
            template, battery, derive.candidates(template), mutate=mutate, patience=patience
        )
    return tuple(battery)


def fixed_battery(template: str, *, limit: int = MAX_BATTERY) -> list[Probe]:
    """The probe conversations every template gets (SPEC §4), at most ``limit`` of them.

    First the base shapes (plus ``documents`` if the template reads ``documents``) with no flags
    passed; then, for every flag value from :func:`find_flags`, the shapes in
    :data:`FLAG_SHAPES`, named like ``"reasoning_multi_turn[enable_thinking=False]"``. Flag
    variants are added round-robin (every value's first shape before any value's second), so
    when the cap cuts the list every value is still probed at least once if it fits.

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.
    """
    battery = [make_probe(shape) for shape in _BASE_SHAPES]
    if "documents" in template_reads(template):
        battery.append(make_probe("documents"))
    battery.extend(random_conversation(seed) for seed in RANDOM_SEEDS)
    variants = [(flag, value) for flag, values in find_flags(template).items() for value in values]
    for shape in FLAG_SHAPES:
        for flag, value in variants:
            if len(battery) >= limit:
                return battery
            name = f"{shape}[{flag}={value!r}]"
            battery.append(make_probe(shape, {flag: value}, name=name))
    return battery[:limit]


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
    """``probes`` plus, for each probe with an assistant turn, one where a turn is switched off
    through ``field_name`` (the ``train_field`` policy), so both kinds of turn are probed.

    With one assistant turn it gets ``field_name: false``; with several, the first one gets
    ``false`` and the others ``true`` (so "the last turn", "the first turn" and "the field is
    set" are all told apart from "the field is not false").

    Example:
        >>> probe = Probe("p", ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}))
        >>> train_field_variants([probe], "train")[1].messages[1]["train"]
        False
    """
    variants = list(probes)
    for probe in probes:
        assistants = [i for i, m in enumerate(probe.messages) if m.get("role") == "assistant"]
        if not assistants:
            continue
        messages = [dict(m) for m in probe.messages]
        for position, index in enumerate(assistants):
            messages[index][field_name] = len(assistants) > 1 and position > 0
        variants.append(Probe(f"{probe.name}[{field_name}]", tuple(messages), dict(probe.kwargs)))
    return variants


def policy_probes(probes: list[Probe], policy: Any) -> list[Probe]:
    """The probes a policy needs: ``train_field`` adds :func:`train_field_variants`."""
    field_name = getattr(policy, "train_field", None)
    return train_field_variants(probes, field_name) if field_name else list(probes)
