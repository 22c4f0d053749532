"""The inference engines a chat template is read by, each behind one small class.

Every engine renders a list of templates on a list of :class:`RenderContext` and returns, per
template and context, a :class:`Rendered` (the text, or the engine's error in one line). An
engine that is not installed says so through :class:`Unavailable` instead of rendering.

- ``transformers``: jinja2 as ``apply_chat_template`` runs it (``templatefix.render``), the
  reference; it reads ``{% generation %}``.
- ``jinja2 (plain)``: a plain ``ImmutableSandboxedEnvironment(trim_blocks=True,
  lstrip_blocks=True)`` without transformers' extensions, as llama-cpp-python and
  text-generation-webui build it.
- ``minijinja``: the Rust engine behind TGI and mistral.rs, through its Python binding
  (``pip install "templatefix[engines]"``).
- ``@huggingface/jinja``: transformers.js and the Hub's template preview, through ``node`` and a
  small runner shipped with templatefix (``npm install --prefix DIR @huggingface/jinja``, see
  :func:`node_search_dirs`).

Example:
    >>> context = RenderContext("hello", [{"role": "user", "content": "hi"}])
    >>> [r.text for r in PlainJinja2().render(["{{ messages[0].content }}"], [context])[0]]
    ['hi']
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from templatefix import clock
from templatefix.errors import RenderError, TemplatefixError

#: Seconds the node runner may take for one batch of renders.
NODE_TIMEOUT = 120.0
#: minijinja's bound on work per render (its "fuel"), like templatefix.jinja's bounds for jinja2.
MINIJINJA_FUEL = 50_000_000
#: The npm package and version range the node runner expects.
HF_JINJA_PACKAGE = "@huggingface/jinja@^0.5"


class Unavailable(TemplatefixError):
    """The engine is not installed here; the message says how to install it."""


@dataclass(frozen=True)
class RenderContext:
    """One render: a conversation and the arguments a chat template sees.

    Attributes:
        label: where it comes from, e.g. ``"tool_calls"`` or ``"tool_calls (prompt)"``.
        messages: the conversation (plain data).
        add_generation_prompt: render the generation prompt after the last message.
        tools, documents: as ``apply_chat_template`` passes them.
        special_tokens: ``bos_token``/``eos_token``/... values.
        kwargs: other template arguments (flags such as ``enable_thinking``).
    """

    label: str
    messages: Sequence[Mapping[str, Any]]
    add_generation_prompt: bool = False
    tools: Sequence[Mapping[str, Any]] | None = None
    documents: Sequence[Mapping[str, Any]] | None = None
    special_tokens: Mapping[str, Any] = field(default_factory=dict)
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def variables(self) -> dict[str, Any]:
        """Every variable, as JSON-plain data (what an engine outside Python receives).

        Inputs are prepared as the installed ``apply_chat_template`` prepares them (``None``
        message fields dropped, reasoning aliased, when it does so).
        """
        from templatefix.environment import prepare_inputs

        arguments = {**self.special_tokens, **self.kwargs}
        inputs = prepare_inputs(self.messages, self.tools, self.documents, arguments)
        variables = inputs.variables(self.add_generation_prompt)
        return json.loads(json.dumps(variables, default=str))


@dataclass(frozen=True)
class Rendered:
    """An engine's answer for one template and one context: ``text`` or ``error`` (and, where the
    engine says, ``error_type``: the name of the exception the template raised)."""

    text: str | None = None
    error: str | None = None
    error_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Engine:
    """An inference engine's template renderer.

    Attributes:
        name: the engine's name in reports.
        used_by: who reads templates with it (for the reader of a report).
    """

    name = ""
    used_by = ""

    def version(self) -> str:
        """The installed version. Raises ``Unavailable`` when the engine is missing."""
        raise NotImplementedError

    def render(self, templates: Sequence[str], contexts: Sequence[RenderContext]) -> list[list[Rendered]]:
        """``result[t][c]``: template ``t`` rendered on context ``c``. Raises ``Unavailable``."""
        raise NotImplementedError


def _first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _jinja2_error(error: BaseException) -> str:
    """jinja2's message in one short line: its first sentence, and the line for a syntax error."""
    import jinja2

    if isinstance(error, jinja2.TemplateSyntaxError):
        return f"{error.message.split('. ')[0] if error.message else 'syntax error'} (line {error.lineno})"
    return _first_line(error)


def _installed(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        raise Unavailable(f"{distribution} is not installed") from None


def _strftime_now(format: str) -> str:
    return clock.strftime_now(format)  # the real time, or the moment pinned by clock.frozen_clock


class Transformers(Engine):
    """jinja2 exactly as transformers' ``apply_chat_template`` runs it: the reference."""

    name = "transformers"
    used_by = "transformers, TRL, vLLM"

    def version(self) -> str:
        return _installed("transformers")

    def render(self, templates: Sequence[str], contexts: Sequence[RenderContext]) -> list[list[Rendered]]:
        from templatefix.render import render

        results = []
        for template in templates:
            row = []
            for context in contexts:
                try:
                    text = render(
                        template,
                        context.messages,
                        add_generation_prompt=context.add_generation_prompt,
                        tools=context.tools,
                        documents=context.documents,
                        special_tokens=context.special_tokens,
                        **context.kwargs,
                    )
                    row.append(Rendered(text=text))
                except TemplatefixError as error:  # syntax errors, refusals, failures, limits
                    kind = getattr(error, "exception_type", None)
                    row.append(Rendered(error=_first_line(error), error_type=kind))
            results.append(row)
        return results


@lru_cache(maxsize=1)
def _plain_environment() -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from templatefix.jinja import sandbox

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    environment = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True
    )
    environment.globals.update(raise_exception=raise_exception, strftime_now=_strftime_now)
    return sandbox.install(environment)


