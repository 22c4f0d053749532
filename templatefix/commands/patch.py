"""`templatefix patch` (not implemented yet)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("patch", help="(not implemented yet)")
    parser.set_defaults(handler=lambda args: 2)
