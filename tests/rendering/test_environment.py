"""The one module touching transformers' internals: detection holds against transformers itself."""

from __future__ import annotations

from typing import Any

import pytest
from jinja2 import nodes

from templatefix import environment
from templatefix.render import render, render_with_spans
from templatefix.source import TemplateSource


@pytest.fixture(scope="module")
def word_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "x": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def test_new_environment_is_fresh_and_has_the_generation_tag() -> None:
    first, second = environment.new_environment(), environment.new_environment()
    assert first is not second
    assert first.trim_blocks and first.lstrip_blocks
    assert "generation" in {tag for ext in first.extensions.values() for tag in getattr(ext, "tags", ())}


def test_generation_blocks_are_recognised() -> None:
    source = TemplateSource.parse("a{% generation %}b{% endgeneration %}{% call f() %}c{% endcall %}")
    blocks = [n for n in source.ast.find_all(nodes.CallBlock)]
    assert [environment.is_generation_block(n) for n in blocks] == [True, False]


class Opaque:
    def __str__(self) -> str:
        return "opaque"


CASES = [
    (
        "{{ messages[0].x is defined }}|{{ messages[0].content }}",
        [{"role": "user", "content": "c", "x": None}],
    ),
    (
        "{{ messages[0].thinking is defined }}|{{ messages[0].reasoning_content }}",
        [{"role": "assistant", "content": "c", "reasoning_content": "r"}],
    ),
    (
        "{{ messages[0].reasoning_content is defined }}{{ messages[0].thinking }}",
        [{"role": "assistant", "content": "c", "thinking": "t"}],
    ),
    ("{{ messages[0].x }}", [{"role": "user", "content": "c", "x": Opaque()}]),
    ("{{ tools | tojson }}{{ documents }}", [{"role": "user", "content": "c"}]),
]


@pytest.mark.parametrize(("template", "messages"), CASES)
def test_render_equals_apply_chat_template(word_tokenizer: Any, template: str, messages: list) -> None:
    """Whatever the installed release does to inputs, templatefix renders the same text."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    expected = word_tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, tools=tools
    )
    special = word_tokenizer.special_tokens_map
    assert render(template, messages, tools=tools, special_tokens=special) == expected


def test_spans_equal_transformers_spans(word_tokenizer: Any) -> None:
    template = (
        "{% for m in messages %}{{ m.role }} "
        "{% generation %}{{ m.content }} x{% endgeneration %} {% endfor %}"
    )
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "x x"}]
    text, spans = render_with_spans(template, messages, special_tokens=word_tokenizer.special_tokens_map)
    encoded = word_tokenizer.apply_chat_template(
        messages, chat_template=template, return_dict=True, return_assistant_tokens_mask=True
    )
    assert sum(encoded["assistant_masks"]) == sum(text[a:b].count("x") for a, b in spans)


def test_behaviour_is_measured_once() -> None:
    assert environment.detected_behaviour() is environment.detected_behaviour()
    assert environment.mask_rule() in ("char_to_token", "overlap")


def test_bad_tool_is_refused_like_transformers() -> None:
    with pytest.raises(ValueError, match="JSON schema"):
        environment.prepare_inputs([], [42], None, {})
