"""``templatefix app``: the web app (Gradio) on this machine.

Needs the ``app`` extra: ``pip install "templatefix[app]"``. Pull requests are opened with a token
pasted into the page (on a Hugging Face Space, with the visitor's own sign-in), never with a token
of the machine's.

Example:
    templatefix app --port 7860
"""

from __future__ import annotations

import argparse

from templatefix.errors import TemplatefixError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "app",
        help="serve the web app: patch, verify, look and open pull requests in a browser",
        description="Serve the templatefix web app (Gradio). Needs: pip install 'templatefix[app]'.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes that patch (default 2)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise TemplatefixError("--workers must be at least 1")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise TemplatefixError("the web app needs Gradio: pip install 'templatefix[app]'") from None
    from templatefix.ui.app import Workers, build_app

    workers = Workers(args.workers)
    try:
        build_app(workers).launch(server_name=args.host, server_port=args.port)
    finally:
        workers.close()
    return 0
