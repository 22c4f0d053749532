"""Judge a patched template against its original on one conversation, from SPEC rules 1-3 alone.

Notation: ``O(k, g)`` is the ORIGINAL template's render of the first ``k`` messages with
``add_generation_prompt=g``; ``Q(k, g)`` is the PATCHED template's render with its spans (the
union of its ``{% generation %}`` ranges). Nothing else is consulted: no trace, no oracle.

Rule 1 (render unchanged). For every ``k`` in ``0..n`` and both ``g``: if ``O(k, g)`` renders,
``Q(k, g)`` renders the same text; if ``O(k, g)`` raises, ``Q(k, g)`` raises an exception of the
same type (rule ``error``). A conversation whose full render ``O(n, False)`` raises is skipped
for spans (the original rejects it), but its errors are still judged.

Turns. For an assistant message ``j``: ``P = O(j, True)``, ``F = O(j+1, False)``. If ``F`` does
not start with ``P`` the turn is a *mismatch* and is not judged. Else ``G = F[len(P):]``; a
whitespace-only ``G`` owes nothing (*empty*), and so does a ``G`` that is whitespace once a
next header (below) is cut off: a tool call the template does not render, then the header.
When ``G`` ends with text written only because an
assistant could come next (the original's render of ``M[:j+1]`` followed by a user message
departs from ``G`` before ``G`` ends), a *core* is ``G`` cut at or before that departure such
that the cut-off text also ends ``P`` or ``O(j, False)``: the next assistant header, "the same
markup that ends P". Renders cannot tell a header from end-of-turn text written the same way
before every message (Cohere's ``<|END_OF_TURN_TOKEN|>`` closes user and assistant turns alike,
and its header follows), so every such cut is a core: the judge's one leniency beyond SPEC.

Judged renders. Every render ``X = Q(k, g)`` whose text equals ``O(k, g)`` is judged, for all
``k`` and ``g``: ``X = Q(j+1, False)`` gives rule 2 for turn ``j``, ``X = Q(n, False)`` rule 3,
``X = Q(k, True)`` the prompts. In ``X``, turn ``j < k`` is *prefix-preserving* when ``X``
starts with ``P + G`` or ``P + core``; its window runs from ``len(P)`` over the longest of these
``X`` holds, and the spans inside it must be exactly one range starting at ``len(P)`` and
ending at the end of ``G``, of a core, or of either without its trailing whitespace. These
allowances (trailing whitespace in or out; stopping before the next header) are the only
slack. An owed turn that is not prefix-preserving in ``X`` (history rewritten, e.g. Qwen3
dropping old reasoning) has no window there and is counted, not judged.

No span outside an assistant's output. In ``X`` no span may touch:
- the text of a non-assistant message ``m``: ``[len(O(m)), len(O(m+1)))`` whenever ``X`` starts
  with both renders (``O(0)`` counts as empty, so text before the first message is included);
- the generation prompt of a turn ``j`` when ``X`` starts with ``P``: ``[len(O(j, False)),
  len(P))``, when ``P`` extends ``O(j, False)`` (a prompt render that rewrites history, as
  gpt-oss's does for a conversation ending with an assistant, leaves it unknown);
- in ``X = Q(k, True)``, the generation prompt at its end, when ``X`` extends ``O(k, False)``;
- any occurrence in ``X`` of a system, user or tool text (each carries a tag unique to its
  message, so an occurrence is that message's text wherever the template moved it).
Windows of judged and empty turns are taken out of these regions (the window rule decides
there). Why not compare the spans before ``len(P)`` with ``Q(j, True)``'s? Both are renders of
the same prompt text, but that would only prove the patch consistent with itself; checking each
region against the original's prefix renders proves it right.

Span failures are marked ``training`` when the render is one users train on (``agp=False``, last
message an assistant's), rule 1 failures when the conversation is not empty; the others (a lone
user message, prompt renders, an empty conversation) are reported apart.

Not covered: the output region of a rewritten or mismatching turn is free (only the forbidden
regions above bind there), and a header of such a turn is protected only when ``X`` starts with
its ``P``; message regions are known only where prefix renders nest, elsewhere only the tagged
texts are protected. Policies other than the default (all turns, reasoning and tool calls
trained) are not judged here (``independent.words`` judges every policy by words), nor tokens
(SPEC §5), nor shapes the generator does not draw (documents, images, consecutive assistant
messages, names on user messages, flags other than ``enable_thinking``/``reasoning_effort``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from independent.conversations import Conversation
from independent.render import Rendered, render_spans, render_text

Range = tuple[int, int]

#: Longest trailing next-assistant header considered.
HEADER_MAX = 200


@dataclass(frozen=True)
class Failure:
    """One wrong thing in one render: the rule, the render, the turn and the first wrong edge."""

    # "render" (rule 1), "error" (rule 1 where the original raises), "span" (a window's range),
    # "outside" (a span on forbidden text)
    rule: str
    render: str  # e.g. "M[:4] agp=False"
    training: bool  # spans: a render users train on (agp=False, last message an assistant's);
    # rule 1: any render of a non-empty conversation (prompts matter at inference)
    turn: int | None  # message index of the assistant turn, when one is concerned
    detail: str  # expected vs actual and the text around the first wrong edge
    edge: int = -1  # offset in that render of the first wrong edge
    expected: Range | None = None  # for "span": the expected range (trailing whitespace out)
    actual: tuple[Range, ...] = ()  # for "span": the spans found in the window; "outside": the span

    def __str__(self) -> str:
        turn = f" turn {self.turn}" if self.turn is not None else ""
        kind = ""
        if not self.training:
            kind = " (empty conversation)" if self.rule == "render" else " (prompt render)"
        return f"[{self.rule}] {self.render}{turn}{kind}: {self.detail}"


@dataclass
class Verdict:
    """The judge's result for one conversation."""

    skipped: bool = False  # the original template rejects the conversation
    failures: list[Failure] = field(default_factory=list)
    owed: int = 0  # turns judged by rule 2 (F starts with P, G not whitespace)
    empty: int = 0  # whitespace-only G: nothing owed
    mismatch: int = 0  # F does not start with P (or a prefix does not render)
    history_judged: int = 0  # earlier owed turns judged again in the full render (rule 3)
    history_rewritten: int = 0  # earlier owed turns not prefix-preserving in the full render

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def training_failures(self) -> list[Failure]:
        """Failures in renders users train on, and rule 1 failures on any non-empty conversation."""
        return [f for f in self.failures if f.training]


