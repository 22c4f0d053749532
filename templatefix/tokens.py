"""Token-level check of generation spans (SPEC §5).

transformers turns character spans into ``assistant_masks`` with ``char_to_token`` on each span's
first and last character. That is lossy: a token straddling a span edge is trained although part
of it is prompt; a span whose first character maps to no token is dropped together with every
later span; a span whose last character maps to no token, or whose last token is token 0, is
masked to the end of the sequence. This module computes the mask the spans *mean* (a token is
trained iff all its characters lie in a span) independently from the tokenizer's offsets, compares
it with the mask transformers produces, and names every disagreement.

Example:
    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> tok = AutoTokenizer.from_pretrained("tokenizers/qwen3")  # doctest: +SKIP
    >>> check_token_masks(template, tok, [{"role": "user", "content": "hi"},
    ...                                   {"role": "assistant", "content": "hello"}])  # doctest: +SKIP
    []

The stages live in ``templatefix.masks``: ``ranges`` (offset arithmetic on plain offset lists,
which ``templatefix.data.audit`` runs on batches without calling transformers) and ``issues``
(``TokenIssue``, ``diagnose``, ``eot_issues``). This module holds the check itself and the
tokenizer helpers, and keeps those names importable from ``templatefix.tokens``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from templatefix import clock
from templatefix.errors import SourceError
from templatefix.masks.issues import (
    END_AT_TOKEN_ZERO,
    END_UNMAPPED,
    EOT_OUTSIDE,
    IDS_DIFFER,
    ISSUE_KINDS,
    MISMATCH,
    START_UNMAPPED,
    STRADDLE,
    TokenIssue,
    diagnose,
    eot_issues,
)
from templatefix.masks.ranges import (
    OffsetIndex,
    Offsets,
    TokenRange,
    expected_token_ranges,
    mask_from_ranges,
    ranges_from_mask,
    transformers_token_ranges,
    union_ranges,
)
from templatefix.render import render_with_spans

__all__ = [
    "END_AT_TOKEN_ZERO",
    "END_UNMAPPED",
    "EOT_OUTSIDE",
    "IDS_DIFFER",
    "ISSUE_KINDS",
    "MISMATCH",
    "START_UNMAPPED",
    "STRADDLE",
    "OffsetIndex",
    "Offsets",
    "TokenIssue",
    "TokenRange",
    "check_token_masks",
    "diagnose",
    "eot_issues",
    "expected_token_ranges",
    "load_fast_tokenizer",
    "mask_from_ranges",
    "normalize_messages",
    "ranges_from_mask",
    "require_fast",
    "special_tokens_of",
    "split_probe",
    "transformers_token_ranges",
    "union_ranges",
]


# --------------------------------------------------------------------------- public check


def normalize_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Drop ``None`` values from each message, as ``apply_chat_template`` does before rendering.

    Example:
        >>> normalize_messages([{"role": "assistant", "content": "x", "tool_calls": None}])
        [{'role': 'assistant', 'content': 'x'}]
    """
    return [{key: value for key, value in message.items() if value is not None} for message in messages]


def split_probe(probe_or_messages: Any, template_kwargs: Mapping[str, Any]) -> tuple[list, dict[str, Any]]:
    """``(messages, kwargs)`` from a ``Probe`` (``.messages``, ``.kwargs``), a mapping with
    ``messages``, or a plain message list; explicit ``template_kwargs`` win."""
    if hasattr(probe_or_messages, "messages"):
        messages = probe_or_messages.messages
        kwargs = dict(getattr(probe_or_messages, "kwargs", None) or {})
    elif isinstance(probe_or_messages, Mapping):
        messages = probe_or_messages["messages"]
        kwargs = {k: v for k, v in probe_or_messages.items() if k != "messages"}
    else:
        messages, kwargs = probe_or_messages, {}
    kwargs.update(template_kwargs)
    return normalize_messages(messages), kwargs


