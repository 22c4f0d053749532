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

The stages live beside this module in ``templatefix.data``: ``findings`` (options, categories,
results), ``history`` (rewritten turns), ``examples`` (one batch: render, tokenize, check) and
``inputs`` (``open_rows``). This module runs batches in order, on one process or a pool, and
keeps the public names importable from ``templatefix.data.audit``.

Example:
    >>> result = audit_rows(enumerate(rows), template, tokenizer, AuditOptions())  # doctest: +SKIP
    >>> result.ok, result.counts["empty_mask"]  # doctest: +SKIP
    (True, 0)
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from templatefix.data.examples import AuditState, RenderedBatch, audit_examples
from templatefix.data.findings import (
    CATEGORIES,
    CHUNK_SIZE,
    MAX_INDICES,
    MAX_MESSAGES,
    AuditOptions,
    AuditResult,
    ChunkResult,
    ExampleAudit,
)
from templatefix.data.history import history_verdicts, shape_of
from templatefix.data.inputs import open_rows
from templatefix.errors import TemplatefixError

__all__ = [
    "CATEGORIES",
    "CHUNK_SIZE",
    "MAX_INDICES",
    "MAX_MESSAGES",
    "AuditOptions",
    "AuditResult",
    "AuditState",
    "ChunkResult",
    "ExampleAudit",
    "RenderedBatch",
    "audit_chunk",
    "audit_examples",
    "audit_rows",
    "history_verdicts",
    "open_rows",
    "shape_of",
]


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
