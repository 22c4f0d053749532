"""The web app (``templatefix app``, or ``app.py`` as a Hugging Face Space): patch, look, propose.

Input: a Hub model id (and revision), or a pasted or uploaded template, and the policy options.
Output: the verdict with its reasons, the diff, the inference-engine table, the coloured view of a
sample conversation (tokens when the repo has a tokenizer, characters otherwise) and the patched
``chat_template.jinja`` to download. A pull request is opened with the *user's* token (the Space's
"Sign in with Hugging Face" button, or a pasted token when run locally), never a token of the
app's own: every Hub call is made with that token, or with none.

The work is split by kind. Hub reads and the pull request run in the request's thread (network
I/O, bounded by huggingface_hub's timeouts). Patching, verifying, the engine check and the token
view run in a pool of worker processes, with templatefix's render bounds, and with a deadline per
request (``TEMPLATEFIX_APP_SECONDS``, default 300): a pool that misses it is replaced, so one
user's template cannot stall another's request. Bad input is a message in the page, never a
traceback.

The functions below the page (``patch_request``, ``open_pull_request``) are the app's logic and
take plain values; the page only wires them to components, so they are tested through the API
(``gradio_client``) and in a browser alike.

Example:
    >>> demo = build_app()  # doctest: +SKIP
    >>> demo.launch()  # doctest: +SKIP
"""

from __future__ import annotations

import html
import multiprocessing
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from templatefix.errors import TemplatefixError
from templatefix.policy import Policy
from templatefix.reference import reference_templates

#: Longest template the page accepts (characters); real chat templates are far below it.
MAX_TEMPLATE_CHARS = 200_000
#: Seconds one request may spend in the worker before it is abandoned.
DEADLINE_ENV = "TEMPLATEFIX_APP_SECONDS"
DEFAULT_DEADLINE = 300.0

#: Flagged turns listed in the verdict (the rest are counted).
FLAGS_SHOWN = 5

TURNS = ("all", "last")
REASONING = ("trained", "not_trained", "final_channel_only")
TOOL_CALLS = ("trained", "not_trained")
TRAILING = ("out", "in")

_STATUS_MARK = {"exact": "✅", "flagged": "⚠️", "unverified-code": "❔", "refused": "❌"}


class InputError(TemplatefixError):
    """What the page says back about its input (one line)."""


@dataclass(frozen=True)
class Request:
    """One press of *Patch and verify*: the source and the policy, as the page gives them."""

    model_id: str = ""
    revision: str = ""
    template: str = ""
    turns: str = "all"
    reasoning: str = "trained"
    tool_calls: str = "trained"
    trailing_whitespace: str = "out"
    train_field: str = ""

    def policy(self) -> Policy:
        try:
            return Policy(
                turns=self.turns,  # type: ignore[arg-type]
                reasoning=self.reasoning,  # type: ignore[arg-type]
                tool_calls=self.tool_calls,  # type: ignore[arg-type]
                trailing_whitespace=self.trailing_whitespace,  # type: ignore[arg-type]
                train_field=self.train_field.strip() or None,
            )
        except ValueError as error:
            raise InputError(str(error)) from None


@dataclass
class Outcome:
    """What the page shows for one request (plain data: it crosses the worker's process boundary)."""

    verdict: str
    diff: str = ""
    engines: str = ""
    view_html: str = ""
    patched: str | None = None
    verified: bool = False
    statuses: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- the worker


