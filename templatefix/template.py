"""A chat template parsed once: the one object every stage of a patch works from.

``ChatTemplate.parse(text)`` runs jinja2's lexer and parser over the text once
(``templatefix.source``'s offset parser, which also knows where every node sits in the text) and
compiles that tree, without parsing again, in transformers' bounded environment. It holds:

- ``text``, and ``source``: the lossless source model (tokens, character offsets, edits);
- ``ast``: jinja2's AST, shared by every stage and never changed by any of them (a stage that
  rewrites a tree, such as the instrumentation, works on its own copy);
- ``compiled``: the compiled template (also what ``templatefix.render.compile_template`` returns
  for this text afterwards, so every render of it reuses this compile);
- what is computed from them, lazily and once per object, through :meth:`ChatTemplate.resolve`
  (as libcst's ``MetadataWrapper.resolve`` runs a provider once per tree): the names the
  template reads and its flags (``templatefix.flags``), the fields it reads
  (``templatefix.reads``), the instrumented template (``templatefix.analysis.regions``), the
  path conditions (``templatefix.conditions``).

A stage takes a ``ChatTemplate``; one that also accepts a string at its public edge turns it into
one with :meth:`ChatTemplate.of`, which parses the string once.

Example:
    >>> template = ChatTemplate.parse("{% for m in messages %}{{ m.content }}{% endfor %}")
    >>> template.compiled.render(messages=[{"content": "hi"}])
    'hi'
    >>> template.resolve(lambda parsed: len(parsed.text))
    50
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import jinja2
from jinja2 import nodes

from templatefix.errors import TemplateSyntaxError
from templatefix.render import compile_parsed, compile_template, describe_syntax_error
from templatefix.source import TemplateSource, copy_tree

_T = TypeVar("_T")


class ChatTemplate:
    """One parsed chat template: text, lossless source, AST, compiled template, and what is
    computed from them (see the module docstring). Equal, and hashed, by text."""

    def __init__(self, source: TemplateSource, compiled: jinja2.Template) -> None:
        self.source = source
        self.compiled = compiled
        self._resolved: dict[Hashable, Any] = {}

    @classmethod
    def parse(cls, text: str) -> ChatTemplate:
        """Parse ``text`` once and compile it.

        Raises:
            TemplateSyntaxError: the template is not valid Jinja (one line, with line and column).
        """
        try:
            source = TemplateSource.tokenize(text)
            tree = source.ast
        except (jinja2.TemplateSyntaxError, TemplateSyntaxError) as error:
            compile_template(text)  # raises the one-line message every compile gives
            if isinstance(error, TemplateSyntaxError):
                raise
            raise TemplateSyntaxError(describe_syntax_error(text, error)) from None
        # jinja2 folds constants into the tree it compiles: it compiles a copy, with the lines
        # jinja2's own parser gives (for the line of a compile error)
        copied = copy_tree(tree)
        for node in copied.find_all(nodes.Node):
            if node.lineno is not None:  # a node an extension made may have none
                node.lineno = source.line_of_node(node)
        return cls(source, compile_parsed(text, copied))

    @classmethod
    def of(cls, template: ChatTemplate | str) -> ChatTemplate:
        """``template`` itself, or the text parsed (the public edge of a stage that takes text).

        Raises:
            TemplateSyntaxError: the text is not valid Jinja.
        """
        return template if isinstance(template, ChatTemplate) else cls.parse(template)

    @property
    def text(self) -> str:
        return self.source.text

    @property
    def ast(self) -> nodes.Template:
        """jinja2's AST (with the source offsets of ``templatefix.source``); read it, never change it."""
        return self.source.ast

    def resolve(self, provider: Callable[..., _T], *args: Hashable) -> _T:
        """``provider(self, *args)``, computed on the first call and kept on this object.

        Example:
            >>> template = ChatTemplate.parse("{{ x }}")
            >>> calls = []
            >>> def names(parsed):
            ...     calls.append(1)
            ...     return [node.name for node in parsed.ast.find_all(nodes.Name)]
            >>> template.resolve(names), template.resolve(names), len(calls)
            (['x'], ['x'], 1)
        """
        key = (provider, args)
        if key not in self._resolved:
            self._resolved[key] = provider(self, *args)
        value: _T = self._resolved[key]
        return value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChatTemplate) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"ChatTemplate({len(self.text)} chars)"
