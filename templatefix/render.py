"""Rendering exactly as transformers renders.

transformers compiles chat templates in an ``ImmutableSandboxedEnvironment`` with ``trim_blocks``,
``lstrip_blocks``, ``loopcontrols``, the ``generation`` tag, its own ``tojson``, ``raise_exception``,
``strftime_now``, ``dict`` and ``namespace``; it converts inputs to plain data and aliases the
reasoning fields (``reasoning_content`` / ``thinking`` / ``reasoning``). We call that machinery
itself (``transformers.utils.chat_template_utils``) instead of re-creating it, so any behaviour
transformers has, we have.

Example:
    >>> from templatefix.render import render
    >>> render("{% for m in messages %}{{ m.role }}:{{ m.content }}\\n{% endfor %}",
    ...        [{"role": "user", "content": "hi"}])
    'user:hi\\n'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from transformers.utils import chat_template_utils as _ctu

from templatefix.errors import RenderError, TemplateRejected, TemplateSyntaxError

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


def compile_template(template: str) -> jinja2.Template:
    """Compile ``template`` in transformers' own chat-template environment (cached).

    Raises:
        TemplateSyntaxError: the template is not valid Jinja; the message names line and column.
    """
    try:
        return _ctu._compile_jinja_template(template)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateSyntaxError(describe_syntax_error(template, error)) from None


def environment() -> jinja2.Environment:
    """transformers' chat-template environment (shared, with the ``generation`` extension)."""
    return compile_template("").environment


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
    compile_template(template)
    arguments = template_arguments(special_tokens, **template_kwargs)
    try:
        rendered, indices = _ctu.render_jinja_template(
            conversations=[list(messages)],
            tools=list(tools) if tools is not None else None,
            documents=list(documents) if documents is not None else None,
            chat_template=template,
            return_assistant_tokens_mask=True,
            add_generation_prompt=add_generation_prompt,
            **arguments,
        )
    except RenderError:
        raise
    except jinja2.TemplateError as error:
        if type(error) is jinja2.TemplateError:  # what raise_exception raises
            raise TemplateRejected(f"template rejected the conversation: {error.message}") from None
        raise RenderError(f"template error: {type(error).__name__}: {error}") from None
    except RecursionError:
        raise RenderError("template error: recursion too deep") from None
    except Exception as error:  # templates are untrusted code: any failure is a render failure
        raise RenderError(f"template error: {type(error).__name__}: {error}") from None
    return rendered[0], [tuple(span) for span in indices[0]]


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