class Workers:
    """A pool of worker processes with a deadline per call; a pool that misses one is replaced.

    Processes are started with ``spawn``, so a worker holds no copy of the server's threads.
    """

    def __init__(self, processes: int = 2, deadline: float | None = None) -> None:
        self.processes = processes
        self.deadline = deadline if deadline is not None else float(
            os.environ.get(DEADLINE_ENV, DEFAULT_DEADLINE)
        )
        self._lock = threading.Lock()
        self._pool: Any = None

    def _get(self) -> Any:
        with self._lock:
            if self._pool is None:
                context = multiprocessing.get_context("spawn")
                self._pool = context.Pool(self.processes)
            return self._pool

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in a worker; ``InputError`` when it takes longer than the deadline."""
        pool = self._get()
        pending = pool.apply_async(function, args)
        try:
            return pending.get(self.deadline)
        except multiprocessing.TimeoutError:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.terminate()
            raise InputError(
                f"this template took longer than {self.deadline:.0f} s to patch and verify; stopped"
            ) from None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()


def _analyze(source: Any, policy: Policy, tokenizer_dir: str | None) -> Outcome:
    """Patch every template of ``source``, check the engines, and build the view (in a worker)."""
    from templatefix.commands.propose import prepare

    repo = prepare(source, policy, engines=True)
    return Outcome(
        verdict=_verdict_markdown(repo),
        diff="\n".join(p.diff for p in repo.patched if p.changed) or "(no change)",
        engines=_engines_markdown(repo),
        view_html=_view_html(repo, tokenizer_dir),
        patched=_default_patched(repo),
        verified=repo.verified,
        statuses=[p.result.status for p in repo.patched],
    )


def _verdict_markdown(repo: Any) -> str:
    lines = []
    for item in repo.patched:
        result = item.result
        status = result.status
        lines.append(f"### {_STATUS_MARK.get(status, '')} `{item.entry.label}`: **{status}**")
        if status in ("exact", "flagged"):
            lines.append(
                "Verified: every probe conversation passes SPEC rules 1–3 and every output was reached."
            )
        for reason in result.reasons:
            lines.append(f"- {_escape(reason)}")
        for flag in result.flags[:FLAGS_SHOWN]:
            lines.append(f"- flagged: {_escape(flag)}")
        if len(result.flags) > FLAGS_SHOWN:
            lines.append(f"- … and {len(result.flags) - FLAGS_SHOWN} more flagged turns (see the report)")
        for where in result.unverified_code[:20]:
            lines.append(f"- unreached: `{where}`")
    if not repo.verified:
        lines.append("\nNot verified: nothing should be written or proposed without a look at the reasons.")
    return "\n".join(lines)


def _engines_markdown(repo: Any) -> str:
    from templatefix.engines import engines_table

    results = repo.engine_results
    if not results:
        return "No engine check: nothing changed, or the patch is not verified."
    return "\n".join(engines_table(results))


def _default_patched(repo: Any) -> str | None:
    default = next((p for p in repo.patched if p.entry.name == "default"), None)
    chosen = default or (repo.patched[0] if repo.patched else None)
    return chosen.result.patched if chosen is not None else None


def _view_html(repo: Any, tokenizer_dir: str | None) -> str:
    """The coloured view of the built-in sample conversation under the default patched template."""
    from templatefix.errors import RenderError
    from templatefix.show import build_text_view, build_view, example_variants, render_html

    template = _default_patched(repo)
    if template is None:
        return ""
    tokenizer = None
    if tokenizer_dir is not None:
        from templatefix.tokens import load_fast_tokenizer

        tokenizer = load_fast_tokenizer(tokenizer_dir)
    for title, messages, kwargs in example_variants():
        try:
            if tokenizer is not None:
                view = build_view(template, tokenizer, messages, **kwargs)
            else:
                view = build_text_view(template, messages, **kwargs)
        except (RenderError, TemplatefixError):
            continue
        view.title = f"Sample conversation: {title}"
        return _body(render_html(view))
    return "<p>The template rejects every sample conversation.</p>"


def _body(page: str) -> str:
    """The style and body of a standalone page, to sit inside the app's own page."""
    style_start, style_end = page.find("<style>"), page.find("</style>")
    style = page[style_start:style_end + len("</style>")] if style_start >= 0 else ""
    style = style.replace("body {", ".templatefix-view {")  # the page's own body keeps its style
    body = page[page.find("<body>") + len("<body>"):page.rfind("</body>")]
    return f'<div class="templatefix-view">{style}{body}</div>'


def _escape(text: object) -> str:
    return html.escape(str(text)).replace("\n", " ")


# --------------------------------------------------------------------------- the logic


def _source_of(request: Request, token: str | bool) -> Any:
    """The LoadedSource of a request (Hub reads here, in the request's thread)."""
    from templatefix.io.layout import TemplateEntry, TemplateSet
    from templatefix.io.sources import LoadedSource, load_source
    from templatefix.source import TemplateSource

    model_id, text = request.model_id.strip(), request.template
    if model_id and text.strip():
        raise InputError("give a Hub model id or a template, not both")
    if text.strip():
        if len(text) > MAX_TEMPLATE_CHARS:
            raise InputError(
                f"the template has {len(text):,} characters; the page takes at most {MAX_TEMPLATE_CHARS:,}"
            )
        TemplateSource.parse(text)  # not Jinja: one line with its line number
        name = "chat_template.jinja"
        templates = TemplateSet([TemplateEntry("default", text, name, "jinja_file")], {name: text.encode()})
        return LoadedSource("pasted template", "file", Path(tempfile.gettempdir()), templates)
    if not model_id:
        raise InputError("give a Hub model id (owner/name) or paste a template")
    if "/" not in model_id or model_id.startswith((".", "/")):
        raise InputError(f"{model_id!r} is not a Hub model id (owner/name)")
    source = load_source(model_id, revision=request.revision.strip() or None, token=token)
    for entry in source.templates.entries:
        if len(entry.template) > MAX_TEMPLATE_CHARS:
            raise InputError(
                f"{entry.label} has {len(entry.template):,} characters; the page takes at most "
                f"{MAX_TEMPLATE_CHARS:,}"
            )
    return source


