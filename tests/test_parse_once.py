"""One ``patch_template`` call parses the original text with jinja2 exactly once.

Every stage (flags, reads, the probe search, the solver, the instrumented trace, the writer, the
verifier) works from the one ``ChatTemplate`` built at the start. Parses of *other* texts (the
patched template, small helper snippets) are not counted: only those whose source is the
original text.

A parse is counted where jinja2 reads the text: its lexer (``Lexer.tokeniter``) and its parser
(``Parser.parse``, whether through ``Environment.parse``/``compile``/``from_string`` or through
``templatefix.source``'s offset parser, which feeds the lexer's tokens to jinja2's parser).
Each test text gets a unique comment, so that no cache filled by an earlier test hides a parse.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from jinja2.lexer import Lexer
from jinja2.parser import Parser

from templatefix.errors import TemplateSyntaxError
from templatefix.patch.api import patch_template

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
_UNIQUE = itertools.count()


def _fresh(text: str) -> str:
    """``text`` with a comment no other test uses (renders the same: a comment writes nothing)."""
    return f"{{# parse-once {next(_UNIQUE)} #}}" + text


@contextmanager
def counting(text: str) -> Iterator[Counter[str]]:
    """Count jinja2's lexer runs and parser runs over ``text`` while the block runs."""
    counts: Counter[str] = Counter()
    tokeniter, init, parse = Lexer.tokeniter, Parser.__init__, Parser.parse

    def counted_tokeniter(self: Lexer, source: str, *args: Any, **kwargs: Any) -> Any:
        if source == text:
            counts["lexer"] += 1
        return tokeniter(self, source, *args, **kwargs)

    def counted_init(self: Parser, environment: Any, source: str, *args: Any, **kwargs: Any) -> None:
        self.__dict__["counted_source"] = source
        init(self, environment, source, *args, **kwargs)

    def counted_parse(self: Parser) -> Any:
        # the offset parser is built on an empty text and given its TemplateSource afterwards
        given = getattr(self, "source", None)
        source = given.text if given is not None else self.__dict__.get("counted_source")
        if source == text:
            counts["parser"] += 1
        return parse(self)

    Lexer.tokeniter = counted_tokeniter  # type: ignore[method-assign]
    Parser.__init__ = counted_init  # type: ignore[method-assign]
    Parser.parse = counted_parse  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        Lexer.tokeniter = tokeniter  # type: ignore[method-assign]
        Parser.__init__ = init  # type: ignore[method-assign]
        Parser.parse = parse  # type: ignore[method-assign]


def test_the_counter_sees_every_way_jinja2_parses():
    """The counter is not blind: a plain compile, ``Environment.parse`` and the offset parser each
    count once, and another text is not counted."""
    from templatefix.render import environment
    from templatefix.source import TemplateSource

    text = _fresh("{{ messages[0].content }}")
    with counting(text) as counts:
        environment().from_string(text)
        environment().parse(text)
        TemplateSource.tokenize(text).ast  # noqa: B018 - the property parses
        environment().parse("{{ other }}")
    assert counts == {"lexer": 3, "parser": 3}


@pytest.mark.parametrize("name", ["chatml", "llama3", "mistral", "gemma"])
def test_patch_template_parses_the_original_once(name):
    text = _fresh((TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8"))
    with counting(text) as counts:
        result = patch_template(text)
    assert result.verified
    assert counts == {"lexer": 1, "parser": 1}


def test_a_marked_original_is_parsed_once():
    """A template that already has markers is verified as it is (and its markers stripped to be
    placed again if it were wrong): its text is still parsed once."""
    marked = patch_template((TEMPLATES / "chatml.jinja").read_text(encoding="utf-8")).patched
    text = _fresh(marked)
    with counting(text) as counts:
        result = patch_template(text)
    assert result.verified and result.patched == text
    assert counts == {"lexer": 1, "parser": 1}


def test_a_refused_template_is_parsed_once():
    """A template the patcher cannot mark (it never writes what the assistant says) is verified
    as it is for the report: still one parse."""
    text = _fresh("{% for m in messages %}{{ m.role }}\n{% endfor %}")
    with counting(text) as counts:
        result = patch_template(text)
    assert not result.passed and result.reasons
    assert counts == {"lexer": 1, "parser": 1}


def test_chat_template_parse_is_one_parse_and_keeps_the_ast_unchanged():
    """``ChatTemplate.parse`` parses once; what the stages ask of it (names, flags, reads, the
    instrumented form) parses nothing more and leaves the shared AST as it was parsed."""
    from templatefix.analysis.regions import instrumented_for
    from templatefix.flags import find_flags, template_reads
    from templatefix.reads import template_reads_of
    from templatefix.render import compile_template, environment
    from templatefix.template import ChatTemplate

    text = _fresh((TEMPLATES / "gemma.jinja").read_text(encoding="utf-8"))
    with counting(text) as counts:
        template = ChatTemplate.parse(text)
        before = repr(template.ast)
        template_reads(template)
        find_flags(template)
        template_reads_of(template)
        instrumented_for(template)
        assert compile_template(text) is template.compiled
    assert counts == {"lexer": 1, "parser": 1}
    assert repr(template.ast) == before
    assert template.ast == environment().parse(text)


def test_a_syntax_error_is_one_line_with_line_and_column():
    from templatefix.template import ChatTemplate

    with pytest.raises(TemplateSyntaxError, match=r"^invalid Jinja at line 2, column 1: "):
        ChatTemplate.parse("x\n{% if %}")
    with pytest.raises(TemplateSyntaxError, match=r"^invalid Jinja at line 1, column 4: No filter named"):
        ChatTemplate.parse("ab {{ x | no_such_filter }}")
