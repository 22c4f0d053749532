"""Audit a training set against a patched template (``templatefix audit``).

For every example it computes the mask TRL will train with (transformers' ``assistant_masks``,
replayed from the tokenizer's offsets so that tokenizing can be batched) and reports, with example
indices:

- ``bad_row``: rows without ``messages`` (or ``prompt``/``completion``), or unreadable rows;
- ``template_error``: the template raised or refused the conversation;
- ``empty_mask``: nothing trained;
- ``truncated``: ``--max-length`` truncation leaves no trained token (TRL drops such examples);
- ``token_issue``: the mask disagrees with the spans (SPEC §5, see ``templatefix.tokens``);
- ``rewritten``: a trained earlier turn is rendered differently from what the model generated
  (SPEC §3), so training teaches text the model never produced;
- ``mismatch``: the template's generation prompt disagrees with its own training render.

History checks render each assistant turn's prompt; to stay cheap they run once per conversation
*shape* (roles, which fields are set, flags) and the verdict is reused for later examples of the
same shape (``history="all"`` checks every example).

Example:
    >>> result = audit_rows(enumerate(rows), template, tokenizer, AuditOptions())  # doctest: +SKIP
    >>> result.ok, result.counts["empty_mask"]  # doctest: +SKIP
    (True, 0)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from templatefix.errors import SourceError, TemplatefixError
from templatefix.render import merge_spans, render, render_with_spans
from templatefix.tokens import (
    OffsetIndex,
    diagnose,
    expected_token_ranges,
    normalize_messages,
    special_tokens_of,
    transformers_token_ranges,
    union_ranges,
)

#: Finding categories, in report order, with their one-line descriptions.
CATEGORIES: dict[str, str] = {
    "bad_row": "rows without messages (or unreadable)",
    "template_error": "template errors",
    "empty_mask": "empty mask: nothing trained",
    "truncated": "no trained token left after --max-length",
    "token_issue": "token mask disagrees with the spans",
    "rewritten": "trained turns the template rewrites (text the model never generated)",
    "mismatch": "generation prompt disagrees with the training render",
}
#: How many example indices / messages are kept per category (counts are always exact).
MAX_INDICES = 100_000
MAX_MESSAGES = 20
CHUNK_SIZE = 256


class RowError(TemplatefixError):
    """A row has no usable conversation."""


@dataclass(frozen=True)
class AuditOptions:
    """Knobs of one audit.

    Attributes:
        max_length: TRL's ``max_length`` (truncation keeps the start); ``None`` for no check.
        history: ``"shape"`` (check rewritten history once per conversation shape), ``"all"``
            (every example) or ``"off"``.
        expand_turns: also return SPEC §3's per-turn expansion (prompt/completion rows).
        chunk_size: rows tokenized per batch.
    """

    max_length: int | None = None
    history: str = "shape"
    expand_turns: bool = False
    chunk_size: int = CHUNK_SIZE

    def __post_init__(self) -> None:
        if self.history not in ("shape", "all", "off"):
            raise ValueError(f"history={self.history!r}: choose shape, all or off")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError("--max-length must be a positive number of tokens")


@dataclass
class ChunkResult:
    """What one batch of rows produced (merged into ``AuditResult``)."""

    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    history_checked: int = 0
    findings: list[tuple[str, int, str]] = field(default_factory=list)
    expanded: list[str] = field(default_factory=list)


@dataclass
class AuditResult:
    """Totals and findings of an audit.

    Attributes:
        counts: examples per category (exact).
        indices: example indices per category (first ``MAX_INDICES``).
        messages: ``(index, message)`` per category (first ``MAX_MESSAGES``).
        history_checked: examples whose history was rendered and checked (the rest reused a
            verdict of the same shape).
    """

    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    seconds: float = 0.0
    history_checked: int = 0
    expanded: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    indices: dict[str, list[int]] = field(default_factory=lambda: {name: [] for name in CATEGORIES})
    messages: dict[str, list[tuple[int, str]]] = field(
        default_factory=lambda: {name: [] for name in CATEGORIES}
    )
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    def add(self, chunk: ChunkResult) -> None:
        self.examples += chunk.examples
        self.tokens += chunk.tokens
        self.trained_tokens += chunk.trained_tokens
        self.history_checked += chunk.history_checked
        self.expanded += len(chunk.expanded)
        seen: set[tuple[str, int]] = set()
        for category, index, message in chunk.findings:
            if (category, index) in seen:
                continue  # one count per example and category
            seen.add((category, index))
            self.counts[category] += 1
            if len(self.indices[category]) < MAX_INDICES:
                self.indices[category].append(index)
            if len(self.messages[category]) < MAX_MESSAGES:
                self.messages[category].append((index, message))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "examples": self.examples,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "seconds": round(self.seconds, 3),
            "history_checked": self.history_checked,
            "expanded_examples": self.expanded,
            "notes": self.notes,
            "findings": {
                name: {
                    "description": CATEGORIES[name],
                    "count": self.counts[name],
                    "indices": self.indices[name],
                    "indices_truncated": self.counts[name] > len(self.indices[name]),
                    "messages": [{"index": i, "message": m} for i, m in self.messages[name]],
                }
                for name in CATEGORIES
            },
        }


# --------------------------------------------------------------------------- rows


def conversation_of(row: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(messages, template kwargs)`` of a dataset row, the way TRL's SFTTrainer reads it:
    ``messages`` (or conversational ``prompt`` + ``completion``), ``tools`` (a list or a JSON
    string) and ``chat_template_kwargs``.

    Example:
        >>> conversation_of({"prompt": [{"role": "user", "content": "a"}],
        ...                  "completion": [{"role": "assistant", "content": "b"}]})[0][1]
        {'role': 'assistant', 'content': 'b'}
    """
    if not isinstance(row, Mapping):
        raise RowError(f"row is a {type(row).__name__}, not an object with a 'messages' column")
    if row.get("messages") is not None:
        messages = row["messages"]
    elif row.get("prompt") is not None and row.get("completion") is not None:
        prompt, completion = row["prompt"], row["completion"]
        if not isinstance(prompt, list) or not isinstance(completion, list):
            raise RowError("prompt/completion are plain text, not lists of messages: nothing to mask by turn")
        messages = prompt + completion
    else:
        columns = ", ".join(sorted(map(str, row))) or "none"
        raise RowError(f"no 'messages' column (nor 'prompt' + 'completion'); columns: {columns}")
    if not isinstance(messages, list) or not messages:
        raise RowError("'messages' is empty or not a list")
    if not all(isinstance(m, Mapping) and "role" in m for m in messages):
        raise RowError("'messages' holds an item that is not a message with a 'role'")
    kwargs: dict[str, Any] = {}
    tools = row.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise RowError("'tools' is a string but not valid JSON") from None
    if tools is not None:
        kwargs["tools"] = tools
    extra = row.get("chat_template_kwargs")
    if isinstance(extra, Mapping):
        kwargs.update(extra)
    return normalize_messages(messages), kwargs


