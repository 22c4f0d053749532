"""Dataset transforms: audit and tokenize conversations inside ``datasets`` or Ray Data pipelines.

``AuditTransform`` is a picklable callable built from a tokenizer (a local directory, a Hub id,
or a loaded fast tokenizer), a template (default: the tokenizer's own, patched with ``policy``
when it has no ``{% generation %}`` markers) and audit options. Called on a column batch it
returns, per row:

- ``input_ids`` and ``assistant_masks``: the tokens, and 1 on exactly the tokens inside the
  spans (the exact mask even where transformers' own would be lossy). ``SFTTrainer`` uses these
  columns as they are (a dataset with ``input_ids`` is not tokenized again), so
  ``assistant_only_loss=True`` trains exactly that mask;
- one string column per finding category, ``audit_<category>`` (``""`` when the row is fine):
  ``audit_bad_row``, ``audit_template_error``, ``audit_empty_mask``, ``audit_truncated``,
  ``audit_token_issue``, ``audit_rewritten``, ``audit_mismatch``.

It runs the very code of ``templatefix audit`` (``templatefix.data.audit.audit_examples``), so a
pipeline and the CLI find the same things; ``summarize`` totals the columns into the CLI's
``AuditResult``.

``expand_turns`` is a batched map giving one prompt/completion example per assistant turn (each
trains only its final turn, exact for any template); other columns are repeated.

Example (``datasets``):
    >>> transform = AuditTransform("Qwen/Qwen3-8B", max_length=4096)  # doctest: +SKIP
    >>> data = data.map(transform, batched=True, num_proc=4)  # doctest: +SKIP
    >>> summarize(data).counts["empty_mask"]  # doctest: +SKIP
    0

Example (Ray Data: ``map_batches`` keeps only what the function returns):
    >>> data = data.map_batches(AuditTransform("Qwen/Qwen3-8B", keep_columns=True))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from templatefix.data.examples import AuditState, audit_examples
from templatefix.data.findings import CATEGORIES, AuditOptions, AuditResult, ChunkResult, ExampleAudit
from templatefix.data.rows import (
    CONVERSATION_COLUMNS,
    RowError,
    columns_of,
    conversation_of,
    expand_row,
    rows_of_batch,
)
from templatefix.policy import Policy

#: Audit column name of each finding category.
AUDIT_COLUMNS = {category: f"audit_{category}" for category in CATEGORIES}


class AuditTransform:
    """``batch -> columns``: tokens, the exact assistant mask, and the audit of each row.

    Usable as ``datasets.Dataset.map(transform, batched=True, num_proc=N)`` and
    ``ray.data.Dataset.map_batches(transform)`` (with ``keep_columns=True``). The template is
    resolved (and patched if needed) once, when the transform is built; each worker process loads
    the tokenizer once, on its first batch.

    Args:
        tokenizer: fast tokenizer: a local directory (a processor folder works too), a Hub id, or
            a loaded tokenizer.
        template: a marked template text; default: the tokenizer's chat template, patched with
            ``policy`` when it has no markers (an unverified patch raises ``NotVerifiedError``).
        policy: what to train when patching (``Policy`` fields also work as keyword arguments).
        max_length: TRL's ``max_length``: flag rows truncation leaves without a trained token.
        history: ``"shape"``, ``"all"`` or ``"off"`` (see ``AuditOptions``).
        keep_columns: also return the batch's own columns (Ray Data replaces a batch with what the
            function returns; ``datasets`` keeps them anyway).

    Raises:
        SourceError: the tokenizer cannot be loaded. TemplatefixError: no usable template.
    """

    def __init__(
        self,
        tokenizer: str | Path | Any,
        template: str | None = None,
        *,
        policy: Policy | None = None,
        max_length: int | None = None,
        history: str = "shape",
        keep_columns: bool = False,
        **policy_kwargs: Any,
    ) -> None:
        from templatefix.data.resolve import resolve_template
        from templatefix.tokens import load_fast_tokenizer

        self.options = AuditOptions(max_length=max_length, history=history)
        self.keep_columns = keep_columns
        if isinstance(tokenizer, (str, Path)):
            self.tokenizer_source: str | None = str(tokenizer)
            loaded = load_fast_tokenizer(tokenizer)
        else:
            self.tokenizer_source = None
            loaded = tokenizer
        policy = policy or Policy.from_kwargs(**policy_kwargs)
        resolved = resolve_template(template, loaded, policy, strict=True)
        self.template, self.notes = resolved.template, resolved.notes
        self._tokenizer = loaded
        self._state: AuditState | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_state"] = None  # per-process cache (history verdicts): rebuilt in each worker
        if self.tokenizer_source is not None:
            state["_tokenizer"] = None  # reloaded from its source in each worker
        return state

    def state(self) -> AuditState:
        """The per-process audit state (tokenizer loaded on first use)."""
        if self._state is None:
            if self._tokenizer is None:
                from templatefix.tokens import load_fast_tokenizer

                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
                self._tokenizer = load_fast_tokenizer(self.tokenizer_source or "")
            self._state = AuditState.build(self.template, self._tokenizer, self.options)
        return self._state

    def audit(self, batch: Any) -> list[ExampleAudit]:
        """The ``ExampleAudit`` of each row of ``batch``."""
        return audit_examples(rows_of_batch(batch), self.state(), with_tokens=True)

    def __call__(self, batch: Any) -> Any:
        audits = self.audit(batch)
        columns: dict[str, Any] = {
            "input_ids": [np.asarray(a.input_ids, dtype=np.int64) for a in audits],
            "assistant_masks": [np.asarray(a.assistant_masks, dtype=np.int64) for a in audits],
        }
        for category, name in AUDIT_COLUMNS.items():
            columns[name] = [a.findings.get(category, "") for a in audits]
        if not self.keep_columns:
            return columns
        if hasattr(batch, "columns") and hasattr(batch, "assign"):  # a pandas DataFrame
            return batch.assign(**columns)
        return {**{name: batch[name] for name in batch.keys()}, **columns}


def expand_turns(batch: Any) -> dict[str, list[Any]]:
    """Batched map: one prompt/completion example per assistant turn of each row.

    Each example trains only its final turn, rendered exactly as the model generated it, for any
    template (SPEC §3). Other columns are repeated; rows without a conversation give nothing.
    With ``datasets`` the row count changes, so drop the old columns:
    ``data.map(expand_turns, batched=True, remove_columns=data.column_names)``.

    Example:
        >>> out = expand_turns({"messages": [[{"role": "user", "content": "a"},
        ...     {"role": "assistant", "content": "b"}]], "id": [3]})
        >>> out["completion"], out["id"]
        ([[{'role': 'assistant', 'content': 'b'}]], [3])
    """
    names = ["prompt", "completion", *(c for c in columns_of(batch) if c not in CONVERSATION_COLUMNS)]
    out: dict[str, list[Any]] = {name: [] for name in names}
    for row in rows_of_batch(batch):
        try:
            messages, _ = conversation_of(row)
        except RowError:
            continue
        for example in expand_row(row, messages):
            for name in names:
                out[name].append(example.get(name))
    return out


def summarize(rows: Iterable[Mapping[str, Any]]) -> AuditResult:
    """Total a transformed dataset's columns into an ``AuditResult`` (what ``templatefix audit``
    prints): counts and indices per category, tokens and trained tokens.

    Example:
        >>> summarize([{"input_ids": [1, 2], "assistant_masks": [0, 1],
        ...             **{name: "" for name in AUDIT_COLUMNS.values()}}]).trained_tokens
        1
    """
    if hasattr(rows, "select_columns"):  # a datasets.Dataset: read only what is counted
        rows = rows.select_columns(["input_ids", "assistant_masks", *AUDIT_COLUMNS.values()])
    result = AuditResult()
    chunk = ChunkResult()
    for index, row in enumerate(rows):
        audit = ExampleAudit(
            findings={c: row[name] for c, name in AUDIT_COLUMNS.items() if row.get(name)},
            tokens=len(row["input_ids"]),
            trained=int(sum(row["assistant_masks"])),
        )
        chunk.add_example(index, audit)
    result.add(chunk)
    return result
