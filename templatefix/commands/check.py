"""`templatefix check SOURCE`: is this marked template correct by SPEC.md?

SOURCE is a ``.jinja`` file, a ``tokenizer_config.json``, or a model directory (every template
in it is checked: ``chat_template.jinja``, ``additional_chat_templates/``, the
``chat_template`` key as a string or a list of ``{name, template}``). ``--original`` names the
unmarked template(s) it was made from; with it, rule 1 (byte-identical renders) is checked too.

Exit status: 0 when every template is verified, 1 when one is not, 2 on bad input.

Example:
    $ templatefix check patched.jinja --original original.jinja --turns last
    $ templatefix check ./my-model --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from templatefix.errors import SourceError, TemplatefixError
from templatefix.policy import Policy


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="verify a template's {% generation %} markers against SPEC.md",
        description="Verify {% generation %} markers: rendering unchanged (with --original), spans exactly "
        "what the model generates. Exit 0 verified, 1 not verified, 2 bad input.",
    )
    parser.add_argument(
        "source", metavar="SOURCE", help=".jinja file, tokenizer_config.json or model directory"
    )
    parser.add_argument("--original", metavar="ORIG", help="the unmarked template(s) SOURCE was made from")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.add_argument(
        "--tokenizer", metavar="DIR_OR_ID", help="also check token masks with this fast tokenizer"
    )
    add_policy_arguments(parser, trailing_whitespace_default=None)
    parser.set_defaults(handler=run)


def add_policy_arguments(
    parser: argparse.ArgumentParser, trailing_whitespace_default: str | None = "out"
) -> None:
    """The SPEC §6 policy options, shared by commands that judge or place spans.

    ``trailing_whitespace_default=None`` (for ``check``) accepts either: SPEC rule 2 allows the
    whitespace after the end-of-turn text in or out of the span.
    """
    group = parser.add_argument_group("policy (SPEC §6; default first)")
    group.add_argument("--turns", choices=("all", "last"), default="all")
    group.add_argument(
        "--reasoning", choices=("trained", "not_trained", "final_channel_only"), default="trained"
    )
    group.add_argument(
        "--trailing-whitespace",
        choices=("out", "in"),
        default=trailing_whitespace_default,
        help="whitespace after the end-of-turn text"
        + ("" if trailing_whitespace_default else " (default: either is accepted, as SPEC rule 2 allows)"),
    )
    group.add_argument("--tool-calls", choices=("trained", "not_trained"), default="trained")


def policy_from_args(args: argparse.Namespace) -> Policy:
    return Policy(
        turns=args.turns,
        reasoning=args.reasoning,
        trailing_whitespace=args.trailing_whitespace or "out",
        tool_calls=args.tool_calls,
    )


def _templates(spec: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """``([(label, template)], special tokens)`` for SOURCE; empty templates are bad input."""
    from templatefix.sources import load_source

    source = load_source(spec)
    entries = [entry for entry in source.templates if entry.effective] or list(source.templates)
    templates = []
    for entry in entries:
        if not entry.template.strip():
            where = f"{spec}: {entry.label}" if len(entries) > 1 else spec
            raise SourceError(f"{where}: the template is empty")
        templates.append((entry.label if len(entries) > 1 else spec, entry.template))
    return templates, dict(source.templates.special_tokens)


def _pair_originals(patched: list[tuple[str, str]], original_spec: str | None) -> list[str | None]:
    """The original for each patched template: the only one, or the one at the same position."""
    if original_spec is None:
        return [None] * len(patched)
    originals, _ = _templates(original_spec)
    if len(originals) == 1:
        return [originals[0][1]] * len(patched)
    if len(originals) != len(patched):
        raise SourceError(
            f"{original_spec}: holds {len(originals)} templates but SOURCE holds {len(patched)}: "
            "give one original, or one per template"
        )
    return [text for _, text in originals]


def run(args: argparse.Namespace) -> int:
    from templatefix.verify import verify

    policy = policy_from_args(args)
    patched, special_tokens = _templates(args.source)
    originals = _pair_originals(patched, args.original)
    tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else None
    reports = []
    either_whitespace = args.trailing_whitespace is None
    for (label, template), original in zip(patched, originals, strict=True):
        try:
            report = verify(
                template,
                original,
                policy=policy,
                special_tokens=special_tokens or None,
                tokenizer=tokenizer,
                name=label,
            )
            if either_whitespace and not report.verified:
                # SPEC rule 2: trailing whitespace may also be in the span
                inside = verify(
                    template,
                    original,
                    policy=dataclasses.replace(policy, trailing_whitespace="in"),
                    special_tokens=special_tokens or None,
                    tokenizer=tokenizer,
                    name=label,
                )
                if inside.verified:
                    report = inside
        except TemplatefixError as error:
            # name which template is broken; keep the error's own exit code (2: bad input)
            raise type(error)(f"{label}: {error}") from None
        reports.append(report)

    if args.json:
        payload: dict[str, Any] = {
            "verified": all(report.verified for report in reports),
            "templates": [report.to_json() for report in reports],
        }
        json.dump(payload, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        from rich.console import Console

        from templatefix.report import print_report

        console = Console()
        for report in reports:
            print_report(report, console)
    return 0 if all(report.verified for report in reports) else 1


def _load_tokenizer(path: str) -> Any:
    from templatefix.tokens import load_fast_tokenizer

    return load_fast_tokenizer(path)
