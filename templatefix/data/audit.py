"""Audit a training set against a patched template (``templatefix audit``).

For every example it renders with the spans, tokenizes in batches, computes the mask the spans
mean (a token is trained iff it lies inside a span; ``trained_tokens`` counts these), compares it
with the mask transformers would compute, and reports, with example indices:

- ``bad_row``: rows without ``messages`` (or ``prompt``/``completion``), or unreadable rows;
- ``template_error``: the template raised or refused the conversation;
- ``empty_mask``: nothing trained;
- ``truncated``: ``--max-length`` truncation leaves no trained token (TRL drops such examples);
- ``token_issue``: transformers' own ``assistant_masks`` would disagree with the spans (SPEC §5,
  see ``templatefix.tokens``); the dataset transforms give the exact mask instead;
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

from templatefix.data.rows import RowError, completion_start, conversation_of, expand_row, parse_row
from templatefix.errors import SourceError, TemplatefixError
from templatefix.render import merge_spans, render, render_with_spans
from templatefix.tokens import (
    OffsetIndex,
    diagnose,
    expected_token_ranges,
    mask_from_ranges,
    require_fast,
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

    def add_example(self, index: int, audit: ExampleAudit) -> None:
        """Count one example's audit under its dataset index."""
        self.examples += 1
        self.tokens += audit.tokens
        self.trained_tokens += audit.trained
        self.history_checked += audit.history_checked
        self.findings.extend((category, index, message) for category, message in audit.findings.items())
        self.expanded.extend(json.dumps(row, ensure_ascii=False) for row in audit.expanded)


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
class AuditState:
    """What auditing needs, built once per process: the marked template, the tokenizer, the
    options, and the history verdict per conversation shape (filled as examples come)."""

    template: str
    tokenizer: Any
    options: AuditOptions
    special_tokens: dict[str, Any]
    shapes: dict[tuple, list[tuple[int, str]]] = field(default_factory=dict)

    @classmethod
    def build(cls, template: str, tokenizer: Any, options: AuditOptions | None = None) -> AuditState:
        require_fast(tokenizer)
        return cls(template, tokenizer, options or AuditOptions(), special_tokens_of(tokenizer))


@dataclass
class ExampleAudit:
    """The audit of one example.

    Attributes:
        findings: first message per finding category (``CATEGORIES``) that applies.
        input_ids: the tokens (only when asked for; empty when the row could not be rendered).
        assistant_masks: 1 on exactly the tokens inside the spans (clipped to the completion of
            prompt/completion rows): the mask the spans mean, for ``SFTTrainer``.
        tokens / trained: token count and trained-token count.
        history_checked: the history was rendered for this example (not reused from its shape).
        expanded: one prompt/completion row per assistant turn (``AuditOptions.expand_turns``).
    """

    findings: dict[str, str] = field(default_factory=dict)
    input_ids: list[int] = field(default_factory=list)
    assistant_masks: list[int] = field(default_factory=list)
    tokens: int = 0
    trained: int = 0
    history_checked: bool = False
    expanded: list[dict[str, Any]] = field(default_factory=list)

    def flag(self, category: str, message: str) -> None:
        self.findings.setdefault(category, message)


@dataclass
class _Rendered:
    audit: ExampleAudit
    messages: list[dict[str, Any]]
    kwargs: dict[str, Any]
    text: str
    spans: list[tuple[int, int]]
    completion: int | None


def audit_examples(
    rows: Sequence[Any], state: AuditState, *, with_tokens: bool = False
) -> list[ExampleAudit]:
    """Audit a batch of rows (mappings, or JSON lines as ``str``), one ``ExampleAudit`` each.

    This is the one code path behind ``templatefix audit`` and the dataset transforms
    (``templatefix.data.transforms``). The texts are tokenized in one batched call.

    Args:
        rows: the batch.
        state: from ``AuditState.build``.
        with_tokens: also fill ``input_ids`` and ``assistant_masks``.
    """
    batch = RenderedBatch.render(rows, state)
    return batch.finish(batch.encode(state), state, with_tokens=with_tokens)


@dataclass
class RenderedBatch:
    """A batch between its three steps: rendered (``render``), tokenized (``encode``, which runs
    in the tokenizer's native code without the GIL, so it can overlap the next batch's
    rendering), and audited (``finish``)."""

    audits: list[ExampleAudit]
    pending: list[_Rendered]

    @classmethod
    def render(cls, rows: Sequence[Any], state: AuditState) -> RenderedBatch:
        """Parse and render each row with its spans; bad rows and template errors are flagged."""
        audits = [ExampleAudit() for _ in rows]
        pending: list[_Rendered] = []
        for audit, row in zip(audits, rows, strict=True):
            try:
                row = parse_row(row)
                messages, kwargs = conversation_of(row)
            except RowError as error:
                audit.flag("bad_row", str(error))
                continue
            if state.options.expand_turns:
                audit.expanded = expand_row(row, messages)
            try:
                text, spans = render_with_spans(
                    state.template, messages, special_tokens=state.special_tokens, **kwargs
                )
            except TemplatefixError as error:
                audit.flag("template_error", str(error))
                continue
            pending.append(_Rendered(audit, messages, kwargs, text, spans, completion_start(row)))
        return cls(audits, pending)

    def encode(self, state: AuditState) -> list[Any]:
        """Tokenize the rendered texts in one batch (offsets included)."""
        if not self.pending:
            return []
        texts = [item.text for item in self.pending]
        return state.tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)

    def finish(
        self, encodings: list[Any], state: AuditState, *, with_tokens: bool = False
    ) -> list[ExampleAudit]:
        """Check masks, truncation and history from the encodings; the audits in row order."""
        for item, encoding in zip(self.pending, encodings, strict=True):
            _audit_tokens(item, encoding, state, with_tokens)
        return self.audits


