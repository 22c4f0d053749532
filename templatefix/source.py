"""A lossless source model of a chat template.

A ``TemplateSource`` keeps the template's exact text and, from jinja2's own lexer and parser,
knows where every token and every AST node sits in that text, to the character. Edits are
insertions and replacements at those offsets, so everything not edited stays byte-identical
(CRLF, missing final newline, ``{%-``/``-%}``, comments and ``{% raw %}`` included).

jinja2 records only line numbers on tokens and nodes, and its lexer normalises newlines and drops
the whitespace that ``-``, ``trim_blocks`` and ``lstrip_blocks`` remove. We therefore align the
lexer's raw tokens back onto the original text, then feed them to jinja2's parser with each
token's *index* in place of its line number, and record which tokens each ``parse_*`` call
consumed. A side table keyed by node (as libcst's position metadata, never an attribute set on
jinja2's nodes) gives every node its span ``(start, end)``: the characters its tokens cover
(``TemplateSource.spans``), and every statement the span of its tags (``tag_spans``).

Example:
    >>> source = TemplateSource.parse("{{- 'a' + x -}}\\r\\n")
    >>> str(source) == "{{- 'a' + x -}}\\r\\n"
    True
    >>> [source.spans[n] for n in source.ast.find_all(nodes.Const)]
    [(4, 7)]
    >>> source.apply([Edit(4, 7, "'b'")])
    "{{- 'b' + x -}}\\r\\n"
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import jinja2
from jinja2 import nodes
from jinja2.lexer import TOKEN_EOF, TokenStream
from jinja2.parser import Parser

from templatefix.errors import TemplateSyntaxError
from templatefix.render import compile_template, environment

_Node = TypeVar("_Node", bound=nodes.Node)
Span = tuple[int, int]
_NEWLINE = re.compile(r"\r\n|\r|\n")
_SKIPPED_KINDS = frozenset({"whitespace", "comment_begin", "comment", "comment_end"})


@dataclass(frozen=True)
class Token:
    """One raw lexer token and where it sits in the original text.

    ``kind`` is jinja2's raw token type (``data``, ``block_begin``, ``name``, ``string``, ``gap``…);
    ``gap`` marks whitespace the lexer removed (``-``, ``lstrip_blocks``, final newline).
    """

    kind: str
    start: int
    end: int
    text: str
    line: int


@dataclass(frozen=True)
class Edit:
    """Replace ``text[start:end]`` by ``replacement`` (an insertion when ``start == end``).

    Insertions at the same offset are applied in ``order`` (lower first).
    """

    start: int
    end: int
    replacement: str
    order: int = 0


class TemplateSource:
    """The exact text of a template with its tokens and offset-annotated jinja2 AST."""

    def __init__(self, text: str, tokens: list[Token]) -> None:
        self.text = text
        self.tokens = tokens
        #: Where each node of :attr:`ast` sits: ``(start, end)``, the characters its tokens
        #: cover. Filled when the AST is parsed; a copy of the tree (:meth:`copy`) adds its nodes,
        #: so a node of either tree finds its span here.
        self.spans: dict[nodes.Node, Span] = {}
        #: For each statement: from the ``{%`` that opens it to the ``%}`` closing its last tag.
        self.tag_spans: dict[nodes.Node, Span] = {}

    @classmethod
    def parse(cls, text: str) -> TemplateSource:
        """Tokenise ``text`` with transformers' jinja2 environment and align tokens to offsets.

        Raises:
            TemplateSyntaxError: the template is not valid Jinja (one line, with line and column).
        """
        compile_template(text)  # reports syntax errors with real line numbers
        return cls(text, _align_tokens(text))

    @classmethod
    def tokenize(cls, text: str) -> TemplateSource:
        """Only tokenise ``text``: nothing compiles it, and its AST is parsed on first use of
        :attr:`ast` (where a syntax error surfaces as jinja2's own ``TemplateSyntaxError``).

        ``templatefix.template.ChatTemplate.parse`` builds on this to parse a template once.

        Raises:
            TemplateSyntaxError: jinja2's lexer rejects the text.
        """
        return cls(text, _align_tokens(text))

    def copy(self) -> TemplateSource:
        """The same text and tokens with a copy of the AST (for a stage that changes its tree)."""
        copied = TemplateSource(self.text, self.tokens)
        tree = copy_tree(self.ast)
        copied.__dict__["ast"] = tree
        copied.spans, copied.tag_spans = self.spans, self.tag_spans
        for node, twin in zip(iter_nodes(self.ast), iter_nodes(tree), strict=True):
            if node in self.spans:
                self.spans[twin] = self.spans[node]
            if node in self.tag_spans:
                self.tag_spans[twin] = self.tag_spans[node]
        return copied

    def line_of_node(self, node: nodes.Node) -> int:
        """The line jinja2's own parser gives ``node`` (``node.lineno`` in :attr:`ast` is the index
        of the token it was made at)."""
        return self.tokens[min(node.lineno, len(self.tokens) - 1)].line

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"TemplateSource({len(self.text)} chars, {len(self.tokens)} tokens)"

    def round_trip(self) -> str:
        """Rebuild the text from the tokens alone (the lossless property: equals ``self.text``)."""
        return "".join(token.text for token in self.tokens)

    @cached_property
    def ast(self) -> nodes.Template:
        """jinja2's AST of the template; :attr:`spans` (and :attr:`tag_spans`) say where its nodes sit."""
        return _OffsetParser.parse_source(self)

    def token_at(self, offset: int) -> Token:
        """The token that contains ``offset`` (the one starting there if on a boundary)."""
        return self.tokens[self.token_index_at(offset)]

    def token_index_at(self, offset: int) -> int:
        """Index of ``token_at(offset)`` (binary search over token starts)."""
        low, high = 0, len(self.tokens) - 1
        while low < high:
            middle = (low + high + 1) // 2
            if self.tokens[middle].start <= offset:
                low = middle
            else:
                high = middle - 1
        return low

    def apply(self, edits: Iterable[Edit]) -> str:
        """Return the text with ``edits`` applied; untouched characters stay byte-identical.

        Raises:
            ValueError: two edits overlap.
        """
        ordered = sorted(edits, key=lambda e: (e.start, e.end, e.order))
        pieces: list[str] = []
        cursor = 0
        for edit in ordered:
            if edit.start < cursor:
                raise ValueError(f"overlapping edits at offset {edit.start}")
            pieces.append(self.text[cursor : edit.start])
            pieces.append(edit.replacement)
            cursor = edit.end
        pieces.append(self.text[cursor:])
        return "".join(pieces)

    def line_of(self, offset: int) -> int:
        return self.text.count("\n", 0, offset) + 1


