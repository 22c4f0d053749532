"""SOURCE, resolved and read: a Hub repo id, a model directory, a JSON config or a ``.jinja`` file.

This is the one template loader: ``patch``, ``check``, ``show`` and ``audit`` all read their
SOURCE through :func:`load_source` (or :func:`load_template` for the one template a command
renders). Where templates live inside a source is ``templatefix.io.layout``; the Hub side is
``templatefix.io.hub``.

Example:
    >>> from templatefix.io.sources import load_source
    >>> source = load_source("path/to/Qwen2.5-7B-Instruct")  # doctest: +SKIP
    >>> [(entry.label, entry.kind) for entry in source.templates]  # doctest: +SKIP
    [('tokenizer_config.json[chat_template]', 'tokenizer_config')]
    >>> source.templates.default.template[:30]  # doctest: +SKIP
    "{%- if tools %}\\n    {{- '<|im_st"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from templatefix.errors import SourceError
from templatefix.io.hub import Token
from templatefix.io.layout import (
    CHAT_TEMPLATE_DIR,
    CHAT_TEMPLATE_FILE,
    PROCESSOR_TEMPLATE_FILE,
    TOKENIZER_CONFIG_FILE,
    LayoutKind,
    TemplateEntry,
    TemplateSet,
    read_directory,
    read_files,
    read_text,
    template_files_in,
)

SourceKind = Literal["hub", "directory", "file"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class LoadedSource:
    """A SOURCE, resolved and read.

    Attributes:
        spec: the SOURCE as the user wrote it.
        kind: ``"hub"``, ``"directory"`` or ``"file"``.
        root: the local directory the entries' paths are relative to (for the Hub, the snapshot
            folder in the cache; never written to).
        templates: what was found.
        repo_id, revision, commit: for Hub sources, the repo, the requested revision and the
            commit it resolved to.
    """

    spec: str
    kind: SourceKind
    root: Path
    templates: TemplateSet
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None

    @property
    def is_local(self) -> bool:
        return self.kind != "hub"

    def describe(self) -> str:
        """One line naming the source, e.g. ``Qwen/Qwen2.5-7B-Instruct@a09a354``."""
        if self.kind == "hub":
            return f"{self.repo_id}@{(self.commit or self.revision or 'main')[:7]}"
        return self.spec

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
        }


def classify_source(spec: str) -> tuple[Literal["path", "hub"], str]:
    """Decide whether ``spec`` is a local path or a Hub repo id.

    An existing path always wins. Otherwise ``owner/name`` is a repo id. Anything else (including a
    path-looking string that does not exist) is a one-line ``SourceError``.

    Example:
        >>> classify_source("Qwen/Qwen2.5-7B-Instruct")
        ('hub', 'Qwen/Qwen2.5-7B-Instruct')
        >>> classify_source("no-such-thing.jinja")
        Traceback (most recent call last):
        ...
        templatefix.errors.SourceError: no-such-thing.jinja: no such file or directory
    """
    if not spec or not spec.strip():
        raise SourceError(
            "empty SOURCE: give a .jinja file, a model directory, a tokenizer_config.json "
            "or a Hub repo id like owner/name"
        )
    path = Path(spec).expanduser()
    if path.exists():
        return "path", str(path)
    looks_like_path = (
        spec.startswith((".", "/", "~", "\\"))
        or spec.endswith((".jinja", ".json", "/"))
        or "\\" in spec
        or spec.count("/") > 1
    )
    if not looks_like_path and _REPO_ID.match(spec) and ".." not in spec and "--" not in spec:
        return "hub", spec
    if looks_like_path or "/" in spec:
        raise SourceError(f"{spec}: no such file or directory")
    raise SourceError(f"{spec}: not a file, a directory, or a Hub repo id (owner/name)")


def load_source(spec: str, *, revision: str | None = None, token: Token = None) -> LoadedSource:
    """Resolve and read SOURCE: the one loader behind ``patch``, ``check``, ``show`` and ``audit``.

    Hub ids are fetched through ``templatefix.io.hub`` (``snapshot_download`` of the template files
    only; huggingface_hub reads ``HF_TOKEN``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the cache
    settings itself).

    Args:
        spec: a ``.jinja`` file, ``tokenizer_config.json``/``chat_template.json``, a model
            directory, or a Hub repo id.
        revision: a Hub branch, tag or commit (Hub ids only).
        token: a Hub token; ``None`` lets huggingface_hub find one.

    Raises:
        SourceError: the source does not exist, cannot be read, or holds no chat template.
    """
    kind, value = classify_source(spec)
    if kind == "hub":
        return load_hub(value, revision=revision, token=token, spec=spec)
    if revision is not None:
        raise SourceError(f"--revision applies to Hub repo ids, not to the local path {spec}")
    return load_local(Path(value), spec=spec)


def load_local(path: Path, *, spec: str | None = None) -> LoadedSource:
    """Read a local directory, ``tokenizer_config.json``, ``chat_template.json`` or ``.jinja`` file."""
    spec = spec if spec is not None else str(path)
    if path.is_dir():
        templates = read_directory(path)
        if not templates.entries:
            raise SourceError(
                f"{spec}: no chat template found (looked for {CHAT_TEMPLATE_FILE}, "
                f"{CHAT_TEMPLATE_DIR}/*.jinja, the chat_template key of {TOKENIZER_CONFIG_FILE}, "
                f"and {PROCESSOR_TEMPLATE_FILE})"
            )
        return LoadedSource(spec, "directory", path, templates)
    if not path.is_file():
        raise SourceError(f"{spec}: not a regular file or directory")
    name = path.name
    if name.endswith(".json"):
        kind: LayoutKind = "processor_json" if name == PROCESSOR_TEMPLATE_FILE else "tokenizer_config"
        templates = read_files(path.parent, [name], json_kind=kind)
        if not templates.entries:
            raise SourceError(f"{spec}: has no chat_template key")
    else:
        text = read_text(path)
        templates = TemplateSet(
            [TemplateEntry("default", text, name, "jinja_file")], {name: path.read_bytes()}
        )
    return LoadedSource(spec, "file", path.parent, templates)


def load_hub(
    repo_id: str, *, revision: str | None = None, token: Token = None, spec: str | None = None
) -> LoadedSource:
    """Download the template files of ``repo_id`` at ``revision`` (never weights) and read them.

    Raises:
        SourceError: repo/revision not found, no access, gated, network failure, offline and not
            cached, or no chat template in the repo (one line each).
    """
    from templatefix.io.hub import download_templates

    where = f"{repo_id}@{revision}" if revision else repo_id
    snapshot = download_templates(repo_id, revision=revision, token=token)
    names = template_files_in(snapshot.files)
    if not names:
        raise SourceError(
            f"{where}: no chat template in the repo (no {CHAT_TEMPLATE_FILE}, "
            f"{CHAT_TEMPLATE_DIR}/*.jinja, {TOKENIZER_CONFIG_FILE} or {PROCESSOR_TEMPLATE_FILE})"
        )
    templates = read_files(snapshot.root, names)
    if not templates.entries:
        raise SourceError(f"{where}: no chat template ({TOKENIZER_CONFIG_FILE} has no chat_template key)")
    return LoadedSource(
        spec or repo_id,
        "hub",
        snapshot.root,
        templates,
        repo_id=repo_id,
        revision=revision,
        commit=snapshot.commit,
    )


@dataclass(frozen=True)
class LoadedTemplate:
    """The one template a command renders (``show``, ``audit``), and where it came from.

    Attributes:
        text: the template.
        entry: its place in the source.
        source: the source it was read from.
    """

    text: str
    entry: TemplateEntry
    source: LoadedSource

    def describe(self) -> str:
        """``<source> (<label>)``, e.g. ``./Qwen3-8B (tokenizer_config.json[chat_template])``."""
        return f"{self.source.describe()} ({self.entry.label})"


def load_template(spec: str, *, revision: str | None = None, name: str | None = None) -> LoadedTemplate:
    """The template transformers would use from SOURCE: the default, or the named one ``name``.

    Without a default (only named templates) the first effective one is used.

    Raises:
        SourceError: as :func:`load_source`; or no template named ``name``.
    """
    source = load_source(spec, revision=revision)
    effective = [entry for entry in source.templates if entry.effective]
    if name is not None:
        entry = next((e for e in effective if e.name == name), None)
        if entry is None:
            names = ", ".join(sorted({e.name for e in effective})) or "none"
            raise SourceError(f"{spec}: no template named {name!r} (it has: {names})")
    else:
        entry = source.templates.default or (effective[0] if effective else None)
        if entry is None:
            raise SourceError(f"{spec}: no chat template found")
    return LoadedTemplate(entry.template, entry, source)
