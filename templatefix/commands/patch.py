"""``templatefix patch SOURCE``: add verified ``{% generation %}`` markers to every template found.

SOURCE is a ``.jinja`` file, a ``tokenizer_config.json``/``chat_template.json``, a model directory,
or a Hub repo id (``--revision`` picks a branch, tag or commit). Without ``-o``/``--in-place``/
``--push-to`` nothing is written: the verdict and the diff are shown.

Examples:
    templatefix patch chat_template.jinja -o -              # patched template on stdout
    templatefix patch Qwen/Qwen2.5-7B-Instruct -o out/      # out/tokenizer_config.json + report
    templatefix patch ./my-model --in-place                 # keeps *.bak copies
    templatefix patch openai/gpt-oss-20b --create-pr --dry-run
    templatefix patch --from-file repos.txt --create-pr      # many repos: progress and summary

Every changed template is also rendered in each inference engine installed here
(``templatefix.engines``). With ``--create-pr``, when an engine reads the original default
template but fails on the patched one, the patch is proposed as the named template ``training``
and the default stays (``--as-default`` replaces the default anyway). An earlier templatefix PR
for the same original template, open or closed, is not opened again (``--force`` does).

Exit status: 0 when every template is verified, 1 when one is not (or was refused for that
reason), 4 when every probe passes but some output of a template was reached by no probe
(unverified code: named, and not written without --force), 2 for bad input. With several
SOURCEs: 0 when no repo failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from templatefix.commands.check import add_policy_arguments, policy_from_args
from templatefix.commands.propose import Proposal, RepoPatch, prepare, propose, training_name
from templatefix.errors import NotVerifiedError, OutputError, PushError, TemplatefixError
from templatefix.io.files import REPORT_FILE, plan_writes, report_bytes, write_files, write_in_place
from templatefix.io.hub import quiet_hub
from templatefix.io.sources import LoadedSource, load_source
from templatefix.policy import Policy
from templatefix.report import exit_code

_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "patch",
        help="add verified {%% generation %%} markers to a template, model directory or Hub repo",
        description="Add verified {% generation %} markers to every chat template SOURCE holds. "
        "Without -o, --in-place or --push-to nothing is written: the verdict and the diff are shown. "
        "Several SOURCEs (or --from-file) with --create-pr or --dry-run propose the patch to many repos.",
        epilog="examples:\n"
        + __doc__.split("Examples:\n")[1].split("\n\n")[0]
        + "\n\nexit status: 0 all verified, 1 a template is not verified (several SOURCEs: a repo failed), "
        "4 every probe passes but some outputs were never reached (unverified code), 2 bad input",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        nargs="*",
        help=".jinja file, tokenizer_config.json, model directory, or Hub repo id (owner/name)",
    )
    parser.add_argument(
        "--from-file", metavar="FILE", help="also read SOURCEs from FILE, one per line (# starts a comment)"
    )
    parser.add_argument("--revision", help="Hub branch, tag or commit (Hub SOURCE only)")
    out = parser.add_argument_group("output")
    out.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="write patched files here: a directory (same layout + templatefix-report.json), "
        "a file (single-template SOURCE), or '-' for stdout",
    )
    out.add_argument("--in-place", action="store_true", help="patch a local SOURCE in place (keeps *.bak)")
    out.add_argument("--no-backup", action="store_true", help="with --in-place: do not keep *.bak copies")
    out.add_argument(
        "--as-named",
        metavar="NAME",
        help="add the patched template as named template NAME; leave the default untouched",
    )
    out.add_argument(
        "--as-default",
        action="store_true",
        help="with --create-pr: replace the default template even when an inference engine fails on it; "
        "with --keep-history: write the training variant in place of the default",
    )
    out.add_argument(
        "--keep-history",
        action="store_true",
        help="patch the keep-history training variant (every assistant turn written as when it is last; "
        "for training only) and write it as the named template 'training' next to the untouched default",
    )
    out.add_argument(
        "--no-engines", action="store_true", help="skip the inference-engine check (templatefix.engines)"
    )
    out.add_argument("--json", action="store_true", help="print a machine-readable result on stdout")
    out.add_argument(
        "--force",
        action="store_true",
        help="write/push templates that failed verification; overwrite differing files in OUT; "
        "open a PR even when an earlier templatefix PR exists",
    )
    hub = parser.add_argument_group("Hub")
    hub.add_argument("--push-to", metavar="REPO", help="commit the patched files to this Hub repo")
    hub.add_argument(
        "--create-pr", action="store_true", help="open a pull request (on --push-to, or on the SOURCE repo)"
    )
    hub.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would be written and committed (files, message, PR text); do nothing",
    )
    add_policy_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    specs = list(args.source or [])
    if args.from_file:
        specs += read_repo_list(Path(args.from_file))
    if not specs:
        raise TemplatefixError(
            "give a SOURCE (a .jinja file, a model directory or a Hub repo id), or --from-file"
        )
    if args.as_default and args.as_named:
        raise TemplatefixError("use either --as-named NAME or --as-default, not both")
    if len(specs) > 1 or args.from_file:
        from templatefix.commands.batch import run_batch

        return run_batch(specs, args)
    return run_one(specs[0], args)


def read_repo_list(path: Path) -> list[str]:
    """SOURCEs from a file: one per line; blank lines and ``#`` comments are skipped.

    Example:
        >>> import tempfile
        >>> name = Path(tempfile.mkdtemp()) / "repos.txt"
        >>> _ = name.write_text("# models\\norg/a\\n\\norg/b  # second\\n")
        >>> read_repo_list(name)
        ['org/a', 'org/b']
    """
    from templatefix.errors import SourceError
    from templatefix.io.layout import read_text

    try:
        text = read_text(path)
    except SourceError as error:
        raise SourceError(f"--from-file: {error}") from None
    specs = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    specs = [spec for spec in specs if spec]
    if not specs:
        raise SourceError(f"--from-file {path}: no SOURCE in it")
    return specs


def run_one(spec: str, args: argparse.Namespace) -> int:
    """``templatefix patch SOURCE``: one source."""
    _check_flags(args)
    policy = policy_from_args(args)
    quiet_hub()
    source = load_source(spec, revision=args.revision)
    if args.in_place and not source.is_local:
        raise TemplatefixError(
            "--in-place needs a local SOURCE; for a Hub repo use -o DIR or --push-to/--create-pr"
        )
    push_target = args.push_to or (source.repo_id if args.create_pr else None)
    if args.create_pr and push_target is None:
        raise TemplatefixError("--create-pr needs --push-to REPO when SOURCE is local")
    repo = prepare(
        source,
        policy,
        as_named=training_name(args, source),
        as_default=args.as_default,
        create_pr=bool(args.create_pr),
        engines=not args.no_engines,
        force=args.force,
        keep_history=args.keep_history,
    )
    files, changed = repo.files, repo.changed
    to_stdout = args.output == "-"
    console = _console(sys.stderr if (to_stdout or args.json) else sys.stdout)

    report: dict[str, Any] = {
        "source": source.to_json(),
        "policy": policy.to_dict(),
        "verified": repo.verified,
        "templates": [p.to_json() for p in repo.patched],
        "as_named": repo.as_named,
        "named_because": repo.named_because,
        "changed_files": sorted(changed),
        "refused": [p.entry.label for p in repo.refused],
        "dry_run": bool(args.dry_run),
        "written": [],
        "push": None,
    }
    if not args.json:
        _print_verdicts(console, repo, args)

    # ---- local outputs ---------------------------------------------------------------------
    writes_locally = args.output is not None or args.in_place
    if writes_locally and not repo.verified and not args.force:
        failed = [p.entry.label for p in repo.patched if not p.result.verified]
        report["not_written"] = f"not verified: {', '.join(failed)}"
        console.print(
            f"nothing written: {len(failed)} template(s) failed verification ({', '.join(failed)}); "
            "use --force to write anyway",
            style="yellow",
            markup=False,
        )
    elif args.output is not None:
        if to_stdout:
            _write_stdout(source, files)
        else:
            report["written"] = _write_output(Path(args.output), source, files, report, args, console)
    elif args.in_place:
        if args.dry_run:
            console.print(
                f"dry run: would update {len(changed)} file(s) in place: {', '.join(sorted(changed))}",
                markup=False,
            )
        elif changed:
            actions = write_in_place(source.root, changed, backup=not args.no_backup, force=args.force)
            report["written"] = [a.to_json() for a in actions]
            if not args.json:
                for action in actions:
                    console.print(f"{action.status}: {action.path}", markup=False)

    # ---- push ------------------------------------------------------------------------------
    if push_target is not None:
        report["push"] = _push(push_target, repo, policy, args, console)

    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    elif args.output is None and not args.in_place and push_target is None and changed:
        console.print("nothing written: use -o OUT, --in-place or --push-to to write the patch", style="dim")
    return exit_code([_report_status(p.result) for p in repo.patched])


def _report_status(result: Any) -> str:
    """The report status of a patch result (``verified``, ``unverified-code`` or ``failed``)."""
    if result.verified:
        return "verified"
    return "unverified-code" if getattr(result, "passed", False) else "failed"


def _check_flags(args: argparse.Namespace) -> None:
    if args.in_place and args.output is not None:
        raise TemplatefixError("use either -o OUT or --in-place, not both")
    if args.no_backup and not args.in_place:
        raise TemplatefixError("--no-backup only applies to --in-place")
    if args.output == "-" and args.json:
        raise TemplatefixError("-o - and --json both write to stdout; pick one")
    if args.as_default and not (args.create_pr or args.keep_history):
        raise TemplatefixError(
            "--as-default only applies to --create-pr or --keep-history (other outputs replace the default)"
        )


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _console(file: Any) -> Any:
    from rich.console import Console

    return Console(file=file, highlight=False, soft_wrap=True)


def _print_verdicts(console: Any, repo: RepoPatch, args: argparse.Namespace) -> None:
    from templatefix.engines import print_engines

    console.print(f"[bold]{escape(repo.source.describe())}[/bold]: {len(repo.patched)} template(s)")
    for item in repo.patched:
        outcome = item.outcome()
        shadow = "" if item.entry.effective else " (shadowed: transformers ignores this copy)"
        unverified = _report_status(item.result) == "unverified-code"
        if outcome.verified:
            state = "[green]✓ verified[/green]" + ("" if outcome.changed else " (unchanged)")
        elif unverified:
            state = "[yellow]! not verified: every probe passes, but unverified code[/yellow]"
        else:
            state = "[red]✗ not verified[/red]"
        console.print(f"  {state}  {escape(item.entry.label + shadow)}")
        for line in item.result.describe() if hasattr(item.result, "describe") else ():
            console.print(f"      {line}", markup=False)  # the keep-history variant: what it changes
        for reason in outcome.reasons if not (outcome.verified or unverified) else ():
            console.print(f"      - {reason}", markup=False)
        if unverified:
            console.print(
                "      no probe reached these outputs; the patch may be wrong there:", style="yellow"
            )
            for line in item.result.unverified_code:
                console.print(f"      - {line}", markup=False)
        flags = list(getattr(item.result, "flags", []) or []) if outcome.verified else []
        if flags:
            # SPEC §3: say which turns teach text the model never produced, and the alternatives.
            console.print(
                f"      [yellow]{len(flags)} turn(s) flagged[/yellow]: the template rewrites history "
                "(or its generation prompt disagrees with its training render); e.g.",
            )
            console.print(f"      - {flags[0]}", markup=False)
        if item in repo.refused:
            console.print(
                "      not written: failed verification (use --force to write it anyway)", style="yellow"
            )
    if args.output != "-":
        for item in repo.patched:
            for line in item.diff.splitlines():
                style = "green" if line.startswith("+") else "red" if line.startswith("-") else None
                if line.startswith(("+++", "---", "@@")):
                    style = "cyan"
                console.print(line, style=style, markup=False)
    for item in repo.patched:
        if item.engines:
            print_engines(item.engines, console, f"{item.entry.label}: inference engines")
    breaking = sorted({r.engine for item in repo.patched for r in item.engines if r.breaks})
    if repo.named_because:
        console.print(
            f"{', '.join(repo.named_because)} fail on the patched default template: proposing it as the "
            f"named template '{repo.as_named}' (--as-default replaces the default anyway)",
            style="yellow",
            markup=False,
        )
    elif breaking and not repo.as_named:
        console.print(
            f"{', '.join(breaking)} fail on the patched template; "
            "--as-named training keeps the default as it is",
            style="yellow",
            markup=False,
        )


def _write_stdout(source: LoadedSource, files: dict[str, bytes]) -> None:
    if len(source.templates.files) != 1:
        raise OutputError(
            "-o - needs a single-file SOURCE (this one has "
            f"{len(source.templates.files)} template files); use -o DIR"
        )
    (data,) = files.values()
    sys.stdout.buffer.write(data) if hasattr(sys.stdout, "buffer") else sys.stdout.write(data.decode())
    sys.stdout.flush()


def _is_dir_target(out: Path, raw: str, source: LoadedSource) -> bool:
    if out.is_dir() or raw.endswith(("/", "\\")):
        return True
    if out.exists():
        return False
    return source.kind != "file" or not out.suffix


def _write_output(
    out: Path,
    source: LoadedSource,
    files: dict[str, bytes],
    report: dict[str, Any],
    args: argparse.Namespace,
    console: Any,
) -> list[dict[str, str]]:
    if _is_dir_target(out, args.output, source):
        if source.is_local and out.resolve() == source.root.resolve():
            raise OutputError(f"{out} is the SOURCE directory; use --in-place to patch it")
        # The report file holds no per-run state, so re-running into the same OUT is a no-op.
        report_file = {k: v for k, v in report.items() if k not in ("written", "push", "dry_run")}
        targets = {**files, REPORT_FILE: report_bytes(report_file)}
        plan_writes(out, targets, force=args.force)  # check everything before the first write
        if args.dry_run:
            console.print(f"dry run: would write {', '.join(sorted(targets))} under {out}", markup=False)
            return []
        written = [a.to_json() for a in write_files(out, targets, force=args.force)]
    else:
        if len(files) != 1:
            raise OutputError(f"{out}: SOURCE has {len(files)} template files; give a directory for -o")
        (data,) = files.values()
        if args.dry_run:
            plan_writes(out.parent, {out.name: data}, force=args.force)
            console.print(f"dry run: would write {out}", markup=False)
            return []
        written = [a.to_json() for a in write_files(out.parent, {out.name: data}, force=args.force)]
    if not args.json:
        for item in written:
            console.print(f"{item['status']}: {item['path']}", markup=False)
    return written


def _push(
    repo_id: str, repo: RepoPatch, policy: Policy, args: argparse.Namespace, console: Any
) -> dict[str, Any]:
    same_repo = repo.source.repo_id == repo_id
    branch = args.revision if (same_repo and args.revision and not _COMMIT_SHA.match(args.revision)) else None
    proposal = propose(
        repo_id, repo, policy, create_pr=args.create_pr, dry_run=args.dry_run, force=args.force, branch=branch
    )
    data = {**proposal.to_json(), "blocked": proposal.status == "not verified"}
    if proposal.status == "error":
        raise PushError(proposal.message)
    if proposal.status == "not verified":
        if not args.dry_run:
            raise NotVerifiedError(
                f"not pushed to {repo_id}: some templates failed verification (see above); "
                "fix them or use --force"
            )
        if not args.json:
            console.print(
                f"dry run: would not push to {repo_id}: not every template is verified (--force overrides)",
                style="yellow",
                markup=False,
            )
        return data
    if not args.json:
        if proposal.status in ("would open", "would commit"):
            _print_plan(console, proposal)
        elif proposal.status in ("opened", "committed"):
            console.print(f"pushed to {repo_id}: {proposal.url}", markup=False)
        else:
            console.print(proposal.message, markup=False)
    return data


def _print_plan(console: Any, proposal: Proposal) -> None:
    plan = proposal.plan
    what = "open a pull request on" if plan.create_pr else "commit to"
    base = plan.revision or "main"
    console.print(
        f"dry run: would {what} {plan.repo_id} (base {base}) with {len(plan.files)} file(s):", markup=False
    )
    for path, data in sorted(plan.files.items()):
        console.print(f"  {path} ({len(data)} bytes)", markup=False)
    console.print(f"title: {plan.title}", markup=False)
    console.print("description:", markup=False)
    console.print(plan.description, markup=False)