class PlainJinja2(Engine):
    """jinja2 without transformers' extensions, as llama-cpp-python and text-generation-webui use it."""

    name = "jinja2 (plain)"
    used_by = "llama-cpp-python, text-generation-webui"

    def version(self) -> str:
        return _installed("jinja2")

    def render(self, templates: Sequence[str], contexts: Sequence[RenderContext]) -> list[list[Rendered]]:
        from templatefix.jinja.guard import guard, render_template

        environment = _plain_environment()
        variables = [context.variables() for context in contexts]
        results = []
        for template in templates:
            try:
                with guard():
                    compiled = environment.from_string(template)
            except Exception as error:  # noqa: BLE001 - untrusted templates: any failure is the answer
                results.append([Rendered(error=_jinja2_error(error)) for _ in contexts])
                continue
            row = []
            for values in variables:
                try:
                    row.append(Rendered(text=render_template(compiled, **values)))
                except Exception as error:  # noqa: BLE001
                    row.append(Rendered(error=_jinja2_error(error)))
            results.append(row)
        return results


class MiniJinja(Engine):
    """minijinja (Rust; TGI, mistral.rs), through its Python binding, set up as those servers do:
    ``trim_blocks``, ``lstrip_blocks``, Python-compatible methods, ``raise_exception`` and
    ``strftime_now``."""

    name = "minijinja"
    used_by = "TGI, mistral.rs"

    def version(self) -> str:
        try:
            import minijinja  # noqa: F401
        except ImportError:
            raise Unavailable(
                'the minijinja Python binding is not installed: pip install "templatefix[engines]"'
            ) from None
        return _installed("minijinja")

    def render(self, templates: Sequence[str], contexts: Sequence[RenderContext]) -> list[list[Rendered]]:
        self.version()
        import minijinja

        def raise_exception(message: str) -> None:
            raise minijinja.TemplateError(str(message))

        variables = [context.variables() for context in contexts]
        results = []
        for template in templates:
            environment = minijinja.Environment()  # one per template: errors name "chat_template:<line>"
            environment.trim_blocks = True
            environment.lstrip_blocks = True
            environment.pycompat = True
            environment.fuel = MINIJINJA_FUEL
            environment.add_function("raise_exception", raise_exception)
            environment.add_function("strftime_now", _strftime_now)
            try:
                environment.add_template("chat_template", template)
            except Exception as error:  # noqa: BLE001
                results.append([Rendered(error=_first_line(error)) for _ in contexts])
                continue
            row = []
            for values in variables:
                try:
                    row.append(Rendered(text=environment.render_template("chat_template", **values)))
                except Exception as error:  # noqa: BLE001
                    row.append(Rendered(error=_first_line(error)))
            results.append(row)
        return results


def node_search_dirs() -> list[Path]:
    """Folders whose ``node_modules`` may hold ``@huggingface/jinja``, in the order searched.

    ``TEMPLATEFIX_NODE_DIR`` when set, then the user cache
    (``$XDG_CACHE_HOME/templatefix/node``, by default ``~/.cache/templatefix/node``); after them
    node's own resolution (``NODE_PATH``, global installs).

    Example:
        >>> node_search_dirs()[-1].parts[-2:]
        ('templatefix', 'node')
    """
    dirs = []
    if os.environ.get("TEMPLATEFIX_NODE_DIR"):
        dirs.append(Path(os.environ["TEMPLATEFIX_NODE_DIR"]).expanduser())
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    dirs.append(Path(cache) / "templatefix" / "node")
    return dirs


def node_install_command() -> str:
    """The command that installs ``@huggingface/jinja`` where the runner looks first."""
    return f"npm install --prefix {node_search_dirs()[0]} {HF_JINJA_PACKAGE}"


class HFJinja(Engine):
    """@huggingface/jinja (transformers.js, the Hub's template preview), run by node."""

    name = "@huggingface/jinja"
    used_by = "transformers.js, Hub preview"
    runner = Path(__file__).with_name("hf_jinja_runner.cjs")

    def __init__(self) -> None:
        self._version: str | None = None

    def _run(self, templates: Sequence[str], contexts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        node = shutil.which("node")
        if node is None:
            raise Unavailable("node is not installed (needed to run @huggingface/jinja)")
        payload = {
            "search": [str(d) for d in node_search_dirs()],
            "templates": list(templates),
            "contexts": list(contexts),
        }
        try:
            completed = subprocess.run(
                [node, str(self.runner)],
                input=json.dumps(payload),
                capture_output=True,
                text=True,
                timeout=NODE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RenderError(f"@huggingface/jinja: renders took over {NODE_TIMEOUT:g}s") from None
        if completed.returncode != 0:
            raise RenderError(
                f"@huggingface/jinja runner failed: {_first_line(completed.stderr or 'no output')}"
            )
        answer = json.loads(completed.stdout)
        if "missing" in answer:
            raise Unavailable(f"@huggingface/jinja is not installed: {node_install_command()}")
        self._version = answer.get("version") or "unknown"
        return answer

    def version(self) -> str:
        if self._version is None:
            self._run([], [])
        return self._version or "unknown"

    def render(self, templates: Sequence[str], contexts: Sequence[RenderContext]) -> list[list[Rendered]]:
        answer = self._run(templates, [context.variables() for context in contexts])
        return [
            [Rendered(text=r.get("text"), error=r.get("error")) for r in row] for row in answer["results"]
        ]


def all_engines() -> list[Engine]:
    """Every engine, the reference first."""
    return [Transformers(), PlainJinja2(), MiniJinja(), HFJinja()]
