"""Rendering through transformers' public API, with the special tokens a tokenizer would pass.

``apply_chat_template`` passes the tokenizer's special tokens (``bos_token``, ``eos_token``...)
to the template as variables; without a tokenizer at hand these stand-ins are used. They are
the same strings templatefix uses, so renders compare, but they are written down here.

transformers' ``strftime_now`` formats ``datetime.now()`` of its module. While the judge renders,
that name is a ``datetime`` whose ``now()`` is one fixed moment, so a template that prints the
time renders the same text in every render the judge compares. (A function cannot be passed as a
template variable instead: transformers turns non-JSON values into placeholder strings.)

Example:
    >>> render_text("{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}",
    ...             [{"role": "user", "content": "hi"}], False, {})
    'hi</s>'
    >>> render_text("{{ strftime_now('%d %b %Y %H:%M:%S.%f') }}", [], False, {})
    '31 Dec 2025 23:59:58.987654'
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from transformers.utils import chat_template_utils  # noqa: E402
from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

SPECIAL_TOKENS: dict[str, str] = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
}

#: The one moment every render sees (microseconds included, so a clock template is tested).
MOMENT = datetime(2025, 12, 31, 23, 59, 58, 987654)


class _Moment(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return MOMENT if tz is None else MOMENT.astimezone(tz)


@contextmanager
def _fixed_clock() -> Iterator[None]:
    previous = getattr(chat_template_utils, "datetime", None)
    chat_template_utils.datetime = _Moment
    try:
        yield
    finally:
        chat_template_utils.datetime = previous


@dataclass(frozen=True)
class Rendered:
    """One render: its text and the union of its generation spans (sorted, disjoint, non-empty)."""

    text: str
    spans: tuple[tuple[int, int], ...]


def union(spans: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    """Touching or overlapping ranges merged, empty ones dropped.

    Example:
        >>> union([(5, 7), (0, 2), (2, 3), (4, 4)])
        ((0, 3), (5, 7))
    """
    merged: list[list[int]] = []
    for start, end in sorted((int(s), int(e)) for s, e in spans if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((s, e) for s, e in merged)


def _call(
    template: str, messages: Sequence[Mapping[str, Any]], prompt: bool, kwargs: Mapping[str, Any], spans: bool
) -> tuple[str, list[Any]]:
    arguments = dict(SPECIAL_TOKENS)
    arguments.update(kwargs)
    with _fixed_clock():
        rendered, indices = render_jinja_template(
            conversations=[[dict(m) for m in messages]],
            chat_template=template,
            return_assistant_tokens_mask=spans,
            add_generation_prompt=prompt,
            **arguments,
        )
    return rendered[0], (indices[0] if indices else [])


def render_text(
    template: str, messages: Sequence[Mapping[str, Any]], prompt: bool, kwargs: Mapping[str, Any]
) -> str:
    """The text ``apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt, **kwargs)``.

    Raises:
        Exception: whatever the template raises (the caller decides what a rejection means).
    """
    return _call(template, messages, prompt, kwargs, spans=False)[0]


def render_spans(
    template: str, messages: Sequence[Mapping[str, Any]], prompt: bool, kwargs: Mapping[str, Any]
) -> Rendered:
    """The text and the union of the ``{% generation %}`` spans transformers records.

    Raises:
        Exception: whatever the template raises.
    """
    text, indices = _call(template, messages, prompt, kwargs, spans=True)
    return Rendered(text, union(indices))
