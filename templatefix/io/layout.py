"""Where a model repo keeps its chat templates, read and written back byte-exact.

Inside a model directory transformers looks for templates in four places, and so do we:

- ``chat_template.jinja``: the default template;
- ``additional_chat_templates/<name>.jinja``: named templates;
- the ``chat_template`` key of ``tokenizer_config.json``: a string, or a list of
  ``{"name": ..., "template": ...}``; transformers ignores it when either of the files above exists;
- a processor's legacy ``chat_template.json``: ``{"chat_template": ...}``.

Files are read byte-exact (``newline=""``: CRLF stays CRLF). Written back, a template from
``chat_template.jinja`` goes to ``chat_template.jinja``; one from ``tokenizer_config.json`` goes
back into that file's ``chat_template`` value, and only that value's bytes change (the rest of the
JSON, its key order, indentation and escapes are kept).

Example:
    >>> entry = TemplateEntry("default", "{{ x }}", "chat_template.jinja", "chat_template_jinja")
    >>> files = patched_files(TemplateSet([entry], {"chat_template.jinja": b"{{ x }}"}),
    ...                       {"chat_template.jinja": "{% generation %}{{ x }}{% endgeneration %}"})
    >>> files["chat_template.jinja"]
    b'{% generation %}{{ x }}{% endgeneration %}'
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from templatefix.errors import OutputError, SourceError

#: The default template file (transformers' ``CHAT_TEMPLATE_FILE``).
CHAT_TEMPLATE_FILE = "chat_template.jinja"
#: Folder of named templates (transformers' ``CHAT_TEMPLATE_DIR``).
CHAT_TEMPLATE_DIR = "additional_chat_templates"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
#: A processor's legacy template file (transformers' ``LEGACY_PROCESSOR_CHAT_TEMPLATE_FILE``).
PROCESSOR_TEMPLATE_FILE = "chat_template.json"

#: ``allow_patterns`` for ``snapshot_download``: every file that can hold a chat template.
TEMPLATE_PATTERNS: tuple[str, ...] = (
    CHAT_TEMPLATE_FILE,
    f"{CHAT_TEMPLATE_DIR}/*.jinja",
    TOKENIZER_CONFIG_FILE,
    PROCESSOR_TEMPLATE_FILE,
)

LayoutKind = Literal[
    "chat_template_jinja",  # <root>/chat_template.jinja
    "additional_jinja",  # <root>/additional_chat_templates/<name>.jinja
    "tokenizer_config",  # tokenizer_config.json, "chat_template": "<string>"
    "tokenizer_config_list",  # tokenizer_config.json, "chat_template": [{"name", "template"}]
    "processor_json",  # chat_template.json, "chat_template": "<string>" (or a list)
    "jinja_file",  # a standalone .jinja file given as SOURCE
]


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


# ---- writing back ------------------------------------------------------------------------


def patched_files(templates: TemplateSet, patched: Mapping[str, str]) -> dict[str, bytes]:
    """New bytes for every file of ``templates``, with ``patched`` (``entry.label -> text``) applied.

    Files whose templates are unchanged come back byte-identical.
    """
    out = dict(templates.files)
    by_file: dict[str, list[TemplateEntry]] = {}
    for entry in templates.entries:
        by_file.setdefault(entry.path, []).append(entry)
    for path, entries in by_file.items():
        changes = {
            e.label: patched[e.label]
            for e in entries
            if e.label in patched and patched[e.label] != e.template
        }
        if not changes:
            continue
        if entries[0].kind in ("chat_template_jinja", "additional_jinja", "jinja_file"):
            out[path] = changes[entries[0].label].encode("utf-8")
        else:
            out[path] = _replace_json_templates(out[path], entries, changes)
    return out


def named_template_files(
    templates: TemplateSet, name: str, patched_default: str, *, force: bool = False
) -> dict[str, bytes]:
    """Files adding ``patched_default`` as the named template ``name``; the default stays untouched.

    Next to ``chat_template.jinja`` it becomes ``additional_chat_templates/<name>.jinja``; a
    template kept in ``tokenizer_config.json`` becomes a list ``[{"name": "default", ...},
    {"name": <name>, ...}]`` (or gains an entry).
    """
    if not name or "/" in name or name != name.strip() or name == "default":
        raise OutputError(f"--as-named {name!r}: give a plain name other than 'default', e.g. 'training'")
    default = templates.default
    if default is None:
        raise OutputError("--as-named: the source has no default template to copy")
    existing = {e.name: e for e in templates.entries if e.effective}
    if name in existing and existing[name].template != patched_default and not force:
        raise OutputError(
            f"--as-named {name}: a template named {name!r} already exists "
            f"({existing[name].label}); use --force to replace it"
        )
    if default.kind == "jinja_file":
        raise OutputError(
            "--as-named needs a model directory, a tokenizer_config.json or a Hub repo, "
            "not a lone .jinja file"
        )
    if default.kind == "processor_json":
        raise OutputError(
            "--as-named: transformers cannot load a legacy chat_template.json together with "
            f"{CHAT_TEMPLATE_DIR}/; convert it to {CHAT_TEMPLATE_FILE} first"
        )
    if default.kind in ("chat_template_jinja", "additional_jinja"):
        return {f"{CHAT_TEMPLATE_DIR}/{name}.jinja": patched_default.encode("utf-8")}
    raw = templates.files[default.path]
    entries = [e for e in templates.entries if e.path == default.path]
    items = [{"name": e.name, "template": e.template} for e in entries if e.name != name]
    items.append({"name": name, "template": patched_default})
    return {default.path: _replace_json_value(raw, "chat_template", items)}


def _replace_json_templates(
    raw: bytes, entries: Sequence[TemplateEntry], changes: Mapping[str, str]
) -> bytes:
    if entries[0].kind in ("tokenizer_config", "processor_json"):
        return _replace_json_value(raw, "chat_template", changes[entries[0].label])
    text = raw.decode("utf-8")
    data = json.loads(text)
    value = data["chat_template"]
    if isinstance(value, dict):
        new_value: Any = {k: changes.get(_label_for(entries, k), v) for k, v in value.items()}
    else:
        new_value = [
            {**item, "template": changes.get(_label_for(entries, item["name"]), item["template"])}
            for item in value
        ]
    return _replace_json_value(raw, "chat_template", new_value)


def _label_for(entries: Sequence[TemplateEntry], name: str) -> str:
    return next(e.label for e in entries if e.name == name)


def _replace_json_value(raw: bytes, key: str, value: Any) -> bytes:
    """``raw`` JSON with the top-level ``key``'s value replaced; every other byte is kept."""
    text = raw.decode("utf-8")
    start, end = json_member_span(text, key)
    old_literal = text[start:end]
    ensure_ascii = "\\u" in old_literal and not any(ord(c) > 127 for c in old_literal)
    line_start = text.rfind("\n", 0, start) + 1
    indent = len(text[line_start:start]) - len(text[line_start:start].lstrip(" "))
    step = _indent_step(text)
    if isinstance(value, str) or step is None:
        literal = json.dumps(value, ensure_ascii=ensure_ascii)
    else:
        literal = json.dumps(value, ensure_ascii=ensure_ascii, indent=step)
        literal = literal.replace("\n", "\n" + " " * indent)
    newline = "\r\n" if "\r\n" in text else "\n"
    literal = literal.replace("\n", newline) if newline != "\n" and not isinstance(value, str) else literal
    return (text[:start] + literal + text[end:]).encode("utf-8")


def json_member_span(text: str, key: str) -> tuple[int, int]:
    """Character range of the top-level ``key``'s value in the JSON object ``text``.

    Example:
        >>> json_member_span('{"a": 1, "chat_template": "x"}', "chat_template")
        (26, 29)
    """
    decoder = json.JSONDecoder()
    scanstring = json.decoder.scanstring  # type: ignore[attr-defined]
    i = _skip_ws(text, 0)
    if text[i : i + 1] != "{":
        raise OutputError("expected a JSON object")
    i += 1
    while True:
        i = _skip_ws(text, i)
        if text[i] == "}":
            break
        name, i = scanstring(text, i + 1)
        i = _skip_ws(text, i)
        i = _skip_ws(text, i + 1)  # past ':'
        _, end = decoder.raw_decode(text, i)
        if name == key:
            return i, end
        i = _skip_ws(text, end)
        if text[i] == ",":
            i += 1
    raise OutputError(f"no {key!r} in the JSON object")


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _indent_step(text: str) -> int | None:
    """The file's indentation step (spaces), or ``None`` for compact JSON."""
    for line in text.splitlines()[1:]:
        stripped = line.lstrip(" ")
        if stripped and len(line) > len(stripped):
            return len(line) - len(stripped)
    return None