def special_tokens_of(tokenizer: Any) -> dict[str, Any]:
    """The variables ``apply_chat_template`` gives templates for the tokenizer's special tokens."""
    return dict(tokenizer.special_tokens_map)


def check_token_masks(
    template: str,
    tokenizer: Any,
    probe_or_messages: Any,
    expected: Any = None,
    **template_kwargs: Any,
) -> list[TokenIssue]:
    """Compare transformers' ``assistant_masks`` with the spans, token by token (SPEC §5).

    Renders with markers (``render_with_spans``), asks ``tokenizer.apply_chat_template`` for its
    mask, encodes the rendered text with offsets, and returns one ``TokenIssue`` per disagreement
    (empty list: the mask is exactly the spans). ``expected`` (the oracle's ``ProbeExpectation``
    from ``templatefix.oracle.expected_turns``, or its turns) adds a check that each trained
    turn's end-of-turn text is trained.

    Raises:
        RenderError / TemplateRejected: the template failed on (or refused) the conversation.
        TemplatefixError: the tokenizer is not a fast tokenizer (offsets are needed).
    """
    require_fast(tokenizer)
    messages, kwargs = split_probe(probe_or_messages, template_kwargs)
    special_tokens = special_tokens_of(tokenizer)
    text, raw_spans = render_with_spans(template, messages, special_tokens=special_tokens, **kwargs)
    with clock.transformers_clock():
        out = tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            **kwargs,
        )
    actual_ids = list(out["input_ids"])
    actual_mask = list(out["assistant_masks"])
    encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    ids = list(encoding["input_ids"])
    offsets = [tuple(pair) for pair in encoding["offset_mapping"]]
    if ids != actual_ids:
        pairs = enumerate(zip(ids, actual_ids, strict=False))
        first = next((i for i, (a, b) in pairs if a != b), min(len(ids), len(actual_ids)))
        start, end = offsets[first] if first < len(offsets) else (len(text), len(text))
        return [TokenIssue(
            IDS_DIFFER, first, text[start:end], (start, end),
            f"apply_chat_template's token ids differ from encoding the rendered text from token {first} "
            f"({len(actual_ids)} vs {len(ids)} tokens): the two renders disagree, so no mask can be checked",
        )]
    issues = diagnose(text, raw_spans, offsets, actual_mask)
    if expected is not None:
        issues.extend(eot_issues(text, offsets, actual_mask, expected))
    return issues


# --------------------------------------------------------------------------- tokenizers


def require_fast(tokenizer: Any) -> None:
    """Raise a one-line error unless ``tokenizer`` is a fast (Rust) tokenizer with offsets."""
    from templatefix.errors import TemplatefixError

    if not getattr(tokenizer, "is_fast", False):
        raise TemplatefixError(
            f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer: token offsets are needed "
            f"(provide a tokenizer.json)"
        )


def load_fast_tokenizer(path: str | Path) -> Any:
    """Load a tokenizer (a local directory, or a Hub id such as ``Qwen/Qwen3-8B``) with
    ``AutoTokenizer``; one-line errors if missing or slow.

    Example:
        >>> load_fast_tokenizer("/nonexistent")  # doctest: +SKIP
        SourceError: tokenizer directory not found: /nonexistent
    """
    directory = Path(path)
    is_hub_id = not directory.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) is not None
    if not directory.is_dir() and not is_hub_id:
        raise SourceError(f"tokenizer directory not found: {path} (give a local tokenizer directory)")
    from transformers import AutoTokenizer

    try:
        # A Hub id goes through huggingface_hub (HF_TOKEN, HF_ENDPOINT, offline mode honoured).
        tokenizer = AutoTokenizer.from_pretrained(str(path) if is_hub_id else str(directory))
    except Exception as error:  # noqa: BLE001 - any load failure is a bad source
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SourceError(f"cannot load tokenizer from {path}: {message}") from None
    require_fast(tokenizer)
    return tokenizer
