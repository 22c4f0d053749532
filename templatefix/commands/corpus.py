"""`templatefix corpus DIR`: patch and verify every template under DIR, and tabulate.

Each ``*.jinja`` file under DIR is patched with the default policy (or the one given) and the
result is verified. The table says, per template: ``exact`` (verified, every turn exact),
``flagged`` (verified; some turns are rewritten history or a mismatching generation prompt, and
are flagged as SPEC §3 asks), ``unverified-code`` (every probe passes, but some outputs of the
template were reached by no probe; the first is named), or ``refused`` (not verified, with the
reason), and the share of the template's outputs the probes reached. Templates are processed in
parallel across processes.

Exit status: 0 when every template was verified, 1 when one was refused or failed, 4 when none
was but some have unverified code, 2 on bad input.

Example:
    $ templatefix corpus ../shared/corpus --json > corpus.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from templatefix.commands.check import add_policy_arguments, policy_from_args
from templatefix.errors import SourceError, TemplatefixError
from templatefix.policy import Policy


@dataclass
class CorpusRow:
    """One template's outcome."""

    name: str
    status: str  # exact | flagged | unverified-code | refused | error
    seconds: float
    reason: str = ""
    flags: int = 0
    coverage: float | None = None  # share of the outputs that write text the probes reached
    unreached: int = 0  # outputs no probe reached


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "corpus",
        help="patch and verify every template under DIR and print a table",
        description="Patch and verify every *.jinja under DIR. Exit 0 when all are verified.",
    )
    parser.add_argument(
        "directory", metavar="DIR", help="a folder of .jinja templates (searched recursively)"
    )
    parser.add_argument("--json", action="store_true", help="print the rows and totals as JSON")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes to use")
    parser.add_argument("--filter", metavar="TEXT", help="only templates whose path contains TEXT")
    add_policy_arguments(parser)
    parser.set_defaults(handler=run)


def patch_one(path: str, root: str, policy: Policy) -> CorpusRow:
    """Patch and verify one file; never raises."""
    from templatefix.patch.api import patch_template

    name = os.path.relpath(path, root)
    started = time.perf_counter()
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
        result = patch_template(text, policy=policy)
    except TemplatefixError as error:
        return CorpusRow(name, "refused", time.perf_counter() - started, str(error))
    except UnicodeDecodeError:
        return CorpusRow(name, "error", time.perf_counter() - started, "not UTF-8")
    except Exception as error:  # a crash is a finding, not a reason to stop the table
        return CorpusRow(name, "error", time.perf_counter() - started, f"{type(error).__name__}: {error}")
    reason = "" if result.verified else (result.reasons[0] if result.reasons else "not verified")
    coverage = getattr(result.report, "coverage", None)
    return CorpusRow(
        name, result.status, time.perf_counter() - started, reason, len(result.flags),
        coverage.fraction if coverage is not None else None,
        len(coverage.unreached) if coverage is not None else 0,
    )


def run_corpus(
    directory: str, policy: Policy, workers: int = 1, contains: str | None = None
) -> list[CorpusRow]:
    """Patch every ``*.jinja`` under ``directory``; rows sorted by name."""
    root = Path(directory)
    if not root.is_dir():
        raise SourceError(f"{directory}: not a directory")
    paths = sorted(str(p) for p in root.rglob("*.jinja") if not contains or contains in str(p))
    if not paths:
        raise SourceError(f"{directory}: no .jinja templates found")
    if workers <= 1:
        rows = [patch_one(path, str(root), policy) for path in paths]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(
                pool.map(patch_one, paths, [str(root)] * len(paths), [policy] * len(paths), chunksize=4)
            )
    return sorted(rows, key=lambda row: row.name)


def summarize(rows: list[CorpusRow]) -> dict[str, Any]:
    counts = Counter(row.status for row in rows)
    seconds = sorted(row.seconds for row in rows)
    measured = [row.coverage for row in rows if row.coverage is not None]
    return {
        "total": len(rows),
        "exact": counts.get("exact", 0),
        "flagged": counts.get("flagged", 0),
        "verified": counts.get("exact", 0) + counts.get("flagged", 0),
        "unverified_code": counts.get("unverified-code", 0),
        "full_coverage": sum(1 for value in measured if value >= 1.0),
        "mean_coverage": statistics.mean(measured) if measured else 0.0,
        "refused": counts.get("refused", 0),
        "error": counts.get("error", 0),
        "median_seconds": statistics.median(seconds) if seconds else 0.0,
        "p95_seconds": seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))] if seconds else 0.0,
    }


def run(args: argparse.Namespace) -> int:
    policy = policy_from_args(args)
    rows = run_corpus(args.directory, policy, workers=args.workers, contains=args.filter)
    totals = summarize(rows)
    if args.json:
        json.dump({"rows": [asdict(row) for row in rows], "totals": totals}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(rows, totals)
    if totals["verified"] == totals["total"]:
        return 0
    return 4 if totals["verified"] + totals["unverified_code"] == totals["total"] else 1


def _print_table(rows: list[CorpusRow], totals: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="templatefix corpus", show_lines=False)
    table.add_column("template", overflow="fold")
    table.add_column("result")
    table.add_column("s", justify="right")
    table.add_column("coverage", justify="right")
    table.add_column("reason / flags", overflow="fold")
    colours = {
        "exact": "green", "flagged": "yellow", "unverified-code": "magenta", "refused": "red",
        "error": "bold red",
    }  # fmt: skip
    for row in rows:
        detail = row.reason if row.reason else (f"{row.flags} turns flagged" if row.flags else "")
        coverage = "" if row.coverage is None else f"{row.coverage:.0%}"
        table.add_row(
            row.name, f"[{colours[row.status]}]{row.status}[/]", f"{row.seconds:.2f}", coverage,
            _escape(detail)[:160],
        )
    console.print(table)
    console.print(
        f"{totals['verified']}/{totals['total']} verified "
        f"({totals['exact']} exact, {totals['flagged']} flagged), "
        f"{totals['unverified_code']} unverified code, "
        f"{totals['refused']} refused, {totals['error']} errors; "
        f"{totals['full_coverage']} at full coverage (mean {totals['mean_coverage']:.1%}); "
        f"median {totals['median_seconds']:.2f}s, p95 {totals['p95_seconds']:.2f}s per template"
    )


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
