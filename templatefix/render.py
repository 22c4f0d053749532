"""Rendering exactly as transformers renders.

transformers compiles chat templates in an ``ImmutableSandboxedEnvironment`` with ``trim_blocks``,
``lstrip_blocks``, ``loopcontrols``, the ``generation`` tag, its own ``tojson``, ``raise_exception``,
``strftime_now``, ``dict`` and ``namespace``; it converts inputs to plain data and aliases the
reasoning fields (``reasoning_content`` / ``thinking`` / ``reasoning``). We call that machinery
itself (through ``templatefix.environment``, the one module that touches transformers' internals)
instead of re-creating it, so any behaviour the installed transformers has, we have. Every compile
and render is bounded in time and output size
(``templatefix.jinja``); a template past a bound raises ``RenderLimitExceeded``.

Example:
    >>> from templatefix.render import render
    >>> render("{% for m in messages %}{{ m.role }}:{{ m.content }}\\n{% endfor %}",
    ...        [{"role": "user", "content": "hi"}])
    'user:hi\\n'
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from jinja2 import nodes

from templatefix import clock
from templatefix import environment as hf_environment
from templatefix.errors import RenderError, RenderLimitExceeded, TemplateRejected, TemplateSyntaxError
from templatefix.jinja import sandbox
from templatefix.jinja.guard import count_output, guard

Message = Mapping[str, Any]
Span = tuple[int, int]

#: Values given to templates for the tokenizer's special tokens when no tokenizer is at hand.
#: ``apply_chat_template`` passes ``tokenizer.special_tokens_map`` the same way.
DEFAULT_SPECIAL_TOKENS: dict[str, str] = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
}


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """Our own instance of transformers' chat-template environment, with render bounds installed.

    Built by transformers' own factory, so it has exactly its settings, globals, filters and the
    ``generation`` extension; ``templatefix.jinja.sandbox.install`` adds the time and size hooks (which
    change no rendered text) and ``templatefix.clock.install`` lets ``strftime_now`` be pinned for
    one patch (``clock.frozen_clock``). It is a separate instance from the ones transformers caches, so
    nothing we install reaches ``tokenizer.apply_chat_template``.

    Example:
        >>> environment().from_string("{{ messages | length }}").render(messages=[1, 2])
        '2'
    """
    return clock.install(sandbox.install(hf_environment.new_environment()))


#: Compiled templates by text, least recently used first (at most ``_COMPILED_SIZE``).
_COMPILED: OrderedDict[str, jinja2.Template] = OrderedDict()
_COMPILED_SIZE = 256
_COMPILED_LOCK = threading.Lock()


def _compile(template: str) -> jinja2.Template:
    with _COMPILED_LOCK:
        compiled = _COMPILED.get(template)
        if compiled is not None:
            _COMPILED.move_to_end(template)
            return compiled
    # Compile under a guard: jinja2 folds constant filter calls while compiling, and a bounded
    # filter that refuses (``'a' | center(10**10)``) makes it leave that call to render time.
    with guard():
        compiled = environment().from_string(template)
    _remember(template, compiled)
    return compiled


def _remember(template: str, compiled: jinja2.Template) -> None:
    with _COMPILED_LOCK:
        _COMPILED[template] = compiled
        _COMPILED.move_to_end(template)
        while len(_COMPILED) > _COMPILED_SIZE:
            _COMPILED.popitem(last=False)


def compile_parsed(template: str, tree: nodes.Template) -> jinja2.Template:
    """Compile ``tree``, jinja2's AST of ``template``, without parsing the text again.

    jinja2 folds constants into the tree it compiles: ``tree`` must be a copy the caller owns.
    Later ``compile_template(template)`` calls (every render of that text) get this compiled
    template.

    Raises:
        TemplateSyntaxError: jinja2's compiler rejects the template (an unknown filter or test);
            the message names line and column as ``compile_template`` does.
    """
    try:
        with guard():
            compiled = environment().from_string(tree)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateSyntaxError(describe_syntax_error(template, error)) from None
    _remember(template, compiled)
    return compiled


def compile_template(template: str) -> jinja2.Template:
    """Compile ``template`` in the bounded chat-template environment (cached).

    Raises:
        TemplateSyntaxError: the template is not valid Jinja; the message names line and column.

    Example:
        >>> compile_template("{{ 1 }").render()
        Traceback (most recent call last):
        ...
        templatefix.errors.TemplateSyntaxError: invalid Jinja at line 1, column 1: unexpected '}'
    """
    try:
        return _compile(template)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateSyntaxError(describe_syntax_error(template, error)) from None


def describe_syntax_error(template: str, error: jinja2.TemplateSyntaxError) -> str:
    """One line: ``line L, column C: message``. Column points at the first tag on that line."""
    line = error.lineno or 1
    lines = template.splitlines() or [""]
    text = lines[min(line, len(lines)) - 1]
    column = 1
    for opener in ("{%", "{{", "{#"):
        position = text.find(opener)
        if position >= 0:
            column = position + 1
            break
    return f"invalid Jinja at line {line}, column {column}: {error.message}"


def template_arguments(
    special_tokens: Mapping[str, Any] | None = None, **template_kwargs: Any
) -> dict[str, Any]:
    """The keyword arguments a template sees besides messages/tools/documents.

    Special tokens come first and are overridden by explicit template kwargs, as in
    ``PreTrainedTokenizerBase.apply_chat_template``.
    """
    arguments: dict[str, Any] = dict(DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens)
    arguments.update(template_kwargs)
    return arguments


def render_with_spans(
    template: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    special_tokens: Mapping[str, Any] | None = None,
    **template_kwargs: Any,
) -> tuple[str, list[Span]]:
    """Render like ``apply_chat_template(..., tokenize=False)`` and return the generation spans.

    The spans are the raw ``(start, end)`` character ranges transformers records for each
    ``{% generation %}`` block, in the order it records them.

    Raises:
        TemplateRejected: the template called ``raise_exception``.
        RenderError: any other failure while rendering (the message says which).
    """
    compiled = compile_template(template)
    arguments = template_arguments(special_tokens, **template_kwargs)
    try:
        with guard():
            rendered, indices = _render_bounded(
                compiled, messages, tools, documents, add_generation_prompt, arguments
            )
    except RenderError:
        raise
    except jinja2.TemplateError as error:
        if type(error) is jinja2.TemplateError:  # what raise_exception raises
            message = f"template rejected the conversation: {error.message}"
            raise _failure(TemplateRejected(message), error) from None
        raise _failure(RenderError(f"template error: {type(error).__name__}: {error}"), error) from None
    except MemoryError:
        raise RenderLimitExceeded("render stopped: it ran out of memory") from None
    except Exception as error:  # templates are untrusted code: any failure is a render failure
        raise _failure(RenderError(f"template error: {type(error).__name__}: {error}"), error) from None
    return rendered, [(start, end) for start, end in indices]


def _failure(failure: RenderError, error: BaseException) -> RenderError:
    """``failure`` with the name of the exception the template raised (``exception_type``)."""
    failure.exception_type = type(error).__name__
    return failure


def _render_bounded(
    compiled: jinja2.Template,
    messages: Sequence[Message],
    tools: Sequence[Any] | None,
    documents: Sequence[Any] | None,
    add_generation_prompt: bool,
    arguments: dict[str, Any],
) -> tuple[str, list[Span]]:
    """``render_jinja_template(conversations=[messages], return_assistant_tokens_mask=True)``.

    The inputs are prepared as the installed ``apply_chat_template`` prepares them
    (``templatefix.environment.prepare_inputs``), then rendered inside transformers' span tracker,
    with each yielded block counted against the output limit. ``tests/rendering/test_render.py`` holds it
    to ``apply_chat_template`` byte for byte.
    """
    inputs = hf_environment.prepare_inputs(messages, tools, documents, arguments)
    blocks: list[str] = []
    indices: list[Span] = []
    with hf_environment.tracking(compiled.environment, blocks, indices):
        for block in compiled.generate(**inputs.variables(add_generation_prompt)):
            blocks.append(block)
            count_output(len(block))
        text = "".join(blocks)
    return text, indices


def render(
    template: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    special_tokens: Mapping[str, Any] | None = None,
    **template_kwargs: Any,
) -> str:
    """Render ``messages`` with ``template`` exactly as transformers does; see ``render_with_spans``."""
    text, _ = render_with_spans(
        template,
        messages,
        add_generation_prompt=add_generation_prompt,
        tools=tools,
        documents=documents,
        special_tokens=special_tokens,
        **template_kwargs,
    )
    return text


def merge_spans(spans: Sequence[Span]) -> list[Span]:
    """Union of spans: touching or overlapping ranges merge; empty ranges vanish (SPEC "span")."""
    merged: list[list[int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]
