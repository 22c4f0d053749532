"""``templatefix patch A B C --create-pr`` (or ``--from-file repos.txt``): propose the patch to many repos.

Each repo goes through the same steps as one SOURCE (``templatefix.commands.propose``): read,
patch, engine check, the earlier-PR check, the pull request. One repo's failure never stops the
others: it becomes a row of the summary. A rich progress bar runs on stderr while the repos are
processed; then a summary table (or ``--json``) says, per repo, one of: opened (or "would open"
with ``--dry-run``), already proposed (an earlier templatefix PR, open or closed), already
exact, not verified, error.

Exit status: 0 when no repo failed (not verified or error), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from templatefix.commands.propose import Proposal, prepare, propose, training_name
from templatefix.errors import TemplatefixError

#: Summary rows, in the order shown.
SUMMARY_ORDER = (
    "opened", "would open", "committed", "would commit", "already proposed", "already exact",
    "not verified", "error",
)  # fmt: skip
_STYLES = {"not verified": "red", "error": "bold red", "already proposed": "yellow", "already exact": "dim"}


def process(spec: str, args: argparse.Namespace) -> Proposal:
    """One repo of a batch, start to end; every failure becomes a ``Proposal`` with status ``error``."""
    from templatefix.commands.check import policy_from_args
    from templatefix.io.sources import load_source

    policy = policy_from_args(args)
    try:
        source = load_source(spec, revision=args.revision)
        target = args.push_to or source.repo_id
        if target is None:
            raise TemplatefixError(f"{spec}: a local SOURCE needs --push-to REPO")
        repo = prepare(
            source,
            policy,
            as_named=training_name(args, source),
            as_default=args.as_default,
            create_pr=True,
            engines=not args.no_engines,
            force=args.force,
            keep_history=getattr(args, "keep_history", False),
        )
        return propose(target, repo, policy, create_pr=True, dry_run=args.dry_run, force=args.force)
    except TemplatefixError as error:
        return Proposal(spec, "error", str(error) if spec in str(error) else f"{spec}: {error}")
    except Exception as error:  # noqa: BLE001 - one repo never stops the batch
        return Proposal(spec, "error", f"{spec}: unexpected {type(error).__name__}: {error}")


def run_batch(specs: list[str], args: argparse.Namespace) -> int:
    """Propose the patch to every repo in ``specs``; print the summary; exit 1 if any failed."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from templatefix.io.hub import quiet_hub

    if args.output is not None or args.in_place:
        raise TemplatefixError("several SOURCEs: -o and --in-place apply to one SOURCE; use --create-pr")
    if not (args.create_pr or args.dry_run):
        raise TemplatefixError("several SOURCEs need --create-pr (or --dry-run to see what it would do)")
    if args.push_to:
        raise TemplatefixError("several SOURCEs: --push-to names one repo; each SOURCE gets its own PR")
    quiet_hub()
    err = Console(stderr=True, highlight=False)
    results: list[Proposal] = []
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    )  # fmt: skip
    with progress:
        task = progress.add_task("repos", total=len(specs))
        for spec in specs:
            progress.update(task, description=spec)
            results.append(process(spec, args))
            progress.advance(task)
    failed = any(result.failed for result in results)
    if args.json:
        payload = {
            "dry_run": bool(args.dry_run),
            "failed": failed,
            "summary": dict(Counter(result.status for result in results)),
            "repos": [result.to_json() for result in results],
        }
        json.dump(payload, sys.stdout, indent=2, ensure_ascii=False, default=str)
        sys.stdout.write("\n")
    else:
        print_summary(results, Console(highlight=False, soft_wrap=True))
    return 1 if failed else 0


def print_summary(results: list[Proposal], console: Any) -> None:
    """One row per repo (status and what happened), then the count per status."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="templatefix: pull requests")
    table.add_column("repo")
    table.add_column("status")
    table.add_column("details")
    for result in results:
        style = _STYLES.get(result.status, "green")
        detail = result.url or result.message.removeprefix(f"{result.repo_id}: ")
        table.add_row(Text(result.repo_id), Text(result.status, style=style), Text(detail))
    console.print(table)
    counts: Counter[str] = Counter(result.status for result in results)
    console.print(
        ", ".join(f"{status}: {counts[status]}" for status in SUMMARY_ORDER if counts[status]), markup=False
    )