@dataclass(frozen=True)
class Turn:
    """What the original's prefix renders say about assistant message ``index``."""

    index: int
    prompt: str  # P
    header_start: int | None  # len(O(index, False)) when P extends it: where the generation prompt starts
    kind: str  # "owed", "empty", "mismatch"
    output: str = ""  # G
    cores: tuple[str, ...] = ()  # G without a trailing next-assistant header (every way to cut it)


def _common_prefix(a: str, b: str) -> int:
    limit = min(len(a), len(b))
    i = 0
    while i < limit and a[i] == b[i]:
        i += 1
    return i


def _context(text: str, at: int, width: int = 25) -> str:
    return f"{text[max(0, at - width):at]!r} | {text[at:at + width]!r}"


class Judge:
    """Renders both templates on one conversation (each render once) and judges every render."""

    def __init__(self, original: str, patched: str, conversation: Conversation) -> None:
        self.original = original
        self.patched = patched
        self.messages = conversation.messages
        self.kwargs = conversation.kwargs
        self._orig: dict[tuple[int, bool], str | None] = {}
        self._orig_error: dict[tuple[int, bool], Exception] = {}
        self._patched: dict[tuple[int, bool], Rendered | Exception] = {}

    def orig(self, k: int, prompt: bool) -> str | None:
        """``O(k, prompt)``, or None when the original raises."""
        key = (k, prompt)
        if key not in self._orig:
            try:
                self._orig[key] = render_text(self.original, self.messages[:k], prompt, self.kwargs)
            except Exception as error:  # templates are arbitrary code: any failure is a rejection
                self._orig[key] = None
                self._orig_error[key] = error
        return self._orig[key]

    def patched_render(self, k: int, prompt: bool) -> Rendered | Exception:
        key = (k, prompt)
        if key not in self._patched:
            try:
                self._patched[key] = render_spans(self.patched, self.messages[:k], prompt, self.kwargs)
            except Exception as error:
                self._patched[key] = error
        return self._patched[key]

    def _where(self, k: int, prompt: bool) -> tuple[str, bool]:
        """The render's name and whether users train on it (no prompt, last message an assistant's)."""
        training = not prompt and k > 0 and self.messages[k - 1].get("role") == "assistant"
        return f"M[:{k}] agp={prompt}", training

    # -- turns -----------------------------------------------------------------------------

    def turn(self, j: int) -> Turn:
        prompt, before, full = self.orig(j, True), self.orig(j, False), self.orig(j + 1, False)
        if prompt is None or full is None or not full.startswith(prompt):
            return Turn(j, prompt or "", None, "mismatch")
        # The header is what the prompt appends to the render without it; when that render is not a
        # prefix (the prompt render rewrites history), the header is not known.
        header_start = len(before) if before is not None and prompt.startswith(before) else None
        output = full[len(prompt):]
        if not output.strip():
            return Turn(j, prompt, header_start, "empty", output)
        cores = self._cores(j, prompt, header_start, output)
        if any(not core.strip() for core in cores):  # only whitespace before the next header
            return Turn(j, prompt, header_start, "empty", output)
        return Turn(j, prompt, header_start, "owed", output, cores)

    def _cores(self, j: int, prompt: str, header_start: int | None, output: str) -> tuple[str, ...]:
        """Every way to cut a next-assistant header off the end of ``output`` (see the module docstring)."""
        followed = self.messages[: j + 1] + [{"role": "user", "content": "next z9q"}]
        try:
            by_user = render_text(self.original, followed, False, self.kwargs)
        except Exception:
            return ()
        if not by_user.startswith(prompt):
            return ()
        shared = _common_prefix(output, by_user[len(prompt):])
        if shared >= len(output):
            return ()  # nothing in G is specific to an assistant coming next: no header was written
        ends = (prompt, prompt[:header_start]) if header_start is not None else (prompt,)
        return tuple(
            output[:cut]
            for cut in range(max(0, len(output) - HEADER_MAX), shared + 1)
            if output[cut:].strip() and any(e.endswith(output[cut:]) for e in ends)
        )

    # -- one render ------------------------------------------------------------------------

    def judge_render(self, k: int, prompt: bool, turns: dict[int, Turn], verdict: Verdict) -> None:
        """Judge ``Q(k, prompt)`` (already known to equal ``O(k, prompt)``)."""
        rendered = self.patched_render(k, prompt)
        assert isinstance(rendered, Rendered)
        text, spans = rendered.text, rendered.spans
        where = self._where(k, prompt)
        windows: list[tuple[Turn, Range, set[int]]] = []
        free: list[Range] = []
        for j in (j for j in turns if j < k):
            turn = turns[j]
            if turn.kind == "mismatch" or not text.startswith(turn.prompt):
                continue
            base = len(turn.prompt)
            if turn.kind == "empty":
                if text.startswith(turn.output, base):
                    free.append((base, base + len(turn.output)))
                continue
            window = self._window(turn, text)
            if window is None:
                if k == len(self.messages) and not prompt and j < k - 1:
                    verdict.history_rewritten += 1
                continue
            if k == len(self.messages) and not prompt and j < k - 1:
                verdict.history_judged += 1
            windows.append((turn, window[0], window[1]))
        taken = free + [window for _, window, _ in windows]
        for turn, (lo, hi), ends in windows:
            # A span running into this window from the left is early, unless another turn's window
            # ends right here (two assistant outputs back to back merge into one span).
            joined = any(a < lo <= b for a, b in taken if (a, b) != (lo, hi))
            self._check_window(text, spans, turn, lo, hi, ends, joined, where, verdict)
        forbidden = self._forbidden(k, prompt, text, turns)
        self._check_forbidden(text, spans, forbidden, taken, where, verdict)

    @staticmethod
    def _window(turn: Turn, text: str) -> tuple[Range, set[int]] | None:
        base = len(turn.prompt)
        ends: set[int] = set()
        hi = None
        full = text.startswith(turn.output, base)
        for candidate in (turn.output, *turn.cores):
            if (full and candidate is not turn.output) or text.startswith(candidate, base):
                ends |= {base + len(candidate), base + len(candidate.rstrip())}
                hi = max(hi or 0, base + len(candidate))
        if hi is None:
            return None
        return (base, hi), ends

    @staticmethod
    def _check_window(
        text: str, spans: tuple[Range, ...], turn: Turn, lo: int, hi: int, ends: set[int], joined: bool,
        where: tuple[str, bool], verdict: Verdict,
    ) -> None:
        inside = [(max(s, lo), min(e, hi)) for s, e in spans if s < hi and e > lo]
        early = [] if joined else [s for s, e in spans if s < lo < e]  # running in from before the output
        if not early and len(inside) == 1 and inside[0][0] == lo and inside[0][1] in ends:
            return
        expected_end = min(ends)
        if early:
            inside[0] = (early[0], inside[0][1])
        expected = f"expected [{lo}, {expected_end}) (ends allowed {sorted(ends)}), actual {inside}"
        if early:
            edge, what = early[0], f"span starts at {early[0]}, before the output at {lo}"
        elif not inside:
            edge, what = lo, "no span where the turn's output starts"
        elif inside[0][0] != lo:
            edge, what = min(lo, inside[0][0]), f"span starts at {inside[0][0]}, not {lo}"
        elif len(inside) > 1:
            edge, what = inside[0][1], f"span stops at {inside[0][1]} and resumes at {inside[1][0]}"
        elif min(ends) < inside[0][1] < max(ends) and not text[min(ends):inside[0][1]].strip():
            edge, what = inside[0][1], f"span ends at {inside[0][1]}, partway into the trailing whitespace"
        else:
            edge, what = inside[0][1], f"span ends at {inside[0][1]}, not in {sorted(ends)}"
        detail = f"{what}; {expected}; at {_context(text, edge)}"
        verdict.failures.append(
            Failure("span", *where, turn.index, detail, edge, (lo, expected_end), tuple(inside))
        )

    def _forbidden(self, k: int, prompt: bool, text: str, turns: dict[int, Turn]) -> list[tuple[Range, str]]:
        regions: list[tuple[Range, str]] = []

        def boundary(m: int) -> int | None:
            if m == 0:
                return 0
            before = self.orig(m, False)
            return len(before) if before is not None and text.startswith(before) else None

        for m in range(k):
            message = self.messages[m]
            if message.get("role") == "assistant":
                turn = turns.get(m)
                if turn is not None and turn.header_start is not None and text.startswith(turn.prompt):
                    regions.append(((turn.header_start, len(turn.prompt)), f"header of turn {m}"))
                continue
            lo, hi = boundary(m), boundary(m + 1)
            if lo is not None and hi is not None and lo < hi:
                regions.append(((lo, hi), f"message {m} ({message.get('role')})"))
            for piece in _texts(message):
                start = text.find(piece)
                while start >= 0:
                    what = f"text of message {m} ({message.get('role')})"
                    regions.append(((start, start + len(piece)), what))
                    start = text.find(piece, start + 1)
        if prompt:
            before = self.orig(k, False)
            if before is not None and text.startswith(before):  # else the prompt render rewrote history
                regions.append(((len(before), len(text)), "generation prompt"))
        return regions

    @staticmethod
    def _check_forbidden(
        text: str, spans: tuple[Range, ...], forbidden: list[tuple[Range, str]], taken: list[Range],
        where: tuple[str, bool], verdict: Verdict,
    ) -> None:
        hits: list[tuple[int, str, Range]] = []
        for (lo, hi), what in forbidden:
            for s, e in spans:
                a, b = max(s, lo), min(e, hi)
                for t_lo, t_hi in sorted(taken):  # the window rule decides inside windows
                    if a < b and t_lo <= a < t_hi:
                        a = t_hi
                    if a < b and t_lo < b <= t_hi:
                        b = t_lo
                if a < b:
                    hits.append((a, what, (s, e)))
        if hits:
            at, what, span = min(hits)
            verdict.failures.append(
                Failure(
                    "outside", *where, None, f"span {list(span)} covers {what} at {at}: {_context(text, at)}",
                    at, None, (span,),
                )
            )

    # -- the whole conversation ------------------------------------------------------------

    def judge_errors(self, verdict: Verdict) -> None:
        """Rule 1 for errors: wherever the original raises, the patched template raises the same type."""
        for k in range(len(self.messages) + 1):
            for prompt in (False, True):
                if self.orig(k, prompt) is not None:
                    continue
                expected = type(self._orig_error[(k, prompt)]).__name__
                actual = self.patched_render(k, prompt)
                if isinstance(actual, Exception) and type(actual).__name__ == expected:
                    continue
                got = f"raises {type(actual).__name__}" if isinstance(actual, Exception) else "renders"
                detail = f"the original raises {expected}, the patched template {got}"
                verdict.failures.append(Failure("error", self._where(k, prompt)[0], True, None, detail))

    def run(self) -> Verdict:
        verdict = Verdict()
        n = len(self.messages)
        self.judge_errors(verdict)
        if self.orig(n, False) is None:
            verdict.skipped = True
            return verdict
        same: list[tuple[int, bool]] = []
        for k in range(n + 1):
            for prompt in (False, True):
                expected = self.orig(k, prompt)
                if expected is None:
                    continue
                actual = self.patched_render(k, prompt)
                where = self._where(k, prompt)
                if isinstance(actual, Exception):
                    detail = f"patched raises {type(actual).__name__}: {str(actual)[:200]}"
                    verdict.failures.append(Failure("render", where[0], k > 0, None, detail))
                elif actual.text != expected:
                    at = _common_prefix(actual.text, expected)
                    detail = (
                        f"text differs at {at}: original {_context(expected, at)}, "
                        f"patched {_context(actual.text, at)}"
                    )
                    verdict.failures.append(Failure("render", where[0], k > 0, None, detail, at))
                else:
                    same.append((k, prompt))
        turns = {j: self.turn(j) for j, m in enumerate(self.messages) if m.get("role") == "assistant"}
        for turn in turns.values():
            if turn.kind == "owed":
                verdict.owed += 1
            elif turn.kind == "empty":
                verdict.empty += 1
            else:
                verdict.mismatch += 1
        # Rule 2 renders first (so the first failure is the simplest), then the rest.
        order = sorted(same, key=lambda kp: (kp[1], kp[0] - 1 not in turns, kp[0]))
        for k, prompt in order:
            self.judge_render(k, prompt, turns, verdict)
        return verdict