def _audit_tokens(item: _Rendered, encoding: Any, state: AuditState, with_tokens: bool) -> None:
    audit, text, spans = item.audit, item.text, item.spans
    offsets = encoding.offsets
    token_index = OffsetIndex(offsets)
    merged = merge_spans(spans)
    actual = union_ranges(transformers_token_ranges(token_index, spans))
    expected = expected_token_ranges(token_index, merged)
    if item.completion is not None:  # TRL trains only the completion of prompt/completion rows
        first = _completion_token(state, item.messages[: item.completion], item.kwargs, text, token_index)
        actual, expected = _clip(actual, first), _clip(expected, first)
    audit.tokens = len(offsets)
    audit.trained = sum(end - start for start, end in expected)
    if with_tokens:
        audit.input_ids = list(encoding.ids)
        audit.assistant_masks = mask_from_ranges(expected, len(offsets))
    if actual != expected:
        issues = diagnose(text, spans, offsets)
        if issues:
            more = f" (+{len(issues) - 1} more)" if len(issues) > 1 else ""
            audit.flag("token_issue", issues[0].message + more)
    max_length = state.options.max_length
    if audit.trained == 0:
        audit.flag("empty_mask", "no token is trained (no span, or spans lost)")
    elif max_length is not None and expected[0][0] >= max_length:
        audit.flag(
            "truncated",
            f"first trained token is #{expected[0][0]}, past --max-length {max_length} "
            f"({len(offsets)} tokens)",
        )
    if state.options.history != "off" and merged:
        _audit_history(item, merged, state)


def _audit_history(item: _Rendered, merged: list[tuple[int, int]], state: AuditState) -> None:
    key = shape_of(item.messages, item.kwargs) if state.options.history == "shape" else None
    verdicts = state.shapes.get(key) if key is not None else None
    if verdicts is None:
        verdicts = history_verdicts(
            state.template, item.messages, item.text, merged, state.special_tokens, item.kwargs
        )
        item.audit.history_checked = True
        if key is not None:
            state.shapes[key] = verdicts
    for message_index, kind in verdicts:
        if item.completion is not None and message_index < item.completion:
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
        item.audit.flag(kind, note)


def audit_chunk(rows: Sequence[tuple[int, Any]], state: AuditState | None = None) -> ChunkResult:
    """Audit one batch of ``(index, row)``; a row may be a mapping or a JSON line (``str``)."""
    state = state or _STATE
    if state is None:
        raise TemplatefixError("audit_chunk needs a state (AuditState.build)")
    result = ChunkResult()
    for (index, _), audit in zip(rows, audit_examples([row for _, row in rows], state), strict=True):
        result.add_example(index, audit)
    return result


_STATE: AuditState | None = None


def _set_state(template: str, tokenizer: Any, options: AuditOptions) -> AuditState:
    global _STATE
    _STATE = AuditState.build(template, tokenizer, options)
    return _STATE


def _init_spawned(template: str, tokenizer_path: str, options: AuditOptions) -> None:
    from transformers import AutoTokenizer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _set_state(template, AutoTokenizer.from_pretrained(tokenizer_path), options)


def _clip(ranges: list[tuple[int, int]], first: int) -> list[tuple[int, int]]:
    return [(max(start, first), end) for start, end in ranges if end > first]


def _completion_token(
    state: AuditState,
    prompt: list[dict[str, Any]],
    kwargs: dict[str, Any],
    text: str,
    token_index: OffsetIndex,
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
        for done in _pipelined(chunks, AuditState.build(template, tokenizer, options)):
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


def _pipelined(chunks: Iterator[list[tuple[int, Any]]], state: AuditState) -> Iterator[ChunkResult]:
    """One process: tokenize each chunk on a thread while the next one renders and the previous
    one is checked (the tokenizer releases the GIL), so tokenizing overlaps the Python work."""
    from concurrent.futures import ThreadPoolExecutor

    def finished(chunk: list[tuple[int, Any]], batch: RenderedBatch, encodings: list[Any]) -> ChunkResult:
        done = ChunkResult()
        for (index, _), audit in zip(chunk, batch.finish(encodings, state), strict=True):
            done.add_example(index, audit)
        return done

    with ThreadPoolExecutor(max_workers=1) as executor:
        previous = None
        for chunk in chunks:
            batch = RenderedBatch.render([row for _, row in chunk], state)
            future = executor.submit(batch.encode, state)
            if previous is not None:
                yield finished(previous[0], previous[1], previous[2].result())
            previous = (chunk, batch, future)
        if previous is not None:
            yield finished(previous[0], previous[1], previous[2].result())


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
