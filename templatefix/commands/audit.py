"""`templatefix audit DATA --tokenizer T`: check what a training set will really train.

Example:
    templatefix audit train.jsonl --tokenizer Qwen3-8B/ --max-length 4096 --expand-turns per_turn.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from templatefix.errors import SourceError, TemplatefixError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="audit a dataset: empty masks, truncation, rewritten history, token disagreements",
        description="Tokenize every example as TRL will (assistant_only_loss=True) and report, with example "
        "indices, what is wrong. Exits 1 when anything is.",
    )
    parser.add_argument("data", metavar="DATA",
                        help="JSONL file, or a local datasets directory (save_to_disk)")
    parser.add_argument(
        "--tokenizer", required=True, metavar="DIR_OR_ID", help="fast tokenizer: local directory or Hub id"
    )
    parser.add_argument("--template", metavar="PATCHED",
                        help="chat template to use (.jinja, model dir, tokenizer_config.json); "
                        "default: the tokenizer's own")
    parser.add_argument("--max-length", type=int, metavar="N",
                        help="TRL max_length: flag examples truncation leaves without a trained token")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), metavar="K",
                        help="processes (default: min(2, cpus))")
    parser.add_argument("--history", choices=("shape", "all", "off"), default="shape",
                        help="rewritten-history check: once per conversation shape (default), every example, "
                        "or off")
    parser.add_argument("--split", help="split of a DatasetDict directory (default: train)")
    parser.add_argument("--expand-turns", metavar="OUT.jsonl",
                        help="write one prompt/completion example per assistant turn "
                        "(exact for any template)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --expand-turns file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)


def resolve_template(
    template_source: str | None, tokenizer: Any, policy: Any = None
) -> tuple[str, list[str], list[str]]:
    """``(template, notes, warnings)``: the template to audit with (``--template`` or the
    tokenizer's), patched when it has no markers."""
    from templatefix.data.resolve import resolve_template as resolve
    from templatefix.io.sources import load_template

    text = load_template(template_source).text if template_source else None
    resolved = resolve(text, tokenizer, policy)
    return resolved.template, resolved.notes, resolved.warnings


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from templatefix.data.audit import audit_rows
    from templatefix.data.findings import AuditOptions
    from templatefix.data.inputs import open_rows
    from templatefix.io.files import atomic_stream
    from templatefix.tokens import load_fast_tokenizer

    if args.workers < 1:
        raise TemplatefixError("--workers must be at least 1")
    if args.max_length is not None and args.max_length < 1:
        raise TemplatefixError("--max-length must be a positive number of tokens")
    out = Path(args.expand_turns) if args.expand_turns else None
    if out is not None and out.exists() and not args.force:
        raise SourceError(f"{out} exists: pass --force to overwrite it")
    err = Console(stderr=True, highlight=False)
    tokenizer = load_fast_tokenizer(args.tokenizer)
    template, notes, warnings = resolve_template(args.template, tokenizer)
    for warning in warnings:
        err.print(f"[bold white on red] WARNING [/] [bold red]{warning}[/]")
    for note in notes:
        err.print(f"[cyan]note:[/] {note}")
    rows, total = open_rows(args.data, args.split)
    options = AuditOptions(max_length=args.max_length, history=args.history, expand_turns=out is not None)
    progress = Progress(
        TextColumn("auditing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, auto_refresh=False, disable=not err.is_terminal, transient=True,
    )
    task = progress.add_task("audit", total=total)

    with contextlib.ExitStack() as stack:  # --expand-turns: replaces OUT only when the audit finishes
        writer = stack.enter_context(atomic_stream(out, require_folder=True)) if out is not None else None

        def on_chunk(chunk: Any) -> None:
            if writer is not None:
                writer.writelines(line + "\n" for line in chunk.expanded)
            progress.update(task, advance=chunk.examples)
            progress.refresh()

        with progress:
            result = audit_rows(rows, template, tokenizer, options, workers=args.workers, on_chunk=on_chunk)
    result.notes[:0] = notes + [f"WARNING: {w}" for w in warnings]
    if args.json:
        data = result.to_json()
        if out is not None:
            data["expand_turns"] = str(out)
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print_summary(result, Console(highlight=False), out)
    return 0 if result.ok and not warnings else 1


def print_summary(result: Any, console: Any, out: Path | None = None) -> None:
    """The human summary: one row per category with counts, first indices and a sample message."""
    from rich.table import Table

    from templatefix.data.findings import CATEGORIES

    rate = result.tokens / result.seconds if result.seconds else 0.0
    table = Table(title=f"{result.examples} examples, {result.trained_tokens} / {result.tokens} tokens "
                  f"trained ({result.seconds:.1f} s, {rate:,.0f} tokens/s)")
    table.add_column("finding")
    table.add_column("examples", justify="right")
    table.add_column("first indices")
    table.add_column("e.g.")
    for name, description in CATEGORIES.items():
        count = result.counts[name]
        indices = ", ".join(map(str, result.indices[name][:8])) + (" …" if count > 8 else "")
        sample = result.messages[name][0][1] if result.messages[name] else ""
        style = "red" if count else "green"
        table.add_row(f"[{style}]{description}[/]", f"[{style}]{count}[/]", indices, sample)
    console.print(table)
    for note in result.notes:
        console.print(f"[cyan]note:[/] {note}")
    if result.counts["rewritten"] or result.counts["mismatch"]:
        console.print("[yellow]hint:[/] for exact training, train the last turn only, or split conversations "
                      "into one example per assistant turn (--expand-turns OUT.jsonl)")
    if out is not None:
        console.print(f"wrote {result.expanded} per-turn examples to {out}")
    console.print("[green]OK[/]: nothing wrong found" if result.ok else "[red]problems found[/]")