def _tokenizer_of(request: Request, token: str | bool) -> str | None:
    if not request.model_id.strip():
        return None
    from templatefix.io.hub import download_tokenizer

    try:
        folder = download_tokenizer(
            request.model_id.strip(), revision=request.revision.strip() or None, token=token
        )
    except TemplatefixError:
        return None  # the view falls back to characters
    return str(folder) if folder is not None else None


def patch_request(
    request: Request,
    workers: Workers,
    *,
    token: str | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> Outcome:
    """Patch and verify what ``request`` names; every failure becomes an ``Outcome`` message."""
    step = progress or (lambda fraction, what: None)
    try:
        policy = request.policy()
        step(0.05, "reading the template")
        source = _source_of(request, token or False)
        tokenizer_dir = _tokenizer_of(request, token or False)
        step(0.2, "patching and verifying on every probe conversation")
        outcome: Outcome = workers.run(_analyze, source, policy, tokenizer_dir)
        step(1.0, "done")
        return outcome
    except TemplatefixError as error:
        return Outcome(verdict=f"**Error:** {_escape(error)}")
    except Exception as error:  # a bug in templatefix: one line in the page, never a traceback
        what = f"{type(error).__name__}: {_escape(error)}"
        return Outcome(verdict=f"**Internal error** (a bug in templatefix): {what}")


def _prepare_pr(source: Any, policy: Policy) -> Any:
    from templatefix.commands.propose import prepare

    return prepare(source, policy, create_pr=True, engines=True)


def open_pull_request(request: Request, workers: Workers, *, token: str | None) -> str:
    """Open the same polite, idempotent pull request as ``patch --create-pr``, as the user."""
    from templatefix.commands.propose import propose

    if not token:
        return (
            "**Sign in** with Hugging Face (or paste a token with write access) to open a pull "
            "request: it is opened as you, and the app has no token of its own."
        )
    if not request.model_id.strip() or request.template.strip():
        return "**Error:** a pull request needs a Hub model id (and no pasted template)."
    try:
        policy = request.policy()
        source = _source_of(request, token)
        repo = workers.run(_prepare_pr, source, policy)
        proposal = propose(source.repo_id, repo, policy, create_pr=True, token=token)
    except TemplatefixError as error:
        return f"**Error:** {_escape(error)}"
    except Exception as error:  # a bug in templatefix: one line in the page
        return f"**Internal error** (a bug in templatefix): {type(error).__name__}: {_escape(error)}"
    link = f" [{proposal.url}]({proposal.url})" if proposal.url else ""
    return f"**{proposal.status}**: {_escape(proposal.message)}{link}"


# --------------------------------------------------------------------------- the page


def _in_space() -> bool:
    """On a Hugging Face Space with OAuth enabled (``hf_oauth: true``): show the sign-in button."""
    return bool(os.environ.get("SPACE_ID") and os.environ.get("OAUTH_CLIENT_ID"))


def _write_download(text: str | None) -> str | None:
    if text is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="templatefix-app-"))
    path = folder / "chat_template.jinja"
    path.write_text(text, encoding="utf-8", newline="")
    return str(path)


