"""Does a patched template still work in every inference engine that reads the original?

A model repo's default chat template is read by transformers and also by inference servers with
their own Jinja engines. :func:`check_engines` renders the original and the patched template on
the probe conversations (``templatefix.probes.probe_battery``, each with and without the
generation prompt) in every engine and compares the two renders within each engine:

- ``identical``: every render the engine gives for the original, it gives byte for byte for the
  patched template;
- ``differs``: both render, but not the same text (the first difference is named);
- ``fails``: the engine reads the original but errors on the patched template (the error);
- ``unreadable``: the engine cannot render the original either, so the patch changes nothing
  for it;
- ``not available``: the engine is not installed here (the note says how to install it).

Example:
    >>> from templatefix.engines import check_engines
    >>> original = "{% for m in messages %}{{ m.content }}{% endfor %}"
    >>> patched = ("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}"
    ...            "{% endfor %}")
    >>> results = check_engines(original, patched)  # doctest: +SKIP
    >>> [(r.engine, r.status) for r in results]  # doctest: +SKIP
    [('transformers', 'identical'), ('jinja2 (plain)', 'fails'), ('minijinja', 'fails'),
     ('@huggingface/jinja', 'identical')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from templatefix.clock import frozen_clock
from templatefix.engines.backends import (
    HF_JINJA_PACKAGE,
    Engine,
    HFJinja,
    MiniJinja,
    PlainJinja2,
    RenderContext,
    Rendered,
    Transformers,
    Unavailable,
    all_engines,
    node_install_command,
    node_search_dirs,
)
from templatefix.errors import RenderError

Status = Literal["identical", "differs", "fails", "unreadable", "not available"]

#: Characters of context shown on each side of a first difference.
EXCERPT = 24


@dataclass(frozen=True)
class EngineResult:
    """How one engine reads the patched template compared with the original.

    Attributes:
        engine: the engine's name.
        used_by: who reads templates with it.
        status: see the module docstring.
        version: the engine's installed version (``None`` when not available).
        detail: the first difference, the error, or how to install the engine.
        where: the probe the detail comes from (``None`` when not about one render).
        compared: renders compared (those the engine gave for the original).
    """

    engine: str
    used_by: str
    status: Status
    version: str | None = None
    detail: str = ""
    where: str | None = None
    compared: int = 0

    @property
    def breaks(self) -> bool:
        """The engine reads the original but not the patched template."""
        return self.status == "fails"

    def summary(self) -> str:
        """One line for a table cell, e.g. ``fails: syntax error: unknown statement generation``."""
        if self.status == "identical":
            return f"identical ({self.compared} renders)"
        if self.status == "not available":
            return f"not available: {self.detail}"
        where = f" [{self.where}]" if self.where else (" on every render" if self.status == "fails" else "")
        return f"{self.status}{where}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "used_by": self.used_by,
            "status": self.status,
            "version": self.version,
            "detail": self.detail,
            "where": self.where,
            "compared": self.compared,
        }


def probe_contexts(template: str, special_tokens: Mapping[str, Any] | None = None) -> list[RenderContext]:
    """The probe battery of ``template`` as render contexts: each probe as a whole, and, when it
    ends with an assistant turn, its prompt (the messages before that turn plus the generation
    prompt)."""
    from templatefix.probes import probe_battery
    from templatefix.render import DEFAULT_SPECIAL_TOKENS

    tokens = dict(DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens)
    contexts = []
    for probe in probe_battery(template):
        kwargs = probe.render_kwargs()
        tools = kwargs.pop("tools", None)
        documents = kwargs.pop("documents", None)
        messages = probe.conversation()
        common = {"tools": tools, "documents": documents, "special_tokens": tokens, "kwargs": kwargs}
        contexts.append(RenderContext(probe.name, messages, False, **common))
        if messages and messages[-1].get("role") == "assistant":
            contexts.append(RenderContext(f"{probe.name} (prompt)", messages[:-1], True, **common))
    return contexts


def first_difference(original: str, patched: str) -> str:
    """Where two renders part, with a little context from each.

    Example:
        >>> first_difference("hello world", "hello there")
        "at character 6: original 'hello world', patched 'hello there'"
    """
    index = next(
        (i for i, (a, b) in enumerate(zip(original, patched, strict=False)) if a != b),
        min(len(original), len(patched)),
    )
    start = max(0, index - EXCERPT)
    return (
        f"at character {index}: original {original[start : index + EXCERPT]!r}, "
        f"patched {patched[start : index + EXCERPT]!r}"
    )


def compare(
    engine: Engine,
    original: Sequence[Rendered],
    patched: Sequence[Rendered],
    contexts: Sequence[RenderContext],
    version: str | None,
) -> EngineResult:
    """Judge one engine's renders of the original and the patched template."""

    def result(
        status: Status, *, detail: str = "", where: str | None = None, compared: int = 0
    ) -> EngineResult:
        return EngineResult(
            engine=engine.name, used_by=engine.used_by, status=status, version=version, detail=detail,
            where=where, compared=compared,
        )

    pairs = list(zip(contexts, original, patched, strict=True))
    readable = [(c, o, p) for c, o, p in pairs if o.ok]
    errors = {after.error for _, _, after in readable if not after.ok}
    if readable and len(errors) == 1 and all(not after.ok for _, _, after in readable):
        return result("fails", detail=errors.pop() or "", compared=len(readable))
    for context, _, after in readable:
        if not after.ok:
            return result("fails", detail=after.error or "", where=context.label, compared=len(readable))
    for context, before, after in readable:
        if before.text != after.text:
            return result(
                "differs",
                detail=first_difference(before.text or "", after.text or ""),
                where=context.label,
                compared=len(readable),
            )
    if not readable:
        first, before, _ = pairs[0] if pairs else (None, Rendered(error="no probe"), None)
        return result(
            "unreadable",
            detail=f"the original fails too: {before.error}",
            where=first.label if first else None,
        )
    for context, before, after in pairs:
        if not before.ok and after.ok:  # the patch made a refused render work: not the same template
            return result(
                "differs",
                detail=f"the original fails here ({before.error}) but the patched template renders",
                where=context.label,
                compared=len(readable),
            )
        if not before.ok and before.error_type and after.error_type not in (None, before.error_type):
            return result(
                "differs",
                detail=f"the original raises {before.error_type} here ({before.error}) but the patched "
                f"template raises {after.error_type} ({after.error})",
                where=context.label,
                compared=len(readable),
            )
    return result("identical", compared=len(readable))


