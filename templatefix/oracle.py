"""The oracle: where each assistant turn's span must be (SPEC rules 2–3), from renders alone.

The oracle never looks at markers. It renders the ORIGINAL template and derives, for every
assistant message of a probe conversation, the character range of the full render
``R = render(M, add_generation_prompt=False)`` that a correct patch must mark.

For the assistant message at index ``i``::

    P = render(M[:i],   add_generation_prompt=True)
    F = render(M[:i+1], add_generation_prompt=False)

* ``F`` starts with ``P``: the model's output is ``G = F[len(P):]``. If ``R`` continues after
  ``P`` with ``G`` (trailing whitespace aside) the turn is **exact** and its span is
  ``[len(P), len(P) + len(G.rstrip()))`` (policy ``trailing_whitespace="in"`` adds the whitespace
  that follows in ``R``, as far as ``G`` had it), even where the template writes part of ``G``
  in the next message's loop iteration. Text that ``F`` has only because the conversation ends
  there (Phi-3's ``eos_token``) is left out when ``R`` has the next message instead.
* ``F`` starts with ``P`` but ``R`` renders the turn differently: **rewritten**. The span runs
  from the end of the turn's header (the longest common prefix of the generation prompt and the
  turn's text in ``R``) through its end-of-turn text, holding no text of any other message.
* ``F`` does not start with ``P``: **mismatch** (the generation prompt disagrees with the
  training render, e.g. QwQ's ``<think>\\n``). The span is placed by the rewritten shape.

Where a turn's text ends in ``R`` comes from ``templatefix.trace.message_regions`` (the loop
iteration that rendered the message); for a message no loop iteration rendered alone, from the
probe's unique texts: the end-of-turn text seen in ``F``, or else the start of the next message
(its first text minus its header as rendered in a prefix).

Policies (SPEC §6) shape the expected span:

* ``turns="last"``: only the final assistant message in ``M`` is trained.
* ``tool_calls="not_trained"``: an assistant message carrying ``tool_calls`` is not trained at
  all (content written next to the call included): the whole message is the tool-calling step.
* ``reasoning="not_trained"`` / ``"final_channel_only"``: the span starts after the reasoning,
  namely after the reasoning text, optional whitespace and ONE closing markup token that follows
  it (``</think>``, ``<|end|>``, ``[/THINK]``…). So Qwen3 trains ``\\n\\nanswer<|im_end|>`` and
  gpt-oss trains ``<|start|>assistant<|channel|>final<|message|>answer<|return|>``. If the
  reasoning text is not rendered in the turn, nothing changes.

Example:
    >>> from templatefix.probes import Probe
    >>> chatml = ("{% for m in messages %}<|im_start|>{{ m.role }}\\n{{ m.content }}<|im_end|>\\n"
    ...           "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}")
    >>> probe = Probe("one", ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}))
    >>> expectation = expected_turns(chatml, probe)
    >>> turn = expectation.turns[0]
    >>> turn.kind, expectation.text[turn.start:turn.end]
    ('exact', 'yo<|im_end|>')
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from templatefix.errors import InternalDisagreement, RenderError, RenderLimitExceeded
from templatefix.policy import Policy
from templatefix.render import Span, render
from templatefix.trace import message_regions

TurnKind = Literal["exact", "rewritten", "mismatch"]

#: One markup token: ``<|x|>``, ``<x>``/``</x>``, ``[X]``/``[/X]``.
_MARKUP = r"(?:<\|[^<>|]*\|>|</?[A-Za-z_][^<>\s]*>|\[/?[A-Za-z_][^\[\]\s]*\])"
_TRAILING_MARKUP = re.compile(_MARKUP + r"$")
_LEADING_MARKUP = re.compile(r"\s*" + _MARKUP)


class ProbeLike(Protocol):
    """What the oracle needs from a probe (``templatefix.probes.Probe`` fits)."""

    name: str
    messages: Sequence[Mapping[str, Any]]
    kwargs: Mapping[str, Any]


@dataclass(frozen=True)
class TurnExpectation:
    """Where one assistant message's span must lie in the full render ``R``.

    Attributes:
        message_index: index of the assistant message in the probe conversation.
        kind: ``exact`` | ``rewritten`` | ``mismatch`` (see module docstring).
        trained: whether the policy trains this message; untrained ones must have no span.
        start: first character of the span in ``R``.
        end_out: span end with trailing whitespace out (the default policy).
        end_in: span end with trailing whitespace in.
        end: the end the policy chose (``end_out`` or ``end_in``).
        end_of_turn: the end-of-turn text (``<|im_end|>``…) as seen in ``R``, may be empty.
        end_of_turn_range: where that text lies in ``R`` (``None`` if not found).
        located_by: how the end was found: ``prefix`` (exact), ``trace``, ``end-of-turn``,
            ``next-message`` or ``end-of-render``.
        note: human explanation for rewritten / mismatch turns.
        blank: ``G`` is only whitespace (a tool call the template does not render, an empty
            reply): nothing is owed, so no span or one within ``[start, end_in)`` are both right.
        open_end: ``G`` ends with words, not an end-of-turn token: its trailing whitespace is
            part of the message's own text, so an end anywhere in ``[end_out, end_in]`` is right.
    """

    message_index: int
    kind: TurnKind
    trained: bool
    start: int
    end_out: int
    end_in: int
    end: int
    end_of_turn: str
    end_of_turn_range: Span | None
    located_by: str
    note: str = ""
    blank: bool = False
    open_end: bool = False

    @property
    def span(self) -> Span | None:
        """The expected span, or ``None`` when the policy does not train this message."""
        return (self.start, self.end) if self.trained else None

    def to_json(self) -> dict[str, Any]:
        return {
            "message_index": self.message_index,
            "kind": self.kind,
            "trained": self.trained,
            "start": self.start,
            "end": self.end,
            "end_out": self.end_out,
            "end_in": self.end_in,
            "end_of_turn": self.end_of_turn,
            "end_of_turn_range": list(self.end_of_turn_range) if self.end_of_turn_range else None,
            "located_by": self.located_by,
            "note": self.note,
            "blank": self.blank,
            "open_end": self.open_end,
        }


@dataclass
class ProbeExpectation:
    """The oracle's answer for one probe.

    Attributes:
        probe_name: the probe's name.
        text: the full render ``R`` of the original template.
        turns: one entry per assistant message, in message order.
        renders: every render the oracle made, keyed ``(number of messages, add_generation_prompt)``;
            the verifier renders the patched template with the same arguments (SPEC rule 1).
    """

    probe_name: str
    text: str
    turns: list[TurnExpectation] = field(default_factory=list)
    renders: dict[tuple[int, bool], str] = field(default_factory=dict)

    @property
    def spans(self) -> list[Span]:
        """Expected spans of the trained turns, in order."""
        return [turn.span for turn in self.turns if turn.span is not None]


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


def _rstrip_end(text: str, start: int, end: int) -> int:
    """``end`` moved left over whitespace, never before ``start``."""
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _end_of_turn_text(tail: str) -> str:
    """The end-of-turn text in ``tail`` (what follows a turn's last probe text, stripped).

    The final markup token when there is one (``<|im_end|>``, ``</s>``…), else the whole tail.
    """
    tail = tail.strip()
    match = _TRAILING_MARKUP.search(tail)
    return match.group(0) if match else tail


# --------------------------------------------------------------------------- the oracle


class _Renderer:
    """Memoised renders of prefixes of one probe conversation with the original template."""

    def __init__(
        self, template: str, probe: ProbeLike, special_tokens: Mapping[str, Any] | None
    ) -> None:
        self.template = template
        self.messages = list(probe.messages)
        self.kwargs = dict(probe.kwargs)
        self.special_tokens = special_tokens
        self.renders: dict[tuple[int, bool], str] = {}

    def __call__(self, count: int, add_generation_prompt: bool) -> str:
        key = (count, add_generation_prompt)
        if key not in self.renders:
            self.renders[key] = render(
                self.template,
                self.messages[:count],
                add_generation_prompt=add_generation_prompt,
                special_tokens=self.special_tokens,
                **self.kwargs,
            )
        return self.renders[key]


def _trace_regions(
    template: str, probe: ProbeLike, special_tokens: Mapping[str, Any] | None, full_text: str
) -> list[Span | None]:
    """Per-message regions of ``R`` (``full_text``) from the instrumented trace.

    Raises:
        RenderLimitExceeded: the trace went past a render bound.
        InternalDisagreement: the trace fails on, or renders differently, a conversation that the
            plain render produced ``full_text`` for (a bug in the instrumentation, never a reason
            to answer by another method).
    """
    try:
        text, regions = message_regions(
            template, list(probe.messages), add_generation_prompt=False,
            special_tokens=special_tokens, **dict(probe.kwargs),
        )
    except RenderLimitExceeded:
        raise
    except RenderError as error:
        raise InternalDisagreement(
            f"the instrumented trace fails on a conversation the template renders ({probe.name}): {error}"
        ) from error
    if text != full_text:
        offset = common_prefix_length(text, full_text)
        raise InternalDisagreement(
            f"the instrumented trace renders {probe.name} differently from the template, "
            f"from offset {offset}: {text[offset:offset + 30]!r} vs {full_text[offset:offset + 30]!r}"
        )
    if len(regions) != len(probe.messages):
        raise InternalDisagreement(
            f"the instrumented trace saw {len(regions)} messages in {probe.name}, "
            f"which has {len(probe.messages)}"
        )
    return [tuple(region) if region is not None else None for region in regions]


def expected_turns(
    template: str,
    probe: ProbeLike,
    policy: Policy | None = None,
    special_tokens: Mapping[str, Any] | None = None,
) -> ProbeExpectation:
    """Compute where every assistant turn's span must be, from the ORIGINAL template's renders.

    Inside :func:`remembering`, the answer is remembered for the same template, conversation,
    arguments and policy (the patcher and the verifier both ask for every probe); treat it as
    read-only.

    Raises:
        TemplateRejected / RenderError: the original refuses the conversation or a prefix of it
            (the verifier skips such probes).
    """
    policy = policy or Policy()
    cache = _REMEMBERED.get()
    if cache is None:
        return _expected_turns(template, probe, policy, special_tokens)
    try:
        parts = [template, probe.name, list(probe.messages), dict(probe.kwargs)]
        key = json.dumps([*parts, policy.to_dict(), special_tokens], sort_keys=True)
    except (TypeError, ValueError):  # arguments that are not plain data: not remembered
        return _expected_turns(template, probe, policy, special_tokens)
    if key not in cache:
        cache[key] = _expected_turns(template, probe, policy, special_tokens)
    return cache[key]


_REMEMBERED: ContextVar[dict[str, ProbeExpectation] | None] = ContextVar("expectations", default=None)


@contextmanager
def remembering() -> Iterator[None]:
    """Remember :func:`expected_turns` answers until the block ends (one patch and its check)."""
    token = _REMEMBERED.set({})
    try:
        yield
    finally:
        _REMEMBERED.reset(token)


def _expected_turns(
    template: str, probe: ProbeLike, policy: Policy, special_tokens: Mapping[str, Any] | None
) -> ProbeExpectation:
    renderer = _Renderer(template, probe, special_tokens)
    messages = renderer.messages
    full = renderer(len(messages), False)
    located = locate_texts(full, messages)
    regions = _trace_regions(template, probe, special_tokens, full)
    assistant_indices = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    last_assistant = assistant_indices[-1] if assistant_indices else -1

    expectation = ProbeExpectation(probe_name=probe.name, text=full)
    for index in assistant_indices:
        turn = _expect_turn(renderer, index, full, located, regions)
        trained = _is_trained(messages[index], index, last_assistant, policy)
        start = turn.start
        if trained and policy.reasoning != "trained":
            start = _answer_start(full, messages[index], turn.start, turn.end_out)
        end = turn.end_in if policy.trailing_whitespace == "in" else turn.end_out
        expectation.turns.append(
            TurnExpectation(
                message_index=index, kind=turn.kind, trained=trained, start=start,
                end_out=turn.end_out, end_in=turn.end_in, end=end,
                end_of_turn=turn.end_of_turn, end_of_turn_range=turn.end_of_turn_range,
                located_by=turn.located_by, note=turn.note, blank=turn.blank, open_end=turn.open_end,
            )
        )
    expectation.renders = dict(renderer.renders)
    return expectation


def _is_trained(message: Mapping[str, Any], index: int, last_assistant: int, policy: Policy) -> bool:
    if policy.turns == "last" and index != last_assistant:
        return False
    if policy.tool_calls == "not_trained" and message.get("tool_calls"):
        return False
    return policy.trains(message)


def _answer_start(text: str, message: Mapping[str, Any], start: int, end: int) -> int:
    """Where the answer part of a turn begins: after the reasoning text and its closing markup."""
    reasoning = reasoning_text(message)
    if not reasoning:
        return start
    position = text.find(reasoning, start, end)
    if position < 0:
        return start
    after = position + len(reasoning)
    closing = _LEADING_MARKUP.match(text, after, end)
    return closing.end() if closing else after


@dataclass
class _Turn:
    kind: TurnKind
    start: int
    end_out: int
    end_in: int
    end_of_turn: str
    end_of_turn_range: Span | None
    located_by: str
    note: str = ""
    blank: bool = False
    open_end: bool = False


def _expect_turn(
    renderer: _Renderer,
    index: int,
    full: str,
    located: list[list[Span]],
    regions: list[Span | None] | None,
) -> _Turn:
    prompt = renderer(index, True)
    final = renderer(index + 1, False)
    before = renderer(index, False)
    message = renderer.messages[index]

    if final.startswith(prompt):
        generated = final[len(prompt):]
        eot = _end_of_turn_from_generated(generated, message)
        is_last = index == len(renderer.messages) - 1
        if is_last or full.startswith(generated.rstrip(), len(prompt)):
            # R continues after P with G: all of G is the turn's, whichever loop iteration writes
            # it (AI21 Jamba ends a turn with <|eom|> when the next message starts).
            own = generated
        else:
            own = _own_output(renderer, index, prompt, generated, full)
        core = own.rstrip()
        if full.startswith(prompt) and full.startswith(core, len(prompt)):
            start = len(prompt)
            header = _next_header_length(renderer, index, core, prompt)
            if header:
                # F ends with the next assistant turn's header, the markup P ends with: the span
                # stops before it (SPEC §2), the end-of-turn text before it stays in.
                own = core[: len(core) - header]
                core = own.rstrip()
                eot = _end_of_turn_text(core)
            end_out = start + len(core)
            trailing = (own if header else generated)[len(core):]
            trailing = trailing[: len(trailing) - len(trailing.lstrip())]
            end_in = end_out + common_prefix_length(trailing, full[end_out:])
            eot_seen = eot if eot and core.endswith(eot) else _end_of_turn_text(core)
            eot_range = (end_out - len(eot_seen), end_out) if eot_seen else None
            blank = not generated.strip()
            open_end = bool(core) and not _TRAILING_MARKUP.search(core)
            return _Turn(
                "exact", start, end_out, end_in, eot_seen, eot_range, "prefix", blank=blank, open_end=open_end
            )
        kind: TurnKind = "rewritten"
        note = "history renders this turn differently from what the model generated"
    else:
        eot = _end_of_turn_from_generated(final[common_prefix_length(final, prompt):], message)
        kind = "mismatch"
        note = "the generation prompt disagrees with the template's own render of this turn"

    generation_prompt = prompt[markup_boundary(prompt, common_prefix_length(prompt, before)):]
    start, end_out, end_in, eot_range, located_by = _place_by_shape(
        renderer, index, full, located, regions, generation_prompt, eot
    )
    eot_seen = full[eot_range[0]:eot_range[1]] if eot_range else eot
    return _Turn(kind, start, end_out, end_in, eot_seen, eot_range, located_by, note)


_MARKUP_RUN = re.compile(r"(?:\s*" + _MARKUP + r")+\s*")


def _next_header_length(renderer: _Renderer, index: int, core: str, prompt: str) -> int:
    """Length of the header ``core`` ends with, or 0: the markup the turn's own loop iteration
    starts with, which ``P`` ends with, written again after the turn for the next one.

    Only whole markup tokens count, and text must remain before them; the iteration's start in
    ``F`` comes from the trace (only traced when ``core`` and ``P`` end with the same markup).
    """
    shared = core[len(core) - common_suffix_length(core, prompt):]
    if not any(c in "<[" and _MARKUP_RUN.fullmatch(shared, i) for i, c in enumerate(shared)):
        return 0
    final = renderer(index + 1, False)
    regions = _trace_regions(renderer.template, _Prefix(renderer, index + 1), renderer.special_tokens, final)
    region = regions[index]
    if region is None or region[0] >= len(prompt):
        return 0
    header = prompt[region[0]:]
    if header.strip() and _MARKUP_RUN.fullmatch(header) and core.endswith(header.rstrip()):
        rest = core[: len(core) - len(header.rstrip())]
        return len(header.rstrip()) if rest.strip() else 0
    return 0


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


def _own_output(
    renderer: _Renderer, index: int, prompt: str, generated: str, full: str
) -> str:
    """The part of ``G`` the message's own loop iteration wrote.

    Text a template appends after the whole conversation (Phi-3's ``eos_token`` when there is no
    generation prompt) belongs to the last message of ``F`` only; in ``R`` the next message follows
    instead, and that alone does not make the turn rewritten. With a trace the iteration's end in
    ``F`` is known; without one, ``G`` is cut where ``R`` departs from it if what is left of ``G``
    is the text every conversation without a generation prompt ends with.
    """
    final = prompt + generated
    regions = _trace_regions(renderer.template, _Prefix(renderer, index + 1), renderer.special_tokens, final)
    region = regions[index] if regions else None
    if region is not None and region[1] >= len(prompt):
        return final[len(prompt):region[1]]
    departure = markup_boundary(generated, common_prefix_length(generated, full[len(prompt):]))
    tail = generated[departure:]
    before = renderer(index, False)
    if tail.strip() and before.endswith(tail) and not prompt.endswith(tail):
        return generated[:departure]
    return generated


@dataclass
class _Prefix:
    """The first ``count`` messages of a probe, as a probe."""

    renderer: _Renderer
    count: int

    @property
    def name(self) -> str:
        return f"prefix{self.count}"

    @property
    def messages(self) -> list[Mapping[str, Any]]:
        return self.renderer.messages[: self.count]

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.renderer.kwargs


def _end_of_turn_from_generated(generated: str, message: Mapping[str, Any]) -> str:
    """The end-of-turn text of a generated turn: what follows its last probe text."""
    core = generated.rstrip()
    spans = locate_texts(core, [message])[0]
    tail = core[max(end for _, end in spans):] if spans else core
    return _end_of_turn_text(tail)


def _place_by_shape(
    renderer: _Renderer,
    index: int,
    full: str,
    located: list[list[Span]],
    regions: list[Span | None] | None,
    generation_prompt: str,
    eot: str,
) -> tuple[int, int, int, Span | None, str]:
    """Rule 3's shape in ``R``: from the end of the header through the end-of-turn text.

    Returns ``(start, end_out, end_in, end-of-turn range, how the end was located)``.
    """
    texts = located[index]
    previous_end = max((end for spans in located[:index] for _, end in spans), default=0)
    following = [spans[0][0] for spans in located[index + 1:] if spans]
    next_text = following[0] if following else len(full)

    region = regions[index] if regions else None
    if region is not None and not (previous_end <= region[0] and region[1] <= next_text):
        # the iteration also wrote other messages' text (Gemma 4 renders tool results inside the
        # assistant turn): rule 3 forbids that, so locate the turn by its texts instead
        region = None
    if region is not None:
        region_start, region_end = region
        shared = common_prefix_length(generation_prompt, full[region_start:region_end])
        if not markup_boundary(generation_prompt, shared):
            # The iteration writes something before the header (a template's indentation and
            # newlines, the previous turn's end-of-turn token): the header is where the generation
            # prompt's text is, before the first text.
            first_text = min([start for start, _ in texts if start >= region_start] + [region_end])
            region_start = _header_position(full, generation_prompt, region_start, first_text)
    else:
        first_text = texts[0][0] if texts else next_text
        region_start = _header_position(full, generation_prompt, previous_end, first_text)
        region_end = -1

    # A header never ends inside a markup token: "<|im_start|>assistant\n<think>" and a turn
    # that starts "<tool_call>" share "<", which is the model's output, not the header.
    header = markup_boundary(generation_prompt, common_prefix_length(generation_prompt, full[region_start:]))
    if not header and generation_prompt.strip():
        # This turn's generation prompt is not its header (Gemma 4 prompts "<|channel>thought\n"
        # after a tool result; the turn then opens with "<|turn>model\n"): another assistant
        # turn's generation prompt may be.
        lower = region_start
        upper = min([text_start for text_start, _ in texts if text_start >= lower] + [next_text])
        for other in _other_generation_prompts(renderer, index, generation_prompt):
            position = _header_position(full, other, lower, upper)
            length = markup_boundary(other, common_prefix_length(other, full[position:]))
            if length and full.startswith(other[:length], position) and not full[lower:position].strip():
                region_start, header = position, length
                break
    start = region_start + header
    # Nor inside the message's own words: a prompt ending "...user" and an answer "uniform..."
    # share a "u" by chance.
    own_starts = [text_start for text_start, _ in texts if text_start >= region_start]
    if own_starts:
        start = min(start, min(own_starts))

    last_text_end = max((end for _, end in texts if end <= next_text), default=start)
    located_by = "trace"
    eot_range: Span | None = None
    if region is None:
        region_end, located_by = _turn_end(renderer, index, full, located, last_text_end, next_text, eot)
    elif eot and full.startswith(eot, region_end) and region_end + len(eot) <= next_text:
        # the end-of-turn text is written when the next message starts (AI21 Jamba's <|eom|>):
        # it is still this turn's (SPEC §3)
        region_end += len(eot)
    end_out = max(_rstrip_end(full, start, region_end), start)
    end_in = max(region_end, end_out)
    if eot and full[:end_out].endswith(eot) and end_out - len(eot) >= last_text_end:
        eot_range = (end_out - len(eot), end_out)
    else:
        markup = _TRAILING_MARKUP.search(full, last_text_end, end_out)
        if markup:
            eot_range = (markup.start(), markup.end())
    return start, end_out, end_in, eot_range, located_by


def _other_generation_prompts(renderer: _Renderer, index: int, own: str) -> list[str]:
    """The generation prompts of the conversation's other assistant turns, distinct from ``own``."""
    found: list[str] = []
    for other, message in enumerate(renderer.messages):
        if other == index or message.get("role") != "assistant":
            continue
        try:
            prompt, before = renderer(other, True), renderer(other, False)
        except RenderError:
            continue
        generation_prompt = prompt[markup_boundary(prompt, common_prefix_length(prompt, before)):]
        if generation_prompt.strip() and generation_prompt != own and generation_prompt not in found:
            found.append(generation_prompt)
    return found


def _header_position(full: str, generation_prompt: str, lower: int, upper: int) -> int:
    """Where the turn's header starts: the last place in ``full[lower:upper]`` holding the longest
    prefix of the generation prompt. Without any match the turn starts right at ``lower``."""
    for length in range(len(generation_prompt), 0, -1):
        position = full.rfind(generation_prompt[:length], lower, upper)
        if position >= 0:
            return position
    return lower


def _turn_end(
    renderer: _Renderer,
    index: int,
    full: str,
    located: list[list[Span]],
    last_text_end: int,
    next_text: int,
    eot: str,
) -> tuple[int, str]:
    """Where turn ``index`` ends in ``R`` without a trace: its end-of-turn text, else the header of
    the next message (as rendered in a prefix), else the end of the render."""
    if eot:
        position = full.find(eot, last_text_end, next_text)
        if position >= 0:
            end = position + len(eot)
            whitespace = len(full[end:next_text]) - len(full[end:next_text].lstrip())
            return end + whitespace, "end-of-turn"
    following = [j for j in range(index + 1, len(located)) if located[j]]
    if not following:
        return len(full), "end-of-render"
    j = following[0]
    header = _message_header(renderer, j)
    overlap = common_suffix_length(header, full[last_text_end:next_text])
    return next_text - overlap, "next-message"


def _message_header(renderer: _Renderer, index: int) -> str:
    """The text a template writes before message ``index``'s first probe text.

    Taken from a pair of prefix renders ``render(M[:k])``, ``render(M[:k+1])`` where the longer
    extends the shorter, for ``k = index`` first and then any other message of the same role
    (history rewriting can break the prefix property for ``index`` itself, as in gpt-oss).
    """
    role = renderer.messages[index].get("role")
    candidates = [index] + [
        k for k, message in enumerate(renderer.messages) if k != index and message.get("role") == role
    ]
    for k in candidates:
        try:
            shorter, longer = renderer(k, False), renderer(k + 1, False)
        except Exception:  # a prefix the original refuses: try another message of the role
            continue
        if not longer.startswith(shorter):
            continue
        added = longer[len(shorter):]
        first = locate_texts(added, [renderer.messages[k]])[0]
        if first:
            return added[: first[0][0]]
    return ""
