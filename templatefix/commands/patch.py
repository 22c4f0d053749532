"""``templatefix patch SOURCE``: add verified ``{% generation %}`` markers to every template found.

SOURCE is a ``.jinja`` file, a ``tokenizer_config.json``/``chat_template.json``, a model directory,
or a Hub repo id (``--revision`` picks a branch, tag or commit). Without ``-o``/``--in-place``/
``--push-to`` nothing is written: the verdict and the diff are shown.

Examples:
    templatefix patch chat_template.jinja -o -              # patched template on stdout
    templatefix patch Qwen/Qwen2.5-7B-Instruct -o out/      # out/tokenizer_config.json + report
    templatefix patch ./my-model --in-place                 # keeps *.bak copies
    templatefix patch openai/gpt-oss-20b --create-pr --dry-run

Exit status: 0 when every template is verified, 1 when one is not (or was refused for that
reason), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from templatefix.commands.check import add_policy_arguments, policy_from_args
from templatefix.errors import NotVerifiedError, SourceError, TemplatefixError
from templatefix.output import (
    REPORT_FILE,
    OutputError,
    TemplateOutcome,
    named_template_files,
    patched_files,
    plan_writes,
    pull_request_text,
    report_bytes,
    write_files,
    write_in_place,
)
from templatefix.policy import Policy
from templatefix.sources import LoadedSource, TemplateEntry, load_source

_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "patch",
        help="add verified {% generation %} markers to a template, model directory or Hub repo",
        description="Add verified {% generation %} markers to every chat template SOURCE holds. "
        "Without -o, --in-place or --push-to nothing is written: the verdict and the diff are shown.",
        epilog="examples:\n"
        + __doc__.split("Examples:\n")[1].split("\n\n")[0]
        + "\n\nexit status: 0 all verified, 1 a template is not verified, 2 bad input",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help=".jinja file, tokenizer_config.json, model directory, or Hub repo id (owner/name)",
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
    out.add_argument("--json", action="store_true", help="print a machine-readable result on stdout")
    out.add_argument(
        "--force",
        action="store_true",
        help="write/push templates that failed verification; overwrite differing files in OUT",
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


@dataclass
class PatchedEntry:
    """A template of the source and its patch result."""

    entry: TemplateEntry
    result: Any  # templatefix.patcher.PatchResult

    @property
    def diff(self) -> str:
        from templatefix import patcher

        if self.result.patched == self.entry.template:
            return ""
        return patcher.unified_diff(self.entry.template, self.result.patched, self.entry.label)

    def outcome(self) -> TemplateOutcome:
        return TemplateOutcome(
            label=self.entry.label,
            name=self.entry.name,
            verified=bool(self.result.verified),
            changed=self.result.patched != self.entry.template,
            reasons=tuple(str(r) for r in self.result.reasons),
            diff=self.diff,
            patched=self.result.patched,
        )

    def to_json(self) -> dict[str, Any]:
        data = self.result.to_json() if hasattr(self.result, "to_json") else {}
        data.update(
            {
                "label": self.entry.label,
                "name": self.entry.name,
                "path": self.entry.path,
                "kind": self.entry.kind,
                "effective": self.entry.effective,
                "verified": bool(self.result.verified),
                "changed": self.result.patched != self.entry.template,
                "reasons": [str(r) for r in self.result.reasons],
                "diff": self.diff,
            }
        )
        return data


def patch_entries(source: LoadedSource, policy: Policy, *, only_default: bool = False) -> list[PatchedEntry]:
    """Patch each template of ``source`` (identical texts are patched once)."""
    from templatefix import patcher

    entries = list(source.templates)
    if only_default:
        default = source.templates.default
        entries = [default] if default is not None else []
    cache: dict[str, Any] = {}
    patched = []
    for entry in entries:
        if not entry.template.strip():  # bad input, as in `check`: not a template that fails
            raise SourceError(f"{entry.label}: the template is empty")
        if entry.template not in cache:
            try:
                cache[entry.template] = patcher.patch_template(entry.template, policy=policy)
            except TemplatefixError as error:  # name the template, as `check` does
                raise type(error)(f"{entry.label}: {error}") from None
        patched.append(PatchedEntry(entry, cache[entry.template]))
    return patched


def run(args: argparse.Namespace) -> int:
    _check_flags(args)
    policy = policy_from_args(args)
    _quiet_hub()
    source = load_source(args.source, revision=args.revision)
    if args.in_place and not source.is_local:
        raise TemplatefixError(
            "--in-place needs a local SOURCE; for a Hub repo use -o DIR or --push-to/--create-pr"
        )
    push_target = args.push_to or (source.repo_id if args.create_pr else None)
    if args.create_pr and push_target is None:
        raise TemplatefixError("--create-pr needs --push-to REPO when SOURCE is local")

    patched = patch_entries(source, policy, only_default=bool(args.as_named))
    if not patched:
        raise TemplatefixError(f"{args.source}: no default template to use with --as-named")
    all_verified = all(p.result.verified for p in patched)
    accepted = [p for p in patched if p.result.verified or args.force]
    refused = [
        p for p in patched if not (p.result.verified or args.force) and p.result.patched != p.entry.template
    ]

    if args.as_named:
        default = patched[0]
        files = dict(source.templates.files)
        if default in accepted:
            files.update(
                named_template_files(
                    source.templates, args.as_named, default.result.patched, force=args.force
                )
            )
    else:
        files = patched_files(source.templates, {p.entry.label: p.result.patched for p in accepted})
    changed = {path: data for path, data in files.items() if source.templates.files.get(path) != data}
    to_stdout = args.output == "-"
    console = _console(sys.stderr if (to_stdout or args.json) else sys.stdout)

    report: dict[str, Any] = {
        "source": source.to_json(),
        "policy": policy.to_dict(),
        "verified": all_verified,
        "templates": [p.to_json() for p in patched],
        "changed_files": sorted(changed),
        "refused": [p.entry.label for p in refused],
        "dry_run": bool(args.dry_run),
        "written": [],
        "push": None,
    }
    if not args.json:
        _print_verdicts(console, source, patched, refused, args)

    # ---- local outputs ---------------------------------------------------------------------
    if args.output is not None:
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
        report["push"] = _push(push_target, source, patched, changed, policy, args, console, all_verified)

    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    elif args.output is None and not args.in_place and push_target is None and changed:
        console.print("nothing written: use -o OUT, --in-place or --push-to to write the patch", style="dim")
    return 0 if all_verified else 1


def _check_flags(args: argparse.Namespace) -> None:
    if args.in_place and args.output is not None:
        raise TemplatefixError("use either -o OUT or --in-place, not both")
    if args.no_backup and not args.in_place:
        raise TemplatefixError("--no-backup only applies to --in-place")
    if args.output == "-" and args.json:
        raise TemplatefixError("-o - and --json both write to stdout; pick one")


def _quiet_hub() -> None:
    """No progress bars or retry chatter from huggingface_hub: errors are reported in one line."""
    try:
        from huggingface_hub.utils import disable_progress_bars, logging

        disable_progress_bars()
        logging.set_verbosity_error()
    except Exception:  # pragma: no cover - cosmetic only
        pass


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _console(file: Any) -> Any:
    from rich.console import Console

    return Console(file=file, highlight=False, soft_wrap=True)


def _print_verdicts(
    console: Any,
    source: LoadedSource,
    patched: list[PatchedEntry],
    refused: list[PatchedEntry],
    args: argparse.Namespace,
) -> None:
    console.print(f"[bold]{escape(source.describe())}[/bold]: {len(patched)} template(s)")
    for item in patched:
        outcome = item.outcome()
        shadow = "" if item.entry.effective else " (shadowed: transformers ignores this copy)"
        if outcome.verified:
            state = "[green]✓ verified[/green]" + ("" if outcome.changed else " (unchanged)")
        else:
            state = "[red]✗ not verified[/red]"
        console.print(f"  {state}  {escape(item.entry.label + shadow)}")
        for reason in outcome.reasons if not outcome.verified else ():
            console.print(f"      - {reason}", markup=False)
        flags = list(getattr(item.result, "flags", []) or []) if outcome.verified else []
        if flags:
            # SPEC §3: say which turns teach text the model never produced, and the alternatives.
            console.print(
                f"      [yellow]{len(flags)} turn(s) flagged[/yellow]: the template rewrites history "
                "(or its generation prompt disagrees with its training render); e.g.",
            )
            console.print(f"      - {flags[0]}", markup=False)
        if item in refused:
            console.print(
                "      not written: failed verification (use --force to write it anyway)", style="yellow"
            )
    if args.output == "-":
        return
    for item in patched:
        diff = item.diff
        if not diff:
            continue
        for line in diff.splitlines():
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else None
            if line.startswith(("+++", "---", "@@")):
                style = "cyan"
            console.print(line, style=style, markup=False)


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
    repo_id: str,
    source: LoadedSource,
    patched: list[PatchedEntry],
    changed: dict[str, bytes],
    policy: Policy,
    args: argparse.Namespace,
    console: Any,
    all_verified: bool,
) -> dict[str, Any] | None:
    from templatefix import __version__
    from templatefix.hub import PushPlan, push

    if not all_verified and not args.force:
        if args.dry_run:
            if not args.json:
                console.print(
                    f"dry run: would not push to {repo_id}: not every template is verified "
                    "(--force overrides)",
                    style="yellow",
                )
            return {"repo_id": repo_id, "pushed": False, "blocked": True}
        raise NotVerifiedError(
            f"not pushed to {repo_id}: some templates failed verification (see above); "
            "fix them or use --force"
        )
    if not changed:
        if not args.json:
            console.print(f"nothing to push to {repo_id}: no file changed", markup=False)
        return None
    title, description = pull_request_text(
        [p.outcome() for p in patched],
        sorted(changed),
        source=source.describe(),
        policy=policy.to_dict(),
        special_tokens=source.templates.special_tokens,
        as_named=args.as_named,
        version=__version__,
    )
    same_repo = source.repo_id == repo_id
    branch = args.revision if (same_repo and args.revision and not _COMMIT_SHA.match(args.revision)) else None
    plan = PushPlan(
        repo_id,
        dict(changed),
        title,
        description,
        create_pr=args.create_pr,
        revision=branch,
        parent_commit=source.commit if same_repo and not args.create_pr else None,
    )
    if args.dry_run:
        if not args.json:
            _print_plan(console, plan)
        return {**plan.to_json(), "pushed": False, "blocked": False}
    push(plan)
    if not args.json:
        where = plan.result.get("pr_url") or plan.result.get("commit_url")
        console.print(f"pushed to {repo_id}: {where}", markup=False)
    return {**plan.to_json(), "pushed": True, "blocked": False}


def _print_plan(console: Any, plan: Any) -> None:
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
