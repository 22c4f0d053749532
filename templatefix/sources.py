"""Where chat templates live, read exactly as transformers reads them.

A SOURCE is a Hub repo id (``owner/name``), a local model directory, a ``tokenizer_config.json``
(or a processor's ``chat_template.json``), or a single ``.jinja`` file. Inside a model directory
transformers looks for templates in four places, and so do we:

- ``chat_template.jinja``: the default template;
- ``additional_chat_templates/<name>.jinja``: named templates;
- the ``chat_template`` key of ``tokenizer_config.json``: a string, or a list of
  ``{"name": ..., "template": ...}``; transformers ignores it when either of the files above exists;
- a processor's legacy ``chat_template.json``: ``{"chat_template": ...}``.

Files are read byte-exact (``newline=""``: CRLF stays CRLF), so a patch never changes a byte the
user did not ask to change.

Example:
    >>> from templatefix.sources import load_source
    >>> source = load_source("path/to/Qwen2.5-7B-Instruct")  # doctest: +SKIP
    >>> [(entry.label, entry.kind) for entry in source.templates]  # doctest: +SKIP
    [('tokenizer_config.json[chat_template]', 'tokenizer_config')]
    >>> source.templates.default.template[:30]  # doctest: +SKIP
    "{%- if tools %}\\n    {{- '<|im_st"
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from templatefix.errors import SourceError

#: The default template file (transformers' ``CHAT_TEMPLATE_FILE``).
CHAT_TEMPLATE_FILE = "chat_template.jinja"
#: Folder of named templates (transformers' ``CHAT_TEMPLATE_DIR``).
CHAT_TEMPLATE_DIR = "additional_chat_templates"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
#: A processor's legacy template file (transformers' ``LEGACY_PROCESSOR_CHAT_TEMPLATE_FILE``).
PROCESSOR_TEMPLATE_FILE = "chat_template.json"

LayoutKind = Literal[
    "chat_template_jinja",  # <root>/chat_template.jinja
    "additional_jinja",  # <root>/additional_chat_templates/<name>.jinja
    "tokenizer_config",  # tokenizer_config.json, "chat_template": "<string>"
    "tokenizer_config_list",  # tokenizer_config.json, "chat_template": [{"name", "template"}]
    "processor_json",  # chat_template.json, "chat_template": "<string>" (or a list)
    "jinja_file",  # a standalone .jinja file given as SOURCE
]
SourceKind = Literal["hub", "directory", "file"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class TemplateEntry:
    """One named template and exactly where it came from.

    Attributes:
        name: ``"default"`` or the template's name (as in ``tokenizer.chat_template[name]``).
        template: the template text, byte-exact.
        path: the file holding it, relative to the source root (posix).
        kind: the layout kind, which says how to write it back.
        effective: ``False`` when transformers ignores this copy (a ``tokenizer_config.json``
            template shadowed by ``chat_template.jinja`` or ``additional_chat_templates/``).
    """

    name: str
    template: str
    path: str
    kind: LayoutKind
    effective: bool = True

    @property
    def label(self) -> str:
        """A unique, human-readable place: ``chat_template.jinja``, ``tokenizer_config.json[chat_template]``,
        ``tokenizer_config.json[chat_template][tool_use]``."""
        if self.kind in ("tokenizer_config", "processor_json"):
            return f"{self.path}[chat_template]"
        if self.kind == "tokenizer_config_list":
            return f"{self.path}[chat_template][{self.name}]"
        return self.path


@dataclass
class TemplateSet:
    """Every template a source holds, plus the raw bytes of the files holding them.

    Attributes:
        entries: the templates, in a stable order (jinja files first, then JSON ones).
        files: ``relative path -> raw bytes`` for every file an entry came from.
        special_tokens: ``bos_token``/``eos_token``/... from ``tokenizer_config.json`` when present
            (templates see them as variables; used to render examples).
    """

    entries: list[TemplateEntry] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    special_tokens: dict[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[TemplateEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def default(self) -> TemplateEntry | None:
        """The template transformers uses by default, or ``None`` if there is none."""
        named = [e for e in self.entries if e.effective and e.name == "default"]
        return named[0] if named else None

    def as_transformers_sees_it(self) -> str | dict[str, str] | None:
        """``tokenizer.chat_template`` after ``from_pretrained``: a string, or a dict of named ones."""
        templates = {e.name: e.template for e in self.entries if e.effective}
        if not templates:
            return None
        if list(templates) == ["default"]:
            return templates["default"]
        return templates


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


def load_source(spec: str, *, revision: str | None = None, token: str | None = None) -> LoadedSource:
    """Resolve and read SOURCE. Hub ids are fetched (small files only) through ``templatefix.hub``.

    Raises:
        SourceError: the source does not exist, cannot be read, or holds no chat template.
    """
    kind, value = classify_source(spec)
    if kind == "hub":
        from templatefix.hub import fetch_source

        return fetch_source(value, revision=revision, token=token, spec=spec)
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


def template_files_in(names: list[str]) -> list[str]:
    """The names among ``names`` (repo-relative, posix) that can hold chat templates.

    Example:
        >>> template_files_in(["config.json", "model.safetensors", "tokenizer_config.json",
        ...                    "additional_chat_templates/tool_use.jinja", "chat_template.jinja"])
        ['chat_template.jinja', 'additional_chat_templates/tool_use.jinja', 'tokenizer_config.json']
    """
    wanted = []
    for name in names:
        if name in (CHAT_TEMPLATE_FILE, TOKENIZER_CONFIG_FILE, PROCESSOR_TEMPLATE_FILE) or _is_additional(
            name
        ):
            wanted.append(name)
    return sorted(wanted, key=_file_order)


def read_directory(root: Path) -> TemplateSet:
    """Every template under ``root``, where transformers looks for them."""
    names = [
        name
        for name in (CHAT_TEMPLATE_FILE, TOKENIZER_CONFIG_FILE, PROCESSOR_TEMPLATE_FILE)
        if (root / name).is_file()
    ]
    extra = root / CHAT_TEMPLATE_DIR
    if extra.is_dir():
        names += [f"{CHAT_TEMPLATE_DIR}/{p.name}" for p in sorted(extra.glob("*.jinja")) if p.is_file()]
    return read_files(root, names)


def read_files(root: Path, names: list[str], *, json_kind: LayoutKind | None = None) -> TemplateSet:
    """Read the template-bearing files ``names`` (relative to ``root``) into a ``TemplateSet``.

    ``json_kind`` forces how a lone JSON file is treated (``tokenizer_config`` or ``processor_json``);
    by default the file name decides.
    """
    result = TemplateSet()
    names = sorted(names, key=_file_order)
    has_jinja = any(n == CHAT_TEMPLATE_FILE or _is_additional(n) for n in names)
    for name in names:
        path = root / name
        text = read_text(path)
        if name == CHAT_TEMPLATE_FILE:
            result.entries.append(TemplateEntry("default", text, name, "chat_template_jinja"))
        elif _is_additional(name):
            template_name = name[len(CHAT_TEMPLATE_DIR) + 1 : -len(".jinja")]
            result.entries.append(TemplateEntry(template_name, text, name, "additional_jinja"))
        elif name.endswith(".json"):
            kind = json_kind or (
                "processor_json" if Path(name).name == PROCESSOR_TEMPLATE_FILE else "tokenizer_config"
            )
            data = parse_json(text, name)
            if kind == "tokenizer_config":
                result.special_tokens.update(special_tokens_from_config(data))
            entries = json_entries(data, name, kind, effective=not (has_jinja and kind == "tokenizer_config"))
            if not entries:
                continue
            result.entries.extend(entries)
        else:  # pragma: no cover - callers only pass the names above
            continue
        result.files[name] = path.read_bytes()
    return result


def json_entries(data: Any, name: str, kind: LayoutKind, *, effective: bool = True) -> list[TemplateEntry]:
    """Templates held by a parsed ``tokenizer_config.json``/``chat_template.json``."""
    if not isinstance(data, dict) or data.get("chat_template") is None:
        return []
    value = data["chat_template"]
    if isinstance(value, str):
        return [TemplateEntry("default", value, name, kind, effective)]
    if isinstance(value, list) and all(
        isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("template"), str)
        for item in value
    ):
        return [
            TemplateEntry(item["name"], item["template"], name, "tokenizer_config_list", effective)
            for item in value
        ]
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return [TemplateEntry(k, v, name, "tokenizer_config_list", effective) for k, v in value.items()]
    raise SourceError(
        f"{name}: chat_template must be a string or a list of {{name, template}} objects, "
        f"not {type(value).__name__}"
    )


def special_tokens_from_config(data: Any) -> dict[str, str]:
    """``bos_token``/``eos_token``/``unk_token``/``pad_token`` as strings (``AddedToken`` dicts unwrapped)."""
    tokens: dict[str, str] = {}
    if not isinstance(data, Mapping):
        return tokens
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = data.get(key)
        if isinstance(value, Mapping):
            value = value.get("content")
        if isinstance(value, str):
            tokens[key] = value
    return tokens


def read_text(path: Path) -> str:
    """UTF-8 text with line endings untouched; one-line ``SourceError`` otherwise."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return handle.read()
    except UnicodeDecodeError as error:
        raise SourceError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise SourceError(f"{path}: cannot read ({error.strerror or error})") from None


def parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SourceError(
            f"{name}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None


def _is_additional(name: str) -> bool:
    parts = name.split("/")
    return (
        len(parts) == 2
        and parts[0] == CHAT_TEMPLATE_DIR
        and parts[1].endswith(".jinja")
        and len(parts[1]) > 6
    )


def _file_order(name: str) -> tuple[int, str]:
    if name == CHAT_TEMPLATE_FILE:
        return (0, name)
    if _is_additional(name):
        return (1, name)
    if name == PROCESSOR_TEMPLATE_FILE:
        return (3, name)
    return (2, name)
