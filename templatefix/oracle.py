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

Where a turn's text ends in ``R`` comes from ``templatefix.analysis.regions.message_regions`` (the loop
iteration that rendered the message); for a message no loop iteration rendered alone, from the
probe's unique texts: the end-of-turn text seen in ``F``, or else the start of the next message
(its first text minus its header as rendered in a prefix).

Policies (SPEC §6) shape the expected span:

* ``turns="last"``: only the assistant messages after the last user message are trained;
  ``turns="last_message"``: only the final assistant message (``Policy.trained_fields``).
* ``tool_calls="not_trained"``: the calls are cut out of the turn's span, from the end of the
  text before them (and no earlier than where the render departs from the render without the
  calls) to the text after them or the end of the turn; the text beside them stays in. A turn's
  span can so be several pieces (``TurnExpectation.pieces``).
* ``reasoning="final_channel_only"``: a message with tool calls is not trained at all; others
  as ``not_trained``.
* A turn whose own loop iteration writes text after other messages' text (Gemma 4 writes the
  answer after the tool results that answer its calls) gets a second piece, from that text
  through the end of the iteration; the other messages' text between stays outside.
* ``reasoning="not_trained"`` (and ``"final_channel_only"``): the span starts after the reasoning,
  namely after the reasoning text, optional whitespace and ONE closing markup token that follows
  it (``</think>``, ``<|end|>``, ``[/THINK]``…). So Qwen3 trains ``\\n\\nanswer<|im_end|>`` and
  gpt-oss trains ``<|start|>assistant<|channel|>final<|message|>answer<|return|>``. If the
  reasoning text is not rendered in the turn, nothing changes.

The records live in ``templatefix.analysis.expectations``, the probe texts and string helpers in
``templatefix.analysis.texts`` and placement by shape in ``templatefix.analysis.shape``; their
public names stay importable from here.

Example:
    >>> from templatefix.conversation import Probe
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from templatefix.analysis.expectations import ProbeExpectation, ProbeLike, TurnExpectation, TurnKind
from templatefix.analysis.instrument import Instrumented
from templatefix.analysis.records import Trace
from templatefix.analysis.regions import instrumented_for, regions_of
from templatefix.analysis.shape import generation_prompt_of, place_by_shape
from templatefix.analysis.texts import (
    LEADING_MARKUP,
    MARKUP_RUN,
    TRAILING_MARKUP,
    common_prefix_length,
    common_suffix_length,
    end_of_turn_from_generated,
    end_of_turn_text,
    field_texts,
    locate_texts,
    markup_boundary,
    message_texts,
    reasoning_text,
    rstrip_end,
)
from templatefix.errors import InternalDisagreement, RenderError, RenderLimitExceeded
from templatefix.policy import FIELDS, Policy
from templatefix.render import Span, render_with_spans
from templatefix.template import ChatTemplate

__all__ = [
    "ProbeExpectation",
    "ProbeLike",
    "TurnExpectation",
    "TurnKind",
    "common_prefix_length",
    "common_suffix_length",
    "expected_turns",
    "locate_texts",
    "markup_boundary",
    "message_texts",
    "reasoning_text",
    "remembering",
]


# --------------------------------------------------------------------------- the oracle


class _Renderer:
    """Memoised renders of prefixes of one probe conversation with the original template."""

    def __init__(
        self, template: ChatTemplate, probe: ProbeLike, special_tokens: Mapping[str, Any] | None
    ) -> None:
        self.parsed = template
        self.template = template.text
        self.messages = list(probe.messages)
        self.kwargs = dict(probe.kwargs)
        self.special_tokens = special_tokens
        self.renders: dict[tuple[int, bool], str] = {}

    def __call__(self, count: int, add_generation_prompt: bool) -> str:
        key = (count, add_generation_prompt)
        if key not in self.renders:
            self.renders[key] = remembered_render(
                self.template, self.messages[:count], self.kwargs, add_generation_prompt, self.special_tokens
            )
        return self.renders[key]


def remembered_render(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    kwargs: Mapping[str, Any],
    add_generation_prompt: bool,
    special_tokens: Mapping[str, Any] | None,
) -> str:
    """``render(template, messages, ...)``, remembered like :func:`remembered` (a failure too)."""
    return remembered_render_with_spans(template, messages, kwargs, add_generation_prompt, special_tokens)[0]