def _texts(message: dict[str, Any]) -> list[str]:
    """The tagged texts of a non-assistant message, stripped (templates often trim)."""
    content = message.get("content")
    pieces = [content] if isinstance(content, str) else [p.get("text", "") for p in content or []]
    out = []
    for piece in pieces:
        stripped = piece.strip()
        out.append(stripped)
        try:  # a JSON tool result may be re-serialized; its inner text is still tagged
            inner = json.loads(stripped)
        except ValueError:
            continue
        if isinstance(inner, dict):
            out += [str(v).strip() for v in inner.values() if isinstance(v, str)]
    return [p for p in out if len(p) >= 4]


def judge(original: str, patched: str, conversation: Conversation) -> Verdict:
    """SPEC rules 1-3 for ``patched`` against ``original`` on ``conversation``.

    Example:
        >>> chatml = ("{% for m in messages %}<|im_start|>{{ m.role }}\\n{{ m.content }}<|im_end|>\\n"
        ...           "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}")
        >>> turns = [{"role": "user", "content": "hi u1q"}, {"role": "assistant", "content": "yo"}]
        >>> judge(chatml, chatml, Conversation(turns)).failures[0].detail.startswith("no span")
        True
    """
    return Judge(original, patched, conversation).run()


def describe(failure: Failure, conversation: Conversation) -> str:
    """A failure with the conversation as JSON, for test output and findings."""
    return f"{failure}\nconversation: {json.dumps(conversation.to_json(), ensure_ascii=False)}"



def judge_seeds_under_flag(
    original: str, patched: str, seeds: int, flag: str, values: tuple[Any, ...] = (None, True, False)
) -> int:
    """Judge ``random_conversation(seed)`` for each seed below ``seeds`` with ``flag`` at each of
    ``values`` (``None``: not passed); every verdict must be ok. Returns the turns owed in all.

    Raises:
        AssertionError: a verdict failed (the seed, the flag value and the failures).
    """
    from independent.conversations import random_conversation

    owed = 0
    for seed in range(seeds):
        conversation = random_conversation(seed)
        for value in values:
            conversation.kwargs.clear()
            conversation.kwargs.update({} if value is None else {flag: value})
            verdict = judge(original, patched, conversation)
            assert verdict.ok, (seed, value, [str(f) for f in verdict.failures])
            owed += verdict.owed
    return owed
