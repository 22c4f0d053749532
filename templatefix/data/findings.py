"""What an audit reports: its options, finding categories, per-example audits and totals.

Example:
    >>> result = AuditResult()
    >>> chunk = ChunkResult()
    >>> chunk.add_example(7, ExampleAudit(findings={"empty_mask": "no token is trained"}))
    >>> result.add(chunk)
    >>> result.ok, result.counts["empty_mask"], result.indices["empty_mask"]
    (False, 1, [7])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

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
