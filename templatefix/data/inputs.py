"""Where audit rows come from: a JSONL file (raw lines) or a local ``datasets`` directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from templatefix.errors import SourceError


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