def _normalise(text: str) -> tuple[str, list[int]]:
    """jinja2's newline normalisation, with a map from normalised to original offsets."""
    normalised: list[str] = []
    origin: list[int] = []
    position = 0
    for match in _NEWLINE.finditer(text):
        chunk = text[position : match.start()]
        normalised.append(chunk)
        origin.extend(range(position, match.start()))
        normalised.append("\n")
        origin.append(match.start())
        position = match.end()
    normalised.append(text[position:])
    origin.extend(range(position, len(text)))
    origin.append(len(text))
    return "".join(normalised), origin


def _align_tokens(text: str) -> list[Token]:
    """Place each raw lexer token at its offset in ``text``; fill what the lexer dropped with gaps."""
    normalised, origin = _normalise(text)
    lexer = environment().lexer
    tokens: list[Token] = []
    cursor = 0  # in normalised text
    line = 1

    def add(kind: str, start: int, end: int) -> None:
        original_start, original_end = origin[start], origin[end]
        tokens.append(Token(kind, original_start, original_end, text[original_start:original_end], line))

    try:
        raw_tokens = list(lexer.tokeniter(text, None))
    except jinja2.TemplateSyntaxError as error:
        raise TemplateSyntaxError(f"invalid Jinja at line {error.lineno}: {error.message}") from None
    for line, kind, value in raw_tokens:
        if not value:
            continue
        if normalised.startswith(value, cursor):
            start = cursor
        else:
            start = normalised.find(value, cursor)
            if start < 0 or normalised[cursor:start].strip():
                raise TemplateSyntaxError(f"cannot align token {value!r} at line {line}")
            add("gap", cursor, start)
        add(kind, start, start + len(value))
        cursor = start + len(value)
    if cursor < len(normalised):
        add("gap", cursor, len(normalised))
    elif len(text) > origin[cursor]:
        # A trailing "\r\n" collapses to one normalised char; keep any leftover bytes.
        tokens.append(Token("gap", origin[cursor], len(text), text[origin[cursor] :], line))
    return tokens