def build_app(workers: Workers | None = None, *, oauth: bool | None = None) -> Any:
    """The Gradio page. ``oauth``: show *Sign in with Hugging Face* (default: on a Space with OAuth)."""
    import gradio as gr

    pool = workers or Workers()
    use_oauth = _in_space() if oauth is None else oauth

    def on_patch(
        model_id: str, revision: str, template: str, turns: str, reasoning: str, tool_calls: str,
        trailing: str, train_field: str, progress: Any = gr.Progress(),  # noqa: B008 - Gradio's way
    ) -> tuple[str, str, str, str, str | None]:
        request = Request(model_id or "", revision or "", template or "", turns, reasoning, tool_calls,
                          trailing, train_field or "")
        outcome = patch_request(request, pool, progress=lambda f, what: progress(f, desc=what))
        download = _write_download(outcome.patched)
        return outcome.verdict, outcome.diff, outcome.engines, outcome.view_html, download

    def on_upload(path: str | None) -> tuple[str, str]:
        """The uploaded file goes into the paste box (what is patched is what the page shows)."""
        if not path:
            return "", ""
        if Path(path).stat().st_size > 4 * MAX_TEMPLATE_CHARS:
            return "", f"**Error:** the file is larger than {MAX_TEMPLATE_CHARS:,} characters"
        try:
            return Path(path).read_text(encoding="utf-8"), ""
        except UnicodeDecodeError:
            return "", "**Error:** the file is not UTF-8 text"

    def request_of(model_id: str, revision: str, turns: str, reasoning: str, tool_calls: str,
                   trailing: str, train_field: str) -> Request:
        return Request(model_id or "", revision or "", "", turns, reasoning, tool_calls, trailing,
                       train_field or "")

    with gr.Blocks(title="templatefix") as demo:
        gr.Markdown(
            "# templatefix\nExact `{% generation %}` markers for any chat template, verified "
            "(assistant-only loss in TRL's `SFTTrainer`). Give a Hub model id or paste a template."
        )
        with gr.Row():
            with gr.Column():
                model_id = gr.Textbox(
                    label="Hub model id", placeholder="openai/gpt-oss-20b", elem_id="model-id"
                )
                revision = gr.Textbox(label="Revision (optional)", placeholder="main", elem_id="revision")
            with gr.Column():
                template = gr.Textbox(label="…or paste a template", lines=8, max_lines=30, elem_id="template")
                upload = gr.File(
                    label="…or upload a .jinja file", type="filepath", file_types=[".jinja", ".txt"]
                )
                references = reference_templates()
                reference = gr.Dropdown(
                    ["", *references], value="", label="…or start from a reference template",
                    elem_id="reference",
                )
        with gr.Accordion("Policy", open=False):
            with gr.Row():
                turns = gr.Dropdown(list(TURNS), value="all", label="Turns")
                reasoning = gr.Dropdown(list(REASONING), value="trained", label="Reasoning")
                tool_calls = gr.Dropdown(list(TOOL_CALLS), value="trained", label="Tool calls")
                trailing = gr.Dropdown(list(TRAILING), value="out", label="Trailing whitespace")
                train_field = gr.Textbox(label="Train field (optional)", placeholder="train")
        run = gr.Button("Patch and verify", variant="primary", elem_id="run")
        verdict = gr.Markdown(elem_id="verdict")
        with gr.Tab("Diff"):
            diff = gr.Textbox(label="Diff", lines=16, max_lines=60, interactive=False, elem_id="diff")
        with gr.Tab("Engines"):
            engines = gr.Markdown(elem_id="engines")
        with gr.Tab("Token view"):
            view = gr.HTML(elem_id="view")
        with gr.Tab("Download"):
            download = gr.File(label="chat_template.jinja", elem_id="download")
        with gr.Accordion("Open a pull request on the model repo", open=False):
            gr.Markdown(
                "The same polite, idempotent pull request as `templatefix patch --create-pr`, opened "
                "with **your** token. An earlier templatefix PR for the same template is named instead."
            )
            inputs = [model_id, revision, turns, reasoning, tool_calls, trailing, train_field]
            if use_oauth:
                gr.LoginButton()
            else:
                token_box = gr.Textbox(label="Your Hugging Face token (write access)", type="password")
            pr_button = gr.Button("Open pull request", elem_id="open-pr")
            pr_result = gr.Markdown(elem_id="pr-result")

            def on_pr_oauth(
                model_id: str, revision: str, turns: str, reasoning: str, tool_calls: str, trailing: str,
                train_field: str, oauth_token: Any = None,
            ) -> str:
                token = oauth_token.token if oauth_token is not None else None
                request = request_of(model_id, revision, turns, reasoning, tool_calls, trailing, train_field)
                return open_pull_request(request, pool, token=token)

            def on_pr(
                model_id: str, revision: str, turns: str, reasoning: str, tool_calls: str, trailing: str,
                train_field: str, token: str,
            ) -> str:
                request = request_of(model_id, revision, turns, reasoning, tool_calls, trailing, train_field)
                return open_pull_request(request, pool, token=token or None)

            if use_oauth:
                # Gradio passes the signed-in user's token to a parameter of this type.
                on_pr_oauth.__annotations__["oauth_token"] = gr.OAuthToken | None
                pr_button.click(on_pr_oauth, inputs, pr_result, api_name="open_pr")
            else:
                pr_button.click(on_pr, [*inputs, token_box], pr_result, api_name="open_pr")
        upload.upload(on_upload, upload, [template, verdict], api_name=False)
        reference.input(
            lambda name: references[name].read_text(encoding="utf-8") if name in references else "",
            reference, template, api_name=False,
        )
        run.click(
            on_patch,
            [model_id, revision, template, turns, reasoning, tool_calls, trailing, train_field],
            [verdict, diff, engines, view, download],
            api_name="patch",
        )
    demo.queue(default_concurrency_limit=pool.processes)
    return demo
