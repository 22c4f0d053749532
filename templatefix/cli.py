"""The ``templatefix`` command line.

Each subcommand lives in ``templatefix.commands.<name>`` and exposes ``register(subparsers)``,
which adds its parser and sets ``handler`` (a function taking the parsed args and returning the
exit code). Errors the user can fix (``TemplatefixError``) print as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

COMMANDS = ("patch", "check", "corpus", "show", "audit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="templatefix",
        description="Make chat templates train-ready: exact {% generation %} markers, verified.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"templatefix.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from templatefix.errors import TemplatefixError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except TemplatefixError as error:
        print(f"templatefix: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("templatefix: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError) as error:
        print(f"templatefix: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
