"""Errors templatefix raises on purpose.

Every error here carries a one-line, user-facing message. The CLI prints ``str(error)`` and exits
non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class TemplatefixError(Exception):
    """Base class: a problem with the user's input, explained in one line."""

    exit_code: int = 2


class TemplateSyntaxError(TemplatefixError):
    """The template is not valid Jinja (message includes line and column)."""


class RenderError(TemplatefixError):
    """Rendering failed: the template raised, or hit an error, on a conversation.

    ``exception_type`` names the exception the template raised (``TypeError``, ``UndefinedError``,
    ``TemplateError`` for ``raise_exception``…), or is ``None`` when no render raised it.
    """

    exception_type: str | None = None


class TemplateRejected(RenderError):
    """The template called ``raise_exception``: it refuses this conversation on purpose."""


class RenderLimitExceeded(RenderError):
    """A render went past its time or output-size bound."""


class SourceError(TemplatefixError):
    """A SOURCE (file, directory, Hub id) could not be read."""


class NotVerifiedError(TemplatefixError):
    """A patch could not be verified against SPEC.md."""

    exit_code = 1


class OutputError(TemplatefixError):
    """An output cannot be written as asked (it would overwrite something, or the layout forbids it)."""


class PushError(TemplatefixError):
    """Pushing to the Hub failed, or was refused before anything was committed."""


class UnsupportedTransformersError(TemplatefixError):
    """The installed transformers lacks chat-template machinery templatefix relies on."""


class PatchFailure(TemplatefixError):
    """The patcher cannot place markers exactly; the message says where and why."""


class InternalDisagreement(RuntimeError):
    """Two parts of templatefix disagree about the same render: a bug in templatefix, never in the input.

    Raised, for example, when the instrumented trace of a conversation does not produce the text
    that the plain render produced. Nothing falls back to another algorithm when this happens.
    """

    exit_code: int = 3
