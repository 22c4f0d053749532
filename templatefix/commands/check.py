"""`templatefix check SOURCE`: is this marked template correct by SPEC.md?

SOURCE is a ``.jinja`` file, a ``tokenizer_config.json``, or a model directory (every template
in it is checked: ``chat_template.jinja``, ``additional_chat_templates/``, the
``chat_template`` key as a string or a list of ``{name, template}``). ``--original`` names the
unmarked template(s) it was made from; with it, rule 1 (byte-identical renders) is checked too.

Exit status: 0 when every template is verified; 1 when one fails; 4 when none fails but some
output of a template was reached by no probe (unverified code: SPEC §4 does not call it verified);
2 on bad input.

Example:
    $ templatefix check patched.jinja --original original.jinja --turns last
    $ templatefix check ./my-model --json
    $ templatefix check Qwen/Qwen2.5-7B-Instruct --engines   # what a templatefix PR would do

``--engines`` also renders the original and the marked template in every inference engine
installed here (``templatefix.engines``: transformers, plain jinja2, minijinja,
@huggingface/jinja) and says, per engine, whether the two render identically. A SOURCE without
markers is patched first, so the check covers the patch templatefix would make; without
``--original`` the original is SOURCE with its markers stripped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from templatefix.errors import SourceError, TemplatefixError
from templatefix.policy import Policy
from templatefix.report import exit_code


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="verify a template's {%% generation %%} markers against SPEC.md",
        description="Verify {% generation %} markers: rendering unchanged (with --original), spans exactly "
        "what the model generates, every output reached by a probe. Exit 0 verified, 1 not verified, "
        "4 every probe passes but some outputs were never reached (unverified code), 2 bad input.",
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help=".jinja file, tokenizer_config.json, model directory, or Hub repo id (owner/name)",
    )
    parser.add_argument("--revision", help="Hub branch, tag or commit (Hub SOURCE only)")
    parser.add_argument("--original", metavar="ORIG", help="the unmarked template(s) SOURCE was made from")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.add_argument(
        "--tokenizer", metavar="DIR_OR_ID", help="also check token masks with this fast tokenizer"
    )
    parser.add_argument(
        "--engines",
        action="store_true",
        help="also render original and marked template in every inference engine installed here "
        "(an unmarked SOURCE is patched first)",
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
    group.add_argument(
        "--turns",
        choices=("all", "last", "last_message"),
        default="all",
        help="all assistant turns; the last turn (every assistant message after the last user message); "
        "or the last assistant message only",
    )
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
    group.add_argument(
        "--tool-calls",
        choices=("trained", "not_trained"),
        default="trained",
        help="not_trained: the calls, the markup that opens them and the end-of-turn text after them "
        "are outside; the text beside them stays inside",
    )
    group.add_argument(
        "--train-field",
        metavar="NAME",
        help="message field that switches a turn's training off when false (e.g. train); absent or true: "
        "trained",
    )


def policy_from_args(args: argparse.Namespace) -> Policy:
    try:
        return Policy(
            turns=args.turns,
            reasoning=args.reasoning,
            trailing_whitespace=args.trailing_whitespace or "out",
            tool_calls=args.tool_calls,
            train_field=getattr(args, "train_field", None),
        )
    except ValueError as error:
        raise TemplatefixError(str(error)) from None


def _templates(spec: str, revision: str | None = None) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """``([(label, template)], special tokens)`` for SOURCE; empty templates are bad input."""
    from templatefix.io.sources import load_source

    source = load_source(spec, revision=revision)
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
    patched, special_tokens = _templates(args.source, args.revision)
    originals = _pair_originals(patched, args.original)
    tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else None
    reports = []
    engine_results: list[list[Any]] = []
    either_whitespace = args.trailing_whitespace is None
    for (label, template), original in zip(patched, originals, strict=True):
        if args.engines:
            template, original, results = _engine_check(template, original, policy, special_tokens)
            engine_results.append(results)
        try:
            report = verify(
                template,
                original,
                policy=policy,
                special_tokens=special_tokens or None,
                tokenizer=tokenizer,
                name=label,
            )
            if either_whitespace and not report.passed:
                # SPEC rule 2: trailing whitespace may also be in the span
                inside = verify(
                    template,
                    original,
                    policy=dataclasses.replace(policy, trailing_whitespace="in"),
                    special_tokens=special_tokens or None,
                    tokenizer=tokenizer,
                    name=label,
                )
                if inside.passed:
                    report = inside
        except TemplatefixError as error:
            # name which template is broken; keep the error's own exit code (2: bad input)
            raise type(error)(f"{label}: {error}") from None
        reports.append(report)

    if args.json:
        payload: dict[str, Any] = {
            "verified": all(report.verified for report in reports),
            "status": [report.status for report in reports],
            "templates": [report.to_json() for report in reports],
        }
        for entry, results in zip(payload["templates"], engine_results, strict=False):
            entry["engines"] = [result.to_json() for result in results]
        json.dump(payload, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        from rich.console import Console

        from templatefix.engines import print_engines
        from templatefix.report import print_report

        console = Console()
        for index, report in enumerate(reports):
            print_report(report, console)
            if engine_results:
                print_engines(engine_results[index], console, f"{report.template_name}: inference engines")
    return exit_code([report.status for report in reports])


def _engine_check(
    template: str, original: str | None, policy: Policy, special_tokens: dict[str, str]
) -> tuple[str, str | None, list[Any]]:
    """``(marked template, original to verify against, engine results)`` for ``check --engines``.

    An unmarked template is patched first (the check then covers the patch templatefix makes,
    verified against the template itself); without an original the engines compare the marked
    template with its markers stripped.
    """
    import templatefix
    from templatefix.engines import check_engines
    from templatefix.jinja.markers import has_markers
    from templatefix.patch.strip import strip_generation_markers

    if not has_markers(template) and original is None:
        original = template
        template = templatefix.patch_template(template, policy=policy).patched
    baseline = original if original is not None else strip_generation_markers(template)
    return template, original, check_engines(baseline, template, special_tokens=special_tokens or None)


def _load_tokenizer(path: str) -> Any:
    from templatefix.tokens import load_fast_tokenizer

    return load_fast_tokenizer(path)