def remembered_render_with_spans(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    kwargs: Mapping[str, Any],
    add_generation_prompt: bool,
    special_tokens: Mapping[str, Any] | None,
) -> tuple[str, list[Span]]:
    """``render_with_spans(template, messages, ...)``, remembered like :func:`remembered` (a failure
    too): the verifier renders the patched template on the prefixes that several probes share,
    and on the prompts the patcher looked at."""
    text, spans = remembered(
        ("spans", template, list(messages), dict(kwargs), add_generation_prompt, special_tokens),
        lambda: _frozen_spans(
            render_with_spans(
                template, list(messages), add_generation_prompt=add_generation_prompt,
                special_tokens=special_tokens, **dict(kwargs),
            )
        ),
    )
    return text, list(spans)


def _frozen_spans(rendered: tuple[str, list[Span]]) -> tuple[str, tuple[Span, ...]]:
    return rendered[0], tuple(rendered[1])


def remembered(key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    """``compute()``, remembered inside :func:`remembering` under ``key`` (plain data), failures
    too: the prefixes of one probe are the samples of another, the oracle renders each prefix
    for every sample that holds it, and the patcher traces the samples the oracle traced.

    ``key`` is ``(kind, template text, ...)``; the text is kept as it is, the rest as JSON.
    """
    cache = _SHARED.get()
    if cache is None:
        return compute()
    try:
        text_key = (key[0], key[1], json.dumps(key[2:], sort_keys=True))
    except (TypeError, ValueError):  # arguments that are not plain data: not remembered
        return compute()
    if text_key not in cache:
        try:
            cache[text_key] = (True, compute())
        except RenderLimitExceeded:
            raise
        except RenderError as error:
            cache[text_key] = (False, error)
    ok, value = cache[text_key]
    if not ok:
        raise value
    return value


def _trace_regions(
    template: ChatTemplate, probe: ProbeLike, special_tokens: Mapping[str, Any] | None, full_text: str
) -> list[Span | None]:
    """Per-message regions of ``R`` (``full_text``) from the instrumented trace.

    Raises:
        RenderLimitExceeded: the trace went past a render bound.
        InternalDisagreement: the trace fails on, or renders differently, a conversation that the
            plain render produced ``full_text`` for (a bug in the instrumentation, never a reason
            to answer by another method).
    """
    try:
        instrumented = instrumented_for(template)
        traced = remembered_trace(instrumented, probe.messages, probe.kwargs, False, special_tokens)
        text, regions = traced.text, regions_of(instrumented, traced)
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
    return list(regions)


def expected_turns(
    template: ChatTemplate | str,
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
    template = ChatTemplate.of(template)
    cache = _REMEMBERED.get()
    if cache is None:
        return _expected_turns(template, probe, policy, special_tokens)
    try:
        parts = [probe.name, list(probe.messages), dict(probe.kwargs), policy.to_dict(), special_tokens]
        key = (template.text, json.dumps(parts, sort_keys=True))
    except (TypeError, ValueError):  # arguments that are not plain data: not remembered
        return _expected_turns(template, probe, policy, special_tokens)
    if key not in cache:
        cache[key] = _expected_turns(template, probe, policy, special_tokens)
    return cache[key]


_REMEMBERED: ContextVar[dict[tuple[str, str], ProbeExpectation] | None] = ContextVar(
    "expectations", default=None
)


def remembered_trace(
    instrumented: Instrumented,
    messages: Sequence[Mapping[str, Any]],
    kwargs: Mapping[str, Any],
    add_generation_prompt: bool,
    special_tokens: Mapping[str, Any] | None,
) -> Trace:
    """``instrumented.trace(...)``, remembered like :func:`remembered` (treat it as read-only)."""
    text = instrumented.source.text
    key = ("trace", text, list(messages), dict(kwargs), add_generation_prompt, special_tokens)
    return remembered(
        key,
        lambda: instrumented.trace(
            list(messages), add_generation_prompt=add_generation_prompt,
            special_tokens=special_tokens, **dict(kwargs),
        ),
    )


_SHARED: ContextVar[dict[tuple[str, str, str], Any] | None] = ContextVar("oracle_renders", default=None)


@contextmanager
def remembering() -> Iterator[None]:
    """Remember :func:`expected_turns` answers until the block ends (one patch and its check)."""
    token = _REMEMBERED.set({})
    shared = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(shared)
        _REMEMBERED.reset(token)


def _expected_turns(
    template: ChatTemplate, probe: ProbeLike, policy: Policy, special_tokens: Mapping[str, Any] | None
) -> ProbeExpectation:
    renderer = _Renderer(template, probe, special_tokens)
    messages = renderer.messages
    full = renderer(len(messages), False)
    located = locate_texts(full, messages)
    regions = _trace_regions(template, probe, special_tokens, full)
    assistant_indices = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]

    expectation = ProbeExpectation(probe_name=probe.name, text=full)
    for index in assistant_indices:
        turn = _expect_turn(renderer, index, full, located, regions)
        fields = policy.trained_fields(messages, index)
        trained = bool(fields)
        start = turn.start
        if trained and "reasoning" not in fields:
            start = _answer_start(full, messages[index], turn.start, turn.end_out)
        end = turn.end_in if policy.trailing_whitespace == "in" else turn.end_out
        eot, eot_range, open_end = turn.end_of_turn, turn.end_of_turn_range, turn.open_end
        pieces: tuple[Span, ...] = ()
        if trained:
            later = _later_piece(full, messages, index, end, located, regions, policy)
            pieces = _without_calls(full, renderer, index, [(start, end), *later], fields)
            if later:
                eot_range = _trailing_markup(full, later[0][0], later[0][1])
                eot = full[eot_range[0]:eot_range[1]] if eot_range else ""
                open_end = eot_range is None
            if eot_range is not None and not any(a <= eot_range[0] and eot_range[1] <= b for a, b in pieces):
                eot, eot_range = "", None  # the end-of-turn text after an untrained call is not owed
        expectation.turns.append(
            TurnExpectation(
                message_index=index, kind=turn.kind, trained=trained, start=start,
                end_out=turn.end_out, end_in=turn.end_in, end=end,
                end_of_turn=eot, end_of_turn_range=eot_range,
                located_by=turn.located_by, note=turn.note, blank=turn.blank, open_end=open_end,
                pieces=pieces,
            )
        )
    expectation.renders = dict(renderer.renders)
    return expectation


def _trailing_markup(text: str, start: int, end: int) -> Span | None:
    match = TRAILING_MARKUP.search(text, start, rstrip_end(text, start, end))
    return (match.start(), match.end()) if match else None


def _later_piece(
    full: str,
    messages: Sequence[Mapping[str, Any]],
    index: int,
    end: int,
    located: list[list[Span]],
    regions: list[Span | None] | None,
    policy: Policy,
) -> list[Span]:
    """Text the turn's own loop iteration writes after other messages' text (SPEC §7).

    Gemma 4 writes an assistant's answer after the tool results that answer its calls, in the
    same iteration: ``…<tool_response|>text<turn|>``. That text and its end-of-turn text are the
    turn's, from the first own text after the last other message's text through the end of the
    iteration; what lies between is the other messages'.
    """
    region = regions[index] if regions else None
    if region is None or region[1] <= end:
        return []
    foreign = [
        span_end for other, spans in enumerate(located) if other != index
        for span_start, span_end in spans if end <= span_start and span_end <= region[1]
    ]
    if not foreign:
        return []
    after = max(foreign)
    own = [span_start for span_start, span_end in _own_texts(full, messages[index], after, region[1])]
    if not own:
        return []
    later_start = min(own)
    while later_start > after and full[later_start - 1].isspace():
        later_start -= 1  # the message's own leading whitespace (texts are found stripped)
    end_out = rstrip_end(full, later_start, region[1])
    return [(later_start, region[1] if policy.trailing_whitespace == "in" else end_out)]


def _own_texts(
    full: str, message: Mapping[str, Any], start: int, end: int, kinds: Sequence[str] = FIELDS
) -> list[Span]:
    """Where the message's own texts of the given kinds stand in ``full[start:end]`` (first place)."""
    found: list[Span] = []
    for text in field_texts(message, kinds):
        position = full.find(text, start, end)
        if position >= 0:
            found.append((position, position + len(text)))
    return sorted(found)


def _without_calls(
    full: str, renderer: _Renderer, index: int, pieces: list[Span], fields: frozenset[str]
) -> tuple[Span, ...]:
    """The pieces with the tool calls cut out when the policy does not train them (SPEC §6).

    In each piece the calls start after the trained text before the first call's name or
    argument (reasoning with its closing markup, content; the whitespace after it stays with
    it), and no earlier than where the render departs from the render of the same conversation
    without this message's calls (an empty ``<think></think>`` a template writes before every
    answer stays in). They end at the start of the trained text after the last call, or at the
    piece's end: the markup that opens the calls and the end-of-turn text after them are outside.
    """
    if "tool_calls" in fields:
        return tuple(pieces)
    message = renderer.messages[index]
    kept: list[Span] = []
    for start, end in pieces:
        calls = _own_texts(full, message, start, end, ("tool_calls",))
        if not calls or end <= start:
            kept.append((start, end))
            continue
        first, last = calls[0][0], max(span_end for _, span_end in calls)
        trained = _own_texts(full, message, start, end, tuple(f for f in FIELDS if f in fields))
        before = [span_end for span_start, span_end in trained if span_end <= first]
        left = start
        if before:
            left = max(before)
            closing = LEADING_MARKUP.match(full, left, first)
            reasoning = reasoning_text(message)
            if closing and reasoning and full.startswith(reasoning, left - len(reasoning)):
                left = closing.end()  # the reasoning's closing markup (</think>) is the reasoning's
            while left < first and full[left].isspace():
                left += 1
        without = _render_without_calls(renderer, index)
        if without is not None and without.startswith(full[:start]):
            shared = start + common_prefix_length(full[start:first], without[start:])
            left = max(left, markup_boundary(full, _word_boundary(full, start, shared)))
        after = [span_start for span_start, _ in trained if span_start >= last]
        right = min(after) if after else end
        kept.extend(piece for piece in ((start, left), (right, end)) if piece[1] > piece[0])
    return tuple(kept)


def _word_boundary(text: str, start: int, offset: int) -> int:
    """``offset`` moved back out of a word it would cut (``alp`` of ``alpha101``)."""
    while start < offset < len(text) and text[offset - 1].isalnum() and text[offset].isalnum():
        offset -= 1
    return offset


def _render_without_calls(renderer: _Renderer, index: int) -> str | None:
    """The full render with message ``index``'s tool calls left out (``None`` if rejected)."""
    messages = [dict(m) for m in renderer.messages]
    messages[index].pop("tool_calls", None)
    try:
        return remembered_render(renderer.template, messages, renderer.kwargs, False, renderer.special_tokens)
    except RenderLimitExceeded:
        raise
    except RenderError:
        return None


def _answer_start(text: str, message: Mapping[str, Any], start: int, end: int) -> int:
    """Where the answer part of a turn begins: after the reasoning text and its closing markup."""
    reasoning = reasoning_text(message)
    if not reasoning:
        return start
    position = text.find(reasoning, start, end)
    if position < 0:
        return start
    after = position + len(reasoning)
    closing = LEADING_MARKUP.match(text, after, end)
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
        eot = end_of_turn_from_generated(generated, message)
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
                eot = end_of_turn_text(core)
            end_out = start + len(core)
            trailing = (own if header else generated)[len(core):]
            trailing = trailing[: len(trailing) - len(trailing.lstrip())]
            end_in = end_out + common_prefix_length(trailing, full[end_out:])
            eot_seen = eot if eot and core.endswith(eot) else end_of_turn_text(core)
            eot_range = (end_out - len(eot_seen), end_out) if eot_seen else None
            blank = not generated.strip()
            open_end = bool(core) and not TRAILING_MARKUP.search(core)
            return _Turn(
                "exact", start, end_out, end_in, eot_seen, eot_range, "prefix", blank=blank, open_end=open_end
            )
        kind: TurnKind = "rewritten"
        note = "history renders this turn differently from what the model generated"
    else:
        eot = end_of_turn_from_generated(final[common_prefix_length(final, prompt):], message)
        kind = "mismatch"
        note = "the generation prompt disagrees with the template's own render of this turn"

    generation_prompt = generation_prompt_of(prompt, before)
    start, end_out, end_in, eot_range, located_by = place_by_shape(
        renderer, index, full, located, regions, generation_prompt, eot
    )
    eot_seen = full[eot_range[0]:eot_range[1]] if eot_range else eot
    # A turn placed by its shape that ends with the message's own words, no end-of-turn token,
    # may end before or after the whitespace that follows them, as a prefix-preserving one.
    core = full[start:end_out]
    open_end = bool(core.strip()) and not eot_range and not TRAILING_MARKUP.search(core)
    return _Turn(kind, start, end_out, end_in, eot_seen, eot_range, located_by, note, open_end=open_end)


def _next_header_length(renderer: _Renderer, index: int, core: str, prompt: str) -> int:
    """Length of the header ``core`` ends with, or 0: the markup the turn's own loop iteration
    starts with, which ``P`` ends with, written again after the turn for the next one.

    Only whole markup tokens count, and text must remain before them; the iteration's start in
    ``F`` comes from the trace (only traced when ``core`` and ``P`` end with the same markup).
    """
    shared = core[len(core) - common_suffix_length(core, prompt):]
    if not any(c in "<[" and MARKUP_RUN.fullmatch(shared, i) for i, c in enumerate(shared)):
        return 0
    final = renderer(index + 1, False)
    regions = _trace_regions(renderer.parsed, _Prefix(renderer, index + 1), renderer.special_tokens, final)
    region = regions[index]
    if region is None or region[0] >= len(prompt):
        return 0
    header = prompt[region[0]:]
    if header.strip() and MARKUP_RUN.fullmatch(header) and core.endswith(header.rstrip()):
        rest = core[: len(core) - len(header.rstrip())]
        return len(header.rstrip()) if rest.strip() else 0
    return 0


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
    regions = _trace_regions(renderer.parsed, _Prefix(renderer, index + 1), renderer.special_tokens, final)
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