@frozen_clock()  # original and patched see one moment for strftime_now in every engine
def check_engines(
    original: str,
    patched: str,
    *,
    special_tokens: Mapping[str, Any] | None = None,
    engines: Sequence[Engine] | None = None,
) -> list[EngineResult]:
    """Render ``original`` and ``patched`` on the probe conversations in every engine; judge each.

    An engine that is missing or crashes as a whole gives ``not available`` with a note; one
    engine never stops the others.

    Args:
        original: the template as the repo has it.
        patched: the same template with ``{% generation %}`` markers.
        special_tokens: ``bos_token``/``eos_token``/... (defaults like ``templatefix.render``).
        engines: the engines to use (default: :func:`all_engines`).

    Returns:
        One :class:`EngineResult` per engine, in the order given.
    """
    contexts = probe_contexts(original, special_tokens)
    results = []
    for engine in engines if engines is not None else all_engines():
        try:
            version = engine.version()
            before, after = engine.render([original, patched], contexts)
        except Unavailable as error:
            results.append(EngineResult(engine.name, engine.used_by, "not available", detail=str(error)))
            continue
        except RenderError as error:
            results.append(EngineResult(engine.name, engine.used_by, "not available", detail=str(error)))
            continue
        except Exception as error:  # noqa: BLE001 - a broken engine install never stops the others
            detail = f"the engine crashed: {type(error).__name__}: {error}".splitlines()[0]
            results.append(EngineResult(engine.name, engine.used_by, "not available", detail=detail))
            continue
        results.append(compare(engine, before, after, contexts, version))
    return results


def breaking_engines(results: Sequence[EngineResult]) -> list[EngineResult]:
    """The engines that read the original but fail on the patched template."""
    return [result for result in results if result.breaks]


def engines_table(results: Sequence[EngineResult]) -> list[str]:
    """A Markdown table of ``results`` (for the PR description)."""
    lines = ["| Engine | Used by | Version | Patched vs original |", "|---|---|---|---|"]
    for result in results:
        cell = result.summary().replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {result.engine} | {result.used_by} | {result.version or '-'} | {cell} |")
    return lines


__all__ = [
    "HF_JINJA_PACKAGE",
    "Engine",
    "EngineResult",
    "HFJinja",
    "MiniJinja",
    "PlainJinja2",
    "RenderContext",
    "Rendered",
    "Transformers",
    "Unavailable",
    "all_engines",
    "breaking_engines",
    "check_engines",
    "compare",
    "engines_table",
    "first_difference",
    "node_install_command",
    "node_search_dirs",
    "print_engines",
    "probe_contexts",
]


def print_engines(results: Sequence[EngineResult], console: Any, title: str = "Inference engines") -> None:
    """Show ``results`` as a rich table on ``console`` (a ``rich.console.Console``)."""
    from rich.table import Table
    from rich.text import Text

    styles = {
        "identical": "green",
        "differs": "bold red",
        "fails": "bold red",
        "unreadable": "yellow",
        "not available": "dim",
    }
    table = Table(title=Text(title), show_lines=False)
    table.add_column("engine")
    table.add_column("used by", style="dim")
    table.add_column("version")
    table.add_column("patched vs original")
    for result in results:
        table.add_row(
            Text(result.engine),
            Text(result.used_by),
            Text(result.version or "-"),
            Text(result.summary(), style=styles[result.status]),
        )
    console.print(table)