def completion_start(row: Any) -> int | None:
    """For a conversational prompt/completion row, the index of the first completion message
    (TRL trains only the completion there); ``None`` for other rows.

    Example:
        >>> completion_start({"prompt": [{"role": "user", "content": "a"}], "completion": []})
        1
    """
    if isinstance(row, Mapping) and row.get("messages") is None and isinstance(row.get("prompt"), list):
        return len(row["prompt"])
    return None


def _clip(ranges: list[tuple[int, int]], first: int) -> list[tuple[int, int]]:
    return [(max(start, first), end) for start, end in ranges if end > first]


def expand_row(row: Mapping[str, Any], messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """SPEC §3's exact alternative: one prompt/completion example per assistant turn.

    Each keeps the messages before the turn as ``prompt`` and the turn as ``completion``, so TRL
    trains only that turn, rendered exactly as generated (``tools`` and ``chat_template_kwargs``
    are kept). A first message that is an assistant turn has no prompt and is skipped.

    Example:
        >>> [len(r["prompt"]) for r in expand_row({}, [{"role": "user", "content": "a"},
        ...     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
        ...     {"role": "assistant", "content": "d"}])]
        [1, 3]
    """
    rows = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or index == 0:
            continue
        expanded: dict[str, Any] = {"prompt": list(messages[:index]), "completion": [message]}
        for key in ("tools", "chat_template_kwargs"):
            if row.get(key) is not None:
                expanded[key] = row[key]
        rows.append(expanded)
    return rows


# --------------------------------------------------------------------------- history


def shape_of(messages: Sequence[Mapping[str, Any]], kwargs: Mapping[str, Any]) -> tuple:
    """A conversation's shape: what decides how templates render history, not the words.

    Example:
        >>> a, b = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
        >>> shape_of(a, {}) == shape_of(b, {})
        True
    """
    parts = []
    for message in messages:
        content = message.get("content")
        keys = tuple(sorted(k for k, v in message.items() if v not in (None, "", [], {})))
        markup = isinstance(content, str) and "<" in content
        parts.append((message.get("role"), keys, type(content).__name__, markup))
    flags = tuple(
        sorted(
            (k, v if isinstance(v, (bool, int, str, type(None))) else type(v).__name__)
            for k, v in kwargs.items()
            if k != "tools"
        )
    )
    return tuple(parts), flags, "tools" in kwargs


def _common_prefix(a: str, b: str) -> int:
    limit = min(len(a), len(b))
    if a[:limit] == b[:limit]:
        return limit
    low, high = 0, limit
    while low < high:  # largest n with a[:n] == b[:n]
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def history_verdicts(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    text: str,
    merged_spans: Sequence[tuple[int, int]],
    special_tokens: Mapping[str, Any],
    kwargs: Mapping[str, Any],
) -> list[tuple[int, str]]:
    """``(message index, "rewritten" | "mismatch")`` for each *trained* assistant turn that is not
    exact (SPEC §2-3). Turns whose prompt the template refuses are not judged."""
    assistants = [i for i, m in enumerate(messages) if m.get("role") == "assistant" and i > 0]
    prompts: dict[int, str | None] = {}
    for index in assistants:
        try:
            prompts[index] = render(
                template,
                messages[:index],
                add_generation_prompt=True,
                special_tokens=special_tokens,
                **kwargs,
            )
        except TemplatefixError:
            prompts[index] = None
    verdicts = []
    for position, index in enumerate(assistants):
        prompt = prompts[index]
        if prompt is None:
            continue
        try:
            full = (
                text
                if index == len(messages) - 1
                else render(template, messages[: index + 1], special_tokens=special_tokens, **kwargs)
            )
        except TemplatefixError:
            continue
        if not full.startswith(prompt):
            kind = "mismatch"
        elif text.startswith(prompt) and text.startswith(full[len(prompt) :], len(prompt)):
            continue  # exact
        else:
            kind = "rewritten"
        start = _common_prefix(text, prompt)
        following = [prompts[i] for i in assistants[position + 1 :] if prompts[i] is not None]
        end = _common_prefix(text, following[0]) if following else len(text)
        if any(s < max(end, start + 1) and e > start for s, e in merged_spans):
            verdicts.append((index, kind))
    return verdicts


# --------------------------------------------------------------------------- the work


@dataclass
class _State:
    template: str
    tokenizer: Any
    options: AuditOptions
    special_tokens: dict[str, Any]
    shapes: dict[tuple, list[tuple[int, str]]] = field(default_factory=dict)


_STATE: _State | None = None


def _set_state(template: str, tokenizer: Any, options: AuditOptions) -> _State:
    global _STATE
    _STATE = _State(template, tokenizer, options, special_tokens_of(tokenizer))
    return _STATE


def _init_spawned(template: str, tokenizer_path: str, options: AuditOptions) -> None:
    from transformers import AutoTokenizer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _set_state(template, AutoTokenizer.from_pretrained(tokenizer_path), options)


def audit_chunk(rows: Sequence[tuple[int, Any]], state: _State | None = None) -> ChunkResult:
    """Audit one batch of ``(index, row)``; a row may be a mapping or a JSON line (``str``)."""
    state = state or _STATE
    assert state is not None, "audit_chunk needs a state (call _set_state first)"
    result = ChunkResult()
    pending: list[
        tuple[int, list[dict[str, Any]], dict[str, Any], str, list[tuple[int, int]], int | None]
    ] = []
    for index, row in rows:
        result.examples += 1
        try:
            if isinstance(row, str):
                try:
                    row = json.loads(row)
                except json.JSONDecodeError as error:
                    raise RowError(f"invalid JSON: {error.msg} at column {error.colno}") from None
            messages, kwargs = conversation_of(row)
        except RowError as error:
            result.findings.append(("bad_row", index, str(error)))
            continue
        if state.options.expand_turns:
            result.expanded.extend(json.dumps(r, ensure_ascii=False) for r in expand_row(row, messages))
        try:
            text, spans = render_with_spans(
                state.template, messages, special_tokens=state.special_tokens, **kwargs
            )
        except TemplatefixError as error:
            result.findings.append(("template_error", index, str(error)))
            continue
        pending.append((index, messages, kwargs, text, spans, completion_start(row)))
    if not pending:
        return result

    backend = state.tokenizer.backend_tokenizer
    encodings = backend.encode_batch([item[3] for item in pending], add_special_tokens=False)
    max_length = state.options.max_length
    for (index, messages, kwargs, text, spans, completion), encoding in zip(pending, encodings, strict=True):
        offsets = encoding.offsets
        token_index = OffsetIndex(offsets)
        merged = merge_spans(spans)
        actual = union_ranges(transformers_token_ranges(token_index, spans))
        expected = expected_token_ranges(token_index, merged)
        if completion is not None:  # TRL trains only the completion of prompt/completion rows
            first = _completion_token(state, messages[:completion], kwargs, text, token_index)
            actual, expected = _clip(actual, first), _clip(expected, first)
        trained = sum(end - start for start, end in actual)
        result.tokens += len(offsets)
        result.trained_tokens += trained
        if actual != expected:
            issues = diagnose(text, spans, offsets)
            if issues:
                more = f" (+{len(issues) - 1} more)" if len(issues) > 1 else ""
                result.findings.append(("token_issue", index, issues[0].message + more))
        if trained == 0:
            result.findings.append(("empty_mask", index, "no token is trained (no span, or spans lost)"))
        elif max_length is not None and actual[0][0] >= max_length:
            result.findings.append(
                (
                    "truncated",
                    index,
                    f"first trained token is #{actual[0][0]}, past --max-length {max_length} "
                    f"({len(offsets)} tokens)",
                )
            )
        if state.options.history != "off" and merged:
            key = shape_of(messages, kwargs) if state.options.history == "shape" else None
            verdicts = state.shapes.get(key) if key is not None else None
            if verdicts is None:
                verdicts = history_verdicts(
                    state.template, messages, text, merged, state.special_tokens, kwargs
                )
                result.history_checked += 1
                if key is not None:
                    state.shapes[key] = verdicts
            for message_index, kind in verdicts:
                if completion is not None and message_index < completion:
                    continue
                if kind == "rewritten":
                    note = (
                        f"assistant message {message_index} is rendered differently from what the model "
                        f"generated; train the last turn only or use --expand-turns"
                    )
                else:
                    note = (
                        f"assistant message {message_index}: the render after the generation prompt does "
                        f"not start with that prompt; its span cannot be exact"
                    )
                result.findings.append((kind, index, note))
    return result


def _completion_token(
    state: _State, prompt: list[dict[str, Any]], kwargs: dict[str, Any], text: str, token_index: OffsetIndex
) -> int:
    """First token of the completion: where the prompt's render (with generation prompt) stops
    matching the full render, as TRL's common-prefix rule finds it."""
    if not prompt:
        return 0
    try:
        rendered = render(
            state.template, prompt, add_generation_prompt=True, special_tokens=state.special_tokens, **kwargs
        )
    except TemplatefixError:
        return 0
    cut = _common_prefix(text, rendered)
    return (
        bisect_right(token_index.ends, cut)
        if token_index.monotonic
        else sum(1 for _, end in token_index.offsets if end <= cut)
    )


def _chunks(rows: Iterable[tuple[int, Any]], size: int) -> Iterator[list[tuple[int, Any]]]:
    chunk: list[tuple[int, Any]] = []
    for item in rows:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def audit_rows(
    rows: Iterable[tuple[int, Any]],
    template: str,
    tokenizer: Any,
    options: AuditOptions | None = None,
    *,
    workers: int = 1,
    on_chunk: Callable[[ChunkResult], None] | None = None,
) -> AuditResult:
    """Audit ``(index, row)`` pairs (rows are mappings or JSON lines) with ``workers`` processes.

    ``on_chunk`` is called in order with each batch's result (progress, writing expansions).
    """
    options = options or AuditOptions()
    started = time.perf_counter()
    result = AuditResult()
    chunks = _chunks(rows, options.chunk_size)
    if workers <= 1:
        state = _State(template, tokenizer, options, special_tokens_of(tokenizer))
        for chunk in chunks:
            done = audit_chunk(chunk, state)
            result.add(done)
            if on_chunk:
                on_chunk(done)
    else:
        for done in _parallel(chunks, template, tokenizer, options, workers):
            result.add(done)
            if on_chunk:
                on_chunk(done)
    result.seconds = time.perf_counter() - started
    if options.history == "shape" and result.history_checked < result.examples:
        result.notes.append(
            f"history checked on {result.history_checked} examples, one per conversation shape; "
            f"check every example with --history all"
        )
    return result


def _parallel(
    chunks: Iterator[list[tuple[int, Any]]],
    template: str,
    tokenizer: Any,
    options: AuditOptions,
    workers: int,
) -> Iterator[ChunkResult]:
    """Run chunks on a process pool, in order, with a bounded number in flight."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core; quiet fork warning
    try:
        if "fork" in multiprocessing.get_all_start_methods():
            _set_state(template, tokenizer, options)
            pool = multiprocessing.get_context("fork").Pool(workers)
        else:  # pragma: no cover - platforms without fork
            path = getattr(tokenizer, "name_or_path", None)
            pool = multiprocessing.get_context("spawn").Pool(
                workers, initializer=_init_spawned, initargs=(template, path, options)
            )
        with pool:
            in_flight: deque = deque()
            for chunk in chunks:
                in_flight.append(pool.apply_async(audit_chunk, (chunk,)))
                if len(in_flight) >= workers * 3:
                    yield in_flight.popleft().get()
            while in_flight:
                yield in_flight.popleft().get()
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


# --------------------------------------------------------------------------- data sources


def open_rows(path: str | Path, split: str | None = None) -> tuple[Iterator[tuple[int, Any]], int | None]:
    """``(rows, total)`` for a JSONL file (rows are raw lines, parsed by the workers) or a local
    ``datasets`` directory (``load_from_disk``; needs the ``datasets`` package)."""
    path = Path(path)
    if path.is_file():
        return _jsonl_rows(path), _count_lines(path)
    if path.is_dir():
        try:
            import datasets
        except ImportError:
            raise SourceError(
                f"{path} is a directory: reading a datasets directory needs the 'datasets' package "
                f"(pip install datasets), or give a JSONL file"
            ) from None
        try:
            data = datasets.load_from_disk(str(path))
        except Exception as error:  # noqa: BLE001 - any failure means not a dataset directory
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise SourceError(f"{path}: not a datasets directory saved with save_to_disk ({first})") from None
        if isinstance(data, datasets.DatasetDict):
            names = list(data)
            chosen = split or ("train" if "train" in data else names[0] if len(names) == 1 else None)
            if chosen not in data:
                raise SourceError(f"{path}: choose a split with --split ({', '.join(names)})")
            data = data[chosen]
        elif split is not None:
            raise SourceError(f"{path} holds a single dataset: --split does not apply")
        return ((index, row) for index, row in enumerate(data)), len(data)
    raise SourceError(f"{path}: no such file or directory")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    index = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield index, line
                index += 1


def _count_lines(path: Path) -> int | None:
    if path.stat().st_size > 2_000_000_000:
        return None
    count = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            count += block.count(b"\n")
    return count or 1
