"""Writing files: atomically, and never over something different without asking.

Every file templatefix writes goes through :func:`atomic_stream`: a temporary file in the target's
folder, flushed and synced, then ``os.replace``d over the target, so a reader sees the old file or
the new one, never half of one, and an interrupted write leaves the target as it was.
:func:`plan_writes` checks every target before the first write and refuses to replace a file whose
content differs unless forced.

Example:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> [a.status for a in write_files(root, {"a/b.txt": b"hi"})]
    ['created']
    >>> [a.status for a in write_files(root, {"a/b.txt": b"hi"})]
    ['unchanged']
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from templatefix.errors import OutputError

#: The report ``patch -o DIR`` writes next to the patched files.
REPORT_FILE = "templatefix-report.json"

@dataclass(frozen=True)
class WriteAction:
    """One file written (or left as it was)."""

    path: Path
    status: str  # "created", "replaced", "unchanged", "backed-up"

    def to_json(self) -> dict[str, str]:
        return {"path": str(self.path), "status": self.status}


def plan_writes(
    root: Path, files: Mapping[str, bytes], *, force: bool = False
) -> list[tuple[Path, bytes, str]]:
    """Check every target before anything is written; refuse to clobber a different file.

    Returns ``(path, data, status)`` for each file. Raises ``OutputError`` naming the first conflict.
    """
    plans = []
    conflicts = []
    for relative, data in sorted(files.items()):
        target = root / relative
        if target.is_dir():
            raise OutputError(f"{target} is a directory")
        if target.exists():
            if target.read_bytes() == data:
                plans.append((target, data, "unchanged"))
                continue
            if not force:
                conflicts.append(target)
            plans.append((target, data, "replaced"))
        else:
            plans.append((target, data, "created"))
    if conflicts:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise OutputError(
            f"{conflicts[0]} exists and differs{more}; nothing written (use --force to overwrite)"
        )
    return plans


def write_files(root: Path, files: Mapping[str, bytes], *, force: bool = False) -> list[WriteAction]:
    """Write ``files`` (relative path -> bytes) under ``root`` atomically, all checks first."""
    plans = plan_writes(root, files, force=force)
    actions = []
    for target, data, status in plans:
        if status != "unchanged":
            atomic_write(target, data)
        actions.append(WriteAction(target, status))
    return actions


def write_in_place(
    root: Path, files: Mapping[str, bytes], *, backup: bool = True, force: bool = False
) -> list[WriteAction]:
    """Replace changed files under ``root``; first keep each original as ``<file>.bak``.

    An existing different ``.bak`` is never overwritten without ``force``.
    """
    changed = {
        rel: data
        for rel, data in files.items()
        if not (root / rel).exists() or (root / rel).read_bytes() != data
    }
    actions: list[WriteAction] = []
    if backup:
        backups = {}
        for relative in changed:
            target = root / relative
            if target.exists():
                backups[relative + ".bak"] = target.read_bytes()
        plans = plan_writes(root, backups, force=force)
        for target, data, status in plans:
            if status != "unchanged":
                atomic_write(target, data)
            actions.append(WriteAction(target, "backed-up"))
    for relative, data in sorted(changed.items()):
        target = root / relative
        status = "replaced" if target.exists() else "created"
        atomic_write(target, data)
        actions.append(WriteAction(target, status))
    return actions


@contextmanager
def atomic_stream(path: Path, *, text: bool = True, require_folder: bool = False) -> Iterator[IO[Any]]:
    """A stream whose content replaces ``path`` when the block ends without an error.

    The temporary file sits next to ``path`` (same file system, so ``os.replace`` is atomic); it
    keeps ``path``'s permissions, or gets ``0o644`` for a new file. On an error the temporary
    file is removed and ``path`` is untouched.

    Args:
        path: the file to write.
        text: a UTF-8 text stream (``newline=""``: line endings written as given), else bytes.
        require_folder: refuse with ``OutputError`` when the folder does not exist, instead of
            creating it.

    Raises:
        OutputError: ``require_folder`` and the folder is missing.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_stream(target) as stream:
        ...     _ = stream.write("line\\n")
        >>> target.read_text()
        'line\\n'
    """
    folder = path.resolve().parent
    if not folder.is_dir():
        if require_folder:
            raise OutputError(f"{path}: directory {folder} does not exist")
        folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        opened: IO[Any]
        if text:
            opened = os.fdopen(handle, "w", encoding="utf-8", newline="")
        else:
            opened = os.fdopen(handle, "wb")
        with opened as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes | str, *, require_folder: bool = False) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; see :func:`atomic_stream`."""
    with atomic_stream(path, text=isinstance(data, str), require_folder=require_folder) as stream:
        stream.write(data)


def report_bytes(data: Mapping[str, Any]) -> bytes:
    """``data`` as indented UTF-8 JSON with a final newline (``templatefix-report.json``)."""
    return (json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")
