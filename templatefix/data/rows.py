"""Dataset rows: reading a conversation the way TRL's ``SFTTrainer`` does, splitting it into one
example per assistant turn, and turning column batches (``datasets``, Ray Data) into rows.

Example:
    >>> rows_of_batch({"messages": [[{"role": "user", "content": "a"}]], "id": [7]})
    [{'messages': [{'role': 'user', 'content': 'a'}], 'id': 7}]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from templatefix.errors import TemplatefixError
from templatefix.tokens import normalize_messages

#: Columns that hold the conversation (the rest is carried along by ``expand_row``).
CONVERSATION_COLUMNS = ("messages", "prompt", "completion")


class RowError(TemplatefixError):
    """A row has no usable conversation."""


def conversation_of(row: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(messages, template kwargs)`` of a dataset row, the way TRL's SFTTrainer reads it:
    ``messages`` (or conversational ``prompt`` + ``completion``), ``tools`` (a list or a JSON
    string) and ``chat_template_kwargs``.

    Raises:
        RowError: the row holds no conversation (the message says what is missing).

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


def parse_row(row: Any) -> Any:
    """A row as a mapping: JSON lines (``str``) are parsed.

    Raises:
        RowError: the line is not valid JSON.
    """
    if isinstance(row, str):
        try:
            return json.loads(row)
        except json.JSONDecodeError as error:
            raise RowError(f"invalid JSON: {error.msg} at column {error.colno}") from None
    return row


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


def expand_row(row: Mapping[str, Any], messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """SPEC §3's exact alternative: one prompt/completion example per assistant turn.

    Each keeps the messages before the turn as ``prompt`` and the turn as ``completion``, so TRL
    trains only that turn, rendered exactly as generated. Every other column of the row
    (``tools``, ``chat_template_kwargs``, ids...) is repeated in each example. A first message
    that is an assistant turn has no prompt and is skipped.

    Example:
        >>> [len(r["prompt"]) for r in expand_row({}, [{"role": "user", "content": "a"},
        ...     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
        ...     {"role": "assistant", "content": "d"}])]
        [1, 3]
    """
    carried = {key: value for key, value in row.items() if key not in CONVERSATION_COLUMNS}
    rows = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or index == 0:
            continue
        rows.append({"prompt": list(messages[:index]), "completion": [message], **carried})
    return rows


# --------------------------------------------------------------------------- column batches


def plain(value: Any) -> Any:
    """Python lists, dicts and scalars from what a batch holds (numpy arrays from Ray Data's
    ``numpy`` batches, numpy scalars, nested).

    Example:
        >>> import numpy as np
        >>> plain({"a": np.array([np.int64(1), 2]), "b": (np.float32(0.5),)})
        {'a': [1, 2], 'b': [0.5]}
    """
    if isinstance(value, (str, bytes, bool, int, float, type(None))):
        return value
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, pyarrow scalars' lists
    if callable(tolist):
        converted = tolist()
        return converted if isinstance(converted, (str, bytes, bool, int, float)) else plain(converted)
    return value


def batch_size(batch: Any) -> int:
    """Number of rows in a column batch (a mapping of columns, or a pandas ``DataFrame``)."""
    if hasattr(batch, "shape") and hasattr(batch, "columns"):
        return int(batch.shape[0])
    for column in batch.values():
        return len(column)
    return 0


def columns_of(batch: Any) -> list[str]:
    """Column names of a batch (mapping keys, or a ``DataFrame``'s columns)."""
    return [str(name) for name in (batch.columns if hasattr(batch, "columns") else batch.keys())]


def rows_of_batch(batch: Any, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows (plain Python) of a column batch: ``datasets``' batches, Ray Data's ``numpy`` or
    ``pandas`` batches, or a plain ``dict`` of lists. ``columns`` limits which are read.

    Example:
        >>> rows_of_batch({"a": [1, 2], "b": ["x", "y"]}, ["a"])
        [{'a': 1}, {'a': 2}]
    """
    names = [name for name in columns_of(batch) if columns is None or name in columns]
    values = {name: list(batch[name]) for name in names}
    return [{name: plain(values[name][i]) for name in names} for i in range(batch_size(batch))]
