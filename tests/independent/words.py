"""The word rule (SPEC §6-§7): every word the assistant wrote is trained, and nothing else.

In the full render ``R = render(M, add_generation_prompt=False)`` of the PATCHED template, with
the union of its ``{% generation %}`` spans, every word of the conversation is looked up (the
generator makes each word unique: ``independent.conversations.WORD``) and must be:

- **inside** a span when an assistant wrote it and the policy trains it: content, each content
  part, reasoning (``reasoning_content``, ``reasoning`` or ``thinking``), each tool-call name and
  each string argument value;
- **outside** every span otherwise: system, user and tool texts, and assistant words the
  policy excludes.

"Inside" means the whole word lies in one span; "outside" means no character of it does. A
word the template does not write (Qwen3 drops earlier reasoning) owes nothing. A word written
more than once must obey at every occurrence, except a tool-call name: a template may echo it
in the tool result that answers the call (gpt-oss writes ``<|start|>functions.NAME``), so a
trained name owes its first occurrence (the call comes before its result) and an excluded name
owes every occurrence outside. The render of the patched template must equal the original's
(rule 1); otherwise the words are not judged.

Policies are plain keyword values (the same names as ``templatefix.patch_template``'s):

- ``turns``: ``"all"``; ``"last"`` (only assistant messages after the last user message);
  ``"last_message"`` (only the final assistant message of the conversation).
- ``reasoning``: ``"trained"``; ``"not_trained"`` (reasoning words outside);
  ``"final_channel_only"``: only the answers are trained. Reasoning, tool-call names and
  arguments are outside, and so is every word of an assistant message that has tool calls (in
  harmony, gpt-oss's format, such a message is written in the ``analysis`` and ``commentary``
  channels). When the render writes channels (it contains ``<|channel|>``), a content word of
  any other message is inside only when the channel it is written in (the nearest
  ``<|channel|>NAME`` before it) is ``final``. The judge reads the channel from the render, the
  way the policy names it; it never looks at the template's source.
- ``tool_calls``: ``"trained"``; ``"not_trained"`` (tool-call names and arguments outside; the
  content beside them stays inside).
- ``train_field``: a field name; an assistant message whose field is ``false`` is outside.
- ``trailing_whitespace``: no word is whitespace, so it changes nothing here.

Example:
    >>> chatml = ("{% for m in messages %}<|im_start|>{{ m.role }}\\n{{ m.content }}<|im_end|>\\n"
    ...           "{% endfor %}")
    >>> turns = [{"role": "user", "content": "hi alpha1q"}, {"role": "assistant", "content": "yo bravo2q"}]
    >>> [str(f) for f in judge_words(chatml, chatml, turns, {}).failures]  # doctest: +ELLIPSIS
    ["[word] bravo2q (message 1 assistant content) should be inside a span, is not at 63: ..."]
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from independent.conversations import WORD
from independent.render import render_spans, render_text

POLICY_CHOICES: dict[str, tuple[str, ...]] = {
    "turns": ("all", "last", "last_message"),
    "reasoning": ("trained", "not_trained", "final_channel_only"),
    "tool_calls": ("trained", "not_trained"),
    "trailing_whitespace": ("out", "in"),
}
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
CHANNEL = "<|channel|>"


def check_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The policy as a plain dict, every key and value checked.

    Raises:
        ValueError: an unknown key or value.
    """
    out = dict(policy)
    for key, value in out.items():
        if key == "train_field":
            if value is not None and not (isinstance(value, str) and value.isidentifier()):
                raise ValueError(f"policy train_field={value!r}: give a field name")
        elif key not in POLICY_CHOICES:
            known = ", ".join([*POLICY_CHOICES, "train_field"])
            raise ValueError(f"unknown policy option {key!r} (known: {known})")
        elif value not in POLICY_CHOICES[key]:
            raise ValueError(f"policy {key}={value!r}: choose one of {', '.join(POLICY_CHOICES[key])}")
    return out


@dataclass(frozen=True)
class Word:
    """One word of the conversation and where it must be."""

    text: str
    message: int
    role: str
    field: str  # e.g. "content", "content[1]", "reasoning_content", "tool_calls[0].name"
    trained: bool | None  # True: inside; False: outside; None: by the channel it is written in
    kind: str = "text"  # "text", "name" (a tool-call name), "argument", "reasoning"

    def where(self) -> str:
        return f"message {self.message} {self.role} {self.field}"


@dataclass(frozen=True)
class WordFailure:
    """A word on the wrong side of the spans (or the render changed: ``rule == "render"``)."""

    rule: str  # "word" or "render"
    detail: str
    word: str = ""
    message: int | None = None
    expected: str = ""  # "inside" / "outside"
    at: int = -1
    training: bool = True  # the full render of a conversation ending with an assistant: trained on

    def __str__(self) -> str:
        return f"[{self.rule}] {self.detail}"


@dataclass
class WordVerdict:
    skipped: bool = False  # the original rejects the conversation
    failures: list[WordFailure] = field(default_factory=list)
    inside: int = 0  # word occurrences judged that must be inside
    outside: int = 0  # word occurrences judged that must be outside
    absent: int = 0  # words the template does not write

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def training_failures(self) -> list[WordFailure]:
        return list(self.failures)


def _texts(value: Any) -> Iterator[tuple[str, str]]:
    """(sub-field, text) of a content value: a string, or a list of parts."""
    if isinstance(value, str):
        yield "", value
    elif isinstance(value, list):
        for i, part in enumerate(value):
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                yield f"[{i}]", part["text"]


