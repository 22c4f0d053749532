"""The ``templatefix`` command line.

Each subcommand lives in ``templatefix.commands.<name>`` and exposes ``register(subparsers)``,
which adds its parser and sets ``handler`` (a function taking the parsed args and returning the
exit code).

Exit codes: 0 verified / clean; 1 not verified / problems found; 2 bad input (one line, never a
traceback); 3 an internal error, a bug in templatefix: one line, plus how to see the traceback
(``--debug`` anywhere on the command line, or ``TEMPLATEFIX_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

COMMANDS = ("patch", "check", "corpus", "show", "audit", "app")

#: Set to 1 to see the traceback of an internal error.
DEBUG_ENV = "TEMPLATEFIX_DEBUG"
INTERNAL_ERROR_EXIT = 3


def build_parser() -> argparse.ArgumentParser:
    from templatefix import __version__

    parser = argparse.ArgumentParser(
        prog="templatefix",
        description="Make chat templates train-ready: exact {% generation %} markers, verified.",
        epilog="exit status: 0 verified / clean, 1 not verified / problems found, 2 bad input, "
        f"3 internal error (add --debug or set {DEBUG_ENV}=1 for the traceback)",
    )
    parser.add_argument("--version", action="version", version=f"templatefix {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"templatefix.commands.{name}")
        module.register(subparsers)
    return parser


def _quiet_transformers() -> None:
    """transformers' advisory warnings are noise on a terminal; the library leaves them alone."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (``python -m templatefix`` and the console script)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    arguments = [a for a in arguments if a != "--debug"]
    try:
        return _run(arguments)
    except KeyboardInterrupt:
        print("templatefix: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug in templatefix: one line unless asked for the traceback
        if debug:
            raise
        print(
            f"templatefix: internal error: {type(error).__name__}: {error} "
            f"(this is a bug in templatefix; run again with --debug or {DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        return INTERNAL_ERROR_EXIT


def _run(arguments: list[str]) -> int:
    from templatefix.errors import TemplatefixError

    _quiet_transformers()
    parser = build_parser()
    args = parser.parse_args(arguments)
    if not getattr(args, "handler", None):
        parser.print_usage(sys.stderr)
        print("templatefix: error: a COMMAND is required (see templatefix --help)", file=sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except TemplatefixError as error:
        print(f"templatefix: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # files and network: the user's environment, not our bug
        print(f"templatefix: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