class _OffsetParser(Parser):
    """jinja2's parser, recording for each node the range of source tokens it consumed."""

    source: TemplateSource
    previous_significant: list[int]
    recorded: dict[nodes.Node, tuple[int, int]]  # a node -> indices of its first and last tokens

    @classmethod
    def parse_source(cls, source: TemplateSource) -> nodes.Template:
        env = environment()
        parser = cls(env, "", None, None)
        parser.source = source
        parser.recorded = {}
        significant = [i for i, t in enumerate(source.tokens) if t.kind not in _SKIPPED_KINDS | {"gap"}]
        previous = [-1] * (len(source.tokens) + 1)
        last = -1
        pointer = 0
        for index in range(len(source.tokens) + 1):
            previous[index] = last
            while pointer < len(significant) and significant[pointer] <= index:
                last = significant[pointer]
                pointer += 1
        parser.previous_significant = previous
        triples = [(i, t.kind, _lexer_value(t)) for i, t in enumerate(source.tokens) if t.kind != "gap"]
        # tokens carry their index into ``source.tokens`` as ``lineno``
        parser.stream = TokenStream(env.lexer.wrap(iter(triples), None, None), None, None)
        template = parser.parse()
        _finish_spans(template, source, parser.recorded)
        return template

    def _consumed_until(self) -> int:
        current = self.stream.current
        if current.type == TOKEN_EOF:
            return len(self.source.tokens) - 1
        return self.previous_significant[current.lineno]


def _lexer_value(token: Token) -> str:
    """The token text as the lexer saw it (newlines normalised)."""
    return _NEWLINE.sub("\n", token.text)


def _record(method: Callable[..., Any]) -> Callable[..., Any]:
    def recording(self: _OffsetParser, *args: Any, **kwargs: Any) -> Any:
        first = self.stream.current.lineno
        result = method(self, *args, **kwargs)
        if isinstance(result, nodes.Node) and result not in self.recorded:
            self.recorded[result] = (first, self._consumed_until())
        return result

    recording.__name__ = method.__name__
    return recording


for _name in dir(Parser):
    if _name.startswith("parse_") and _name != "parse_statements":
        setattr(_OffsetParser, _name, _record(getattr(Parser, _name)))


def _finish_spans(
    template: nodes.Template, source: TemplateSource, recorded_tokens: dict[nodes.Node, tuple[int, int]]
) -> None:
    """Give every node its span in ``source.spans``: its recorded tokens united with its
    children's spans (and every statement its ``source.tag_spans``)."""
    tokens = source.tokens

    def visit(node: nodes.Node) -> tuple[int, int] | None:
        spans = [span for child in node.iter_child_nodes() if (span := visit(child)) is not None]
        recorded = recorded_tokens.get(node)
        if recorded is None and isinstance(node, nodes.TemplateData) and node.lineno < len(tokens):
            recorded = (node.lineno, node.lineno)
        if recorded is not None and recorded[1] >= recorded[0]:
            spans.append((tokens[recorded[0]].start, tokens[recorded[1]].end))
        if not spans:
            return None
        span = (min(s for s, _ in spans), max(e for _, e in spans))
        source.spans[node] = span
        if isinstance(node, nodes.Stmt) and not isinstance(node, nodes.Output) and recorded is not None:
            source.tag_spans[node] = _statement_tag_span(source, recorded)
        return span

    visit(template)


def _statement_tag_span(source: TemplateSource, recorded: tuple[int, int]) -> tuple[int, int]:
    """From the ``{%`` that opens a statement to the ``%}`` that closes its last tag."""
    tokens = source.tokens
    begin = recorded[0]
    while begin > 0 and tokens[begin].kind != "block_begin":
        begin -= 1
    end = recorded[1]
    while end < len(tokens) - 1 and tokens[end].kind != "block_end":
        end += 1
    return tokens[begin].start, tokens[end].end


def iter_nodes(node: nodes.Node) -> Iterator[nodes.Node]:
    """Pre-order walk of a jinja2 AST."""
    yield node
    for child in node.iter_child_nodes():
        yield from iter_nodes(child)


def copy_tree(node: _Node) -> _Node:
    """A deep copy of a jinja2 AST that shares, never copies, the environment its nodes point at.

    Parsed nodes keep a reference to their environment; copying it would copy transformers'
    generation extension (and whatever state it holds, e.g. a ``ContextVar``, which cannot be copied).
    """
    shared = {
        id(env): env
        for n in (node, *node.find_all(nodes.Node))
        if (env := n.__dict__.get("environment")) is not None
    }
    return copy.deepcopy(node, memo=shared)
