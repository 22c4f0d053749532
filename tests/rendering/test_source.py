"""The lossless source model: exact round trips and exact node offsets."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2 import nodes

from templatefix.errors import TemplateSyntaxError
from templatefix.source import Edit, TemplateSource, iter_nodes


def _check_offsets(source: TemplateSource) -> None:
    """Every node's span holds what the node is: names, literals, statements' tags."""
    text = source.text
    for node in iter_nodes(source.ast):
        span = source.spans.get(node)
        if span is None:
            continue
        covered = text[span[0] : span[1]]
        if isinstance(node, nodes.Name):
            assert covered == node.name, (covered, node.name)
        elif isinstance(node, nodes.Const) and isinstance(node.value, str) and covered[:1] in "'\"":
            # one literal (adjacent literals concatenate): decoding the source gives the value
            pieces = [piece for piece in _literals(covered)]
            assert "".join(pieces) == node.value
        elif isinstance(node, nodes.TemplateData):
            assert covered.replace("\r\n", "\n").replace("\r", "\n") == node.data
        tag = source.tag_spans.get(node)
        if tag is not None:
            assert text[tag[0] : tag[0] + 2] == "{%" and text[: tag[1]].rstrip().endswith("%}")


def _literals(raw: str) -> list[str]:
    """Decode one or more adjacent Jinja string literals."""
    import re

    result = []
    for match in re.finditer(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"", raw, re.S):
        body = match.group(1) if match.group(1) is not None else match.group(2)
        body = body.replace("\r\n", "\n").replace("\r", "\n")
        result.append(body.encode("ascii", "backslashreplace").decode("unicode-escape"))
    return result


def test_round_trip_on_every_corpus_template(corpus_templates: list[tuple[str, str]]) -> None:
    assert len(corpus_templates) > 200
    for name, text in corpus_templates:
        source = TemplateSource.parse(text)
        assert source.round_trip() == text, name
        assert source.apply([]) == text, name
        _check_offsets(source)


@pytest.mark.parametrize(
    "text",
    [
        "{{- 'a' + x -}}\r\n",  # CRLF
        "{% if x %}\r\n  yes\r\n{% endif %}",  # CRLF, no final newline
        "{# comment {{ not code }} #}{{ y }}\n",
        "{% raw %}{{ kept }}{% endraw %}\n\n",
        "  {%- for m in messages -%}\n  {{ m.content }}\n  {%+ endfor +%}\n",
        "plain text only",
        "x\r",
    ],
)
def test_round_trip_edge_cases(text: str) -> None:
    source = TemplateSource.parse(text)
    assert source.round_trip() == text
    _check_offsets(source)


def test_expression_positions_are_exact() -> None:
    text = "{{- '<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>' }}"
    source = TemplateSource.parse(text)
    add = next(n for n in iter_nodes(source.ast) if isinstance(n, nodes.Add))
    assert (
        text[slice(*source.spans[add])]
        == "'<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>'"
    )
    flt = next(n for n in iter_nodes(source.ast) if isinstance(n, nodes.Filter))
    assert text[slice(*source.spans[flt])] == "message.content | trim"


def test_edits_keep_everything_else_byte_identical() -> None:
    text = "a\r\n{{ x }}\r\nb"
    source = TemplateSource.parse(text)
    name = next(n for n in iter_nodes(source.ast) if isinstance(n, nodes.Name))
    edited = source.apply([Edit(*source.spans[name], "y"), Edit(0, 0, "<"), Edit(len(text), len(text), ">")])
    assert edited == "<a\r\n{{ y }}\r\nb>"
    with pytest.raises(ValueError):
        source.apply([Edit(0, 5, ""), Edit(3, 4, "")])


def test_syntax_error_names_line_and_column() -> None:
    with pytest.raises(TemplateSyntaxError, match=r"line 2, column \d+"):
        TemplateSource.parse("ok\n{% if %}")


_PIECES = st.sampled_from(
    [
        "text ",
        "\n",
        "\r\n",
        "  ",
        "{{ x }}",
        "{{- x -}}",
        "{{ 'a\\n' + y ~ \"b\" }}",
        "{% if x %}A{% endif %}",
        "{%- if x -%} B {%+ else +%} C {%- endif %}",
        "{% for m in messages %}{{ m.role }}{% endfor %}",
        "{# note #}",
        "{#- note -#}",
        "{% raw %}{{ raw }}{% endraw %}",
        "{% set v = 'q' %}",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_PIECES, max_size=12))
def test_round_trip_on_generated_templates(pieces: list[str]) -> None:
    text = "".join(pieces)
    source = TemplateSource.parse(text)
    assert source.round_trip() == text
    _check_offsets(source)


def test_positions_are_a_side_table_and_a_copy_shares_them() -> None:
    """No attribute is set on jinja2's nodes; a copy of the tree (for a stage that changes it)
    finds the same spans for its own nodes, and the original tree stays as it was."""
    text = "{% for m in messages %}{{ m.role ~ ':' }}{% endfor %}"
    source = TemplateSource.parse(text)
    for node in iter_nodes(source.ast):
        assert not [name for name in vars(node) if name.startswith("tf_")]
    copied = source.copy()
    assert copied.ast == source.ast and copied.ast is not source.ast
    for node, twin in zip(iter_nodes(source.ast), iter_nodes(copied.ast), strict=True):
        assert copied.spans.get(twin) == source.spans.get(node)
        assert copied.tag_spans.get(twin) == source.tag_spans.get(node)
    for_loop = next(iter_nodes(copied.ast)).body[0]
    assert text[slice(*copied.tag_spans[for_loop])] == text
    copied.ast.body.clear()
    assert source.ast.body