def _arguments(arguments: Any) -> Iterator[tuple[str, str]]:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            yield "", arguments
            return
    if isinstance(arguments, Mapping):
        for key, value in arguments.items():
            if isinstance(value, str):
                yield f".{key}", value


def _trained_message(messages: Sequence[Mapping[str, Any]], index: int, policy: Mapping[str, Any]) -> bool:
    message = messages[index]
    train_field = policy.get("train_field")
    if train_field and message.get(train_field) is False:
        return False
    turns = policy.get("turns", "all")
    if turns == "last":
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        return not users or index > users[-1]
    if turns == "last_message":
        assistants = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        return index == assistants[-1]
    return True


def expected_words(
    messages: Sequence[Mapping[str, Any]], policy: Mapping[str, Any], channels: bool
) -> list[Word]:
    """Every word of ``messages`` with where ``policy`` wants it (``channels``: the render writes
    harmony channels, see the module docstring)."""
    reasoning_policy = policy.get("reasoning", "trained")
    final_only = reasoning_policy == "final_channel_only"
    by_channel = final_only and channels
    calls_trained = policy.get("tool_calls", "trained") == "trained" and not final_only
    words: list[Word] = []

    def add(index: int, role: str, name: str, text: str, trained: bool | None, kind: str) -> None:
        for word in WORD.findall(text):
            words.append(Word(word, index, role, name, trained, kind))

    for index, message in enumerate(messages):
        role = str(message.get("role"))
        if role != "assistant":
            for sub, text in _texts(message.get("content")):
                add(index, role, "content" + sub, text, False, "text")
            continue
        # under final_channel_only a message with tool calls is not an answer
        trained = _trained_message(messages, index, policy) and not (final_only and message.get("tool_calls"))
        for sub, text in _texts(message.get("content")):
            content_trained = (None if by_channel else True) if trained else False
            add(index, role, "content" + sub, text, content_trained, "text")
        for name in REASONING_FIELDS:
            if isinstance(message.get(name), str):
                add(index, role, name, message[name], trained and reasoning_policy == "trained", "reasoning")
        calls = trained and calls_trained
        for n, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function", call) if isinstance(call, Mapping) else {}
            if isinstance(function.get("name"), str):
                add(index, role, f"tool_calls[{n}].name", function["name"], calls, "name")
            for sub, text in _arguments(function.get("arguments")):
                add(index, role, f"tool_calls[{n}].arguments{sub}", text, calls, "argument")
    return words


def _occurrences(text: str, word: str) -> list[int]:
    found, start = [], text.find(word)
    while start >= 0:
        found.append(start)
        start = text.find(word, start + 1)
    return found


def _channel_at(text: str, at: int) -> str | None:
    """The harmony channel a character is written in: the name after the last ``<|channel|>`` before it."""
    start = text.rfind(CHANNEL, 0, at)
    if start < 0:
        return None
    name = text[start + len(CHANNEL):at]
    for stop in ("<|", " "):
        name = name.split(stop, 1)[0]
    return name


def _context(text: str, at: int, width: int = 30) -> str:
    return f"{text[max(0, at - width):at]!r} | {text[at:at + width]!r}"


def judge_words(
    original: str,
    patched: str,
    messages: Sequence[Mapping[str, Any]],
    policy: Mapping[str, Any],
    kwargs: Mapping[str, Any] | None = None,
) -> WordVerdict:
    """The word rule for ``patched`` (whose render must equal ``original``'s) on one conversation."""
    policy = check_policy(policy)
    kwargs = dict(kwargs or {})
    try:
        expected_text = render_text(original, messages, False, kwargs)
    except Exception:  # templates are arbitrary code: any failure is a rejection
        return WordVerdict(skipped=True)
    verdict = WordVerdict()
    try:
        rendered = render_spans(patched, messages, False, kwargs)
    except Exception as error:
        detail = f"patched raises {type(error).__name__}: {str(error)[:200]}"
        verdict.failures.append(WordFailure("render", detail))
        return verdict
    text, spans = rendered.text, rendered.spans
    if text != expected_text:
        limit = min(len(text), len(expected_text))
        at = next((i for i in range(limit) if text[i] != expected_text[i]), limit)
        verdict.failures.append(
            WordFailure("render", f"text differs at {at}: original {_context(expected_text, at)}, "
                        f"patched {_context(text, at)}", at=at)
        )
        return verdict
    channels = CHANNEL in text
    for word in expected_words(messages, policy, channels):
        places = _occurrences(text, word.text)
        if not places:
            verdict.absent += 1
            continue
        if word.kind == "name" and word.trained:
            places = places[:1]
        for at in places:
            end = at + len(word.text)
            inside = any(s <= at and end <= e for s, e in spans)
            touched = any(s < end and at < e for s, e in spans)
            want = word.trained if word.trained is not None else _channel_at(text, at) == "final"
            if want:
                verdict.inside += 1
            else:
                verdict.outside += 1
            if (want and inside) or (not want and not touched):
                continue
            state = "is partly" if touched else "is not"
            if not want:
                detail = f"{word.text} ({word.where()}) should be outside every span, is inside"
            else:
                detail = f"{word.text} ({word.where()}) should be inside a span, {state}"
            verdict.failures.append(
                WordFailure("word", f"{detail} at {at}: {_context(text, at)}", word.text, word.message,
                            "inside" if want else "outside", at)
            )
    return verdict
