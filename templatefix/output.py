"""What ``templatefix patch`` produces: patched files in the input's layout, atomic writes, PR text.

The patched files keep the input's layout: a template from ``chat_template.jinja`` goes back to
``chat_template.jinja``; one from ``tokenizer_config.json`` goes back into that file's
``chat_template`` value, and only that value's bytes change (the rest of the JSON, its key order,
indentation and escapes are kept). Writes are atomic (a temporary file in the same folder, then
``os.replace``) and never overwrite a different existing file unless asked.

Example:
    >>> from templatefix.sources import TemplateEntry, TemplateSet
    >>> entry = TemplateEntry("default", "{{ x }}", "chat_template.jinja", "chat_template_jinja")
    >>> files = patched_files(TemplateSet([entry], {"chat_template.jinja": b"{{ x }}"}),
    ...                       {"chat_template.jinja": "{% generation %}{{ x }}{% endgeneration %}"})
    >>> files["chat_template.jinja"]
    b'{% generation %}{{ x }}{% endgeneration %}'
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from templatefix.errors import TemplatefixError
from templatefix.sources import (
    CHAT_TEMPLATE_DIR,
    CHAT_TEMPLATE_FILE,
    TemplateEntry,
    TemplateSet,
)

REPORT_FILE = "templatefix-report.json"
TRAINED_OPEN, TRAINED_CLOSE = "«", "»"


class OutputError(TemplatefixError):
    """An output cannot be written as asked (it would overwrite something, or the layout forbids it)."""


# ---------------------------------------------------------------------------------------------
# Patched file contents
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


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


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(handle.name, path.stat().st_mode & 0o777)
        else:
            os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def report_bytes(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Pull request text
# ---------------------------------------------------------------------------------------------

#: Small conversations used to show what gets trained (first one the template accepts wins).
EXAMPLE_CONVERSATIONS: tuple[tuple[dict[str, str], ...], ...] = (
    (
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "3 + 3 = 6."},
    ),
    (
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
    ),
)


def trained_text_example(template: str, special_tokens: Mapping[str, str] | None = None) -> str | None:
    """Render a small conversation with ``template``; trained text is wrapped in ``«…»``.

    Returns ``None`` if the template accepts none of ``EXAMPLE_CONVERSATIONS``.

    Example:
        >>> trained_text_example("{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}"
        ...                      "{% generation %}{{ m.content }}{% endgeneration %}{% else %}"
        ...                      "{{ m.content }}{% endif %} | {% endfor %}")[-60:]
        '«2 + 2 = 4.» | user: And 3 + 3? | assistant: «3 + 3 = 6.» | '
    """
    from templatefix.errors import RenderError
    from templatefix.render import merge_spans, render_with_spans

    tokens = {**_default_tokens(), **(special_tokens or {})}
    for conversation in EXAMPLE_CONVERSATIONS:
        try:
            text, spans = render_with_spans(template, list(conversation), special_tokens=tokens)
        except (RenderError, TemplatefixError):
            continue
        pieces, last = [], 0
        for start, end in merge_spans(spans):
            pieces += [text[last:start], TRAINED_OPEN, text[start:end], TRAINED_CLOSE]
            last = end
        pieces.append(text[last:])
        return "".join(pieces)
    return None


def _default_tokens() -> dict[str, str]:
    from templatefix.render import DEFAULT_SPECIAL_TOKENS

    return dict(DEFAULT_SPECIAL_TOKENS)


@dataclass(frozen=True)
class TemplateOutcome:
    """What happened to one template, as the PR text and the CLI report it."""

    label: str
    name: str
    verified: bool
    changed: bool
    reasons: tuple[str, ...]
    diff: str
    patched: str


def pull_request_text(
    outcomes: Sequence[TemplateOutcome],
    committed: Sequence[str],
    *,
    source: str,
    policy: Mapping[str, str],
    special_tokens: Mapping[str, str] | None = None,
    as_named: str | None = None,
    version: str = "",
) -> tuple[str, str]:
    """``(title, description)`` for the maintainers of the repo receiving the patch.

    The title is the commit message; the description says what changed and why, the verification
    summary, the trained text of a small example (``«…»``), and the diff. Deterministic: the same
    inputs give the same text (``--dry-run`` shows exactly what is pushed).
    """
    changed = [o for o in outcomes if o.changed]
    if as_named:
        title = (
            f"Add a '{as_named}' chat template with {{% generation %}} markers for assistant-only training"
        )
    else:
        title = "Add {% generation %} markers to the chat template for assistant-only training"
    all_verified = all(o.verified for o in outcomes)
    lines = []
    if as_named:
        lines.append(
            f"This PR adds a chat template named `{as_named}`: the default template with "
            "`{% generation %}` / `{% endgeneration %}` around the text the model generates. "
            "The default template is unchanged. Select it with "
            f'`tokenizer.apply_chat_template(..., chat_template="{as_named}")`.'
        )
    else:
        lines.append(
            "This PR wraps the text the model generates in `{% generation %}` / `{% endgeneration %}` "
            "in the chat template, so that assistant-only training works out of the box."
        )
    lines += [
        "",
        "**Why.** `tokenizer.apply_chat_template(..., return_dict=True, return_assistant_tokens_mask=True)` "
        "and TRL's `SFTConfig(assistant_only_loss=True)` find the assistant's tokens through these markers. "
        "Without them the mask is all zeros (TRL refuses to train); with them it is 1 exactly on what the "
        "model generates: its reply, reasoning and tool calls, and the end-of-turn token it must learn to "
        "stop on. Role headers and the generation prompt stay untrained.",
        "",
        "**Nothing else changes.** The markers are invisible: for every conversation and template argument "
        "checked, the rendered text is byte-for-byte the same as before, so inference and existing "
        "pipelines are unaffected.",
        "",
        "### Files",
        *[f"- `{path}`" for path in committed],
        "",
        "### Verification",
        "",
        "| Template | Where | Result |",
        "|---|---|---|",
    ]
    for outcome in outcomes:
        verdict = "verified" if outcome.verified else "NOT verified"
        if not outcome.changed and outcome.verified:
            verdict = "verified (already correct, unchanged)"
        lines.append(f"| {outcome.name} | `{outcome.label}` | {verdict} |")
    lines += [
        "",
        "Verified means: the patched template renders exactly like the original on a set of probe "
        "conversations (one turn, system prompt, several turns, tool calls and results, reasoning, "
        "list-of-parts content, empty replies, and every flag the template reads), and each assistant "
        "turn's trained span starts right after the generation prompt and ends after the end-of-turn text.",
        "",
        "Policy: " + ", ".join(f"{k}={v}" for k, v in policy.items()) + ".",
    ]
    if not all_verified:
        lines += [
            "",
            "> [!WARNING]",
            "> Some templates could not be verified; they were pushed on request (`--force`). Reasons:",
        ]
        for outcome in outcomes:
            for reason in outcome.reasons if not outcome.verified else ():
                lines.append(f"> - `{outcome.label}`: {reason}")
    example_source = next(
        (o for o in changed if o.name in ("default", as_named)), changed[0] if changed else None
    )
    example = trained_text_example(example_source.patched, special_tokens) if example_source else None
    if example is not None:
        lines += [
            "",
            "### What gets trained",
            "",
            f"A small conversation rendered with the patched template; the text between "
            f"{TRAINED_OPEN} and {TRAINED_CLOSE} is what `assistant_masks` marks as trained:",
            "",
            *_fenced(example, "text"),
        ]
    diffs = [o.diff for o in changed if o.diff]
    if diffs:
        lines += [
            "",
            "### Diff",
            "",
            *_fenced("".join(d if d.endswith("\n") else d + "\n" for d in diffs), "diff"),
        ]
    lines += ["", f"<sub>Generated by templatefix{' ' + version if version else ''} from `{source}`.</sub>"]
    return title, "\n".join(lines) + "\n"


def _fenced(text: str, language: str) -> list[str]:
    fence = "```"
    while fence in text:
        fence += "`"
    return [fence + language, text.rstrip("\n"), fence]
