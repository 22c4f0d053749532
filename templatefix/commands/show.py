"""`templatefix show SOURCE --tokenizer T`: every token of a conversation, trained or not.

Example:
    templatefix show Qwen3-8B/ --tokenizer Qwen3-8B/ --html view.html
"""

from __future__ import annotations

import argparse
from pathlib import Path

from templatefix.errors import SourceError, TemplateRejected


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show",
        help="show which tokens a template trains (terminal or HTML)",
        description="Tokenize a conversation with the template and the tokenizer, and show every token "
        "coloured trained / not trained (transformers' assistant_masks). A template without "
        "{% generation %} markers is patched first.",
    )
    parser.add_argument("source", metavar="SOURCE",
                        help=".jinja file, model directory or tokenizer_config.json")
    parser.add_argument(
        "--tokenizer", required=True, metavar="DIR_OR_ID", help="fast tokenizer: local directory or Hub id"
    )
    parser.add_argument("--conversation", metavar="FILE.json",
                        help="JSON list of messages, or {\"messages\": [...], \"tools\": [...], ...}; "
                        "default: a built-in example with a system message, a tool call and reasoning")
    parser.add_argument("--html", metavar="OUT.html", help="also write a standalone HTML page")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --html file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from templatefix.io.files import atomic_write
    from templatefix.io.sources import load_template
    from templatefix.jinja.markers import has_markers
    from templatefix.patch.api import patch_template
    from templatefix.show import (
        build_view,
        example_variants,
        load_conversation,
        render_html,
        render_terminal,
    )
    from templatefix.tokens import load_fast_tokenizer

    if args.html and Path(args.html).exists() and not args.force:
        raise SourceError(f"{args.html} exists: pass --force to overwrite it")
    loaded = load_template(args.source)
    template, described = loaded.text, loaded.describe()
    tokenizer = load_fast_tokenizer(args.tokenizer)

    notes: list[str] = []
    warnings: list[str] = []
    if not has_markers(template):
        result = patch_template(template)
        template = result.patched
        if not has_markers(template):
            warnings.append("the template has no {% generation %} markers and the patcher could not add "
                            "any: nothing is trained")
        elif result.verified:
            notes.append("the template had no {% generation %} markers: patched and verified")
        else:
            reasons = "; ".join(result.reasons) or "unknown reason"
            warnings.append(f"the template had no markers; the patch is NOT verified ({reasons}): "
                            "what you see may be wrong")

    if args.conversation:
        messages, kwargs = load_conversation(args.conversation)
        view = build_view(template, tokenizer, messages, **kwargs)
    else:
        found = None
        rejected = []
        for label, messages, kwargs in example_variants():
            try:
                found = build_view(template, tokenizer, messages, **kwargs)
            except TemplateRejected as error:
                rejected.append(str(error))
                continue
            notes.append(f"built-in example: {label}")
            break
        if found is None:
            raise TemplateRejected(f"the template rejects every built-in example ({rejected[-1]}); "
                                   "give one with --conversation")
        view = found
    view.title = f"{described} with {args.tokenizer}"
    view.notes[:0] = notes
    view.warnings[:0] = warnings
    render_terminal(view, Console(highlight=False))
    if args.html:
        atomic_write(Path(args.html), render_html(view), require_folder=True)
        Console(stderr=True).print(f"wrote {args.html}")
    return 1 if warnings else 0
