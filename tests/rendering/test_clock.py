"""A template that prints the time is patched and verified: one patch sees one frozen clock.

The original, the instrumented trace, the patched template and the verifier all render inside
``templatefix.clock.frozen_clock``; the independent judge pins its own moment.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from independent.conversations import random_conversation
from independent.judge import judge

import templatefix
from templatefix.clock import frozen_clock, now, transformers_clock
from templatefix.render import render
from templatefix.tokens import check_token_masks

CHATML_BODY = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MICROSECONDS = "{{ strftime_now('%Y-%m-%d %H:%M:%S.%f') }}" + CHATML_BODY
#: Llama 3.x: the date in the system header, set once before the loop.
LLAMA_DATE = (
    "{{- bos_token }}{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now(\"%d %b %Y\") %}{%- else %}{%- set date_string = \"26 Jul 2024\" %}"
    "{%- endif %}{%- endif %}<|start_header_id|>system<|end_header_id|>\n\nToday Date: {{ date_string }}"
    "<|eot_id|>{% for message in messages %}<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n"
    "{{ message.content | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
#: The time inside an assistant turn: each turn's text depends on the clock too.
IN_TURN = (
    "{% for m in messages %}{% if m.role == 'assistant' %}[{{ strftime_now('%S.%f') }}] {% endif %}"
    "{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}"
    "[{{ strftime_now('%S.%f') }}] assistant: {% endif %}"
)


@pytest.mark.parametrize(
    "template", [MICROSECONDS, LLAMA_DATE, IN_TURN], ids=["microseconds", "llama", "in-turn"]
)
def test_clock_templates_verify(template: str) -> None:
    result = templatefix.patch_template(template)
    assert result.status == "exact", result.reasons
    assert result.changed


@pytest.mark.parametrize("template", [MICROSECONDS, IN_TURN], ids=["microseconds", "in-turn"])
def test_independent_judge_accepts_clock_patches(template: str) -> None:
    patched = templatefix.patch_template(template).patched
    owed = 0
    for seed in range(4):
        verdict = judge(template, patched, random_conversation(seed))
        assert verdict.ok, verdict.failures
        assert not verdict.skipped
        owed += verdict.owed
    assert owed >= 4


def test_frozen_clock_pins_one_moment_and_nests() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901)
    template = "{{ strftime_now('%d %b %Y %H:%M:%S.%f') }}"
    with frozen_clock(moment) as pinned:
        assert pinned == moment
        assert render(template, []) == "02 Jan 2026 03:04:05.678901"
        with frozen_clock() as inner:  # a check inside a patch keeps the patch's moment
            assert inner == moment
            assert render(template, []) == "02 Jan 2026 03:04:05.678901"
        later = moment + timedelta(days=1)
        with frozen_clock(later):
            assert render(template, []) == "03 Jan 2026 03:04:05.678901"
        assert now() == moment


def test_clock_runs_outside_a_frozen_block() -> None:
    before = datetime.now()
    text = render("{{ strftime_now('%Y-%m-%dT%H:%M:%S.%f') }}", [])
    after = datetime.now()
    assert before <= datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f") <= after


def test_transformers_renders_see_the_frozen_clock(load_tokenizer: Any) -> None:
    tokenizer = load_tokenizer("qwen2.5")
    template = "{{ strftime_now('%H:%M:%S.%f') }}"
    messages = [{"role": "user", "content": "hi"}]
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901)
    with frozen_clock(moment), transformers_clock():
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    assert text == "03:04:05.678901"
    with transformers_clock():  # no frozen clock: the real time
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    assert text != "03:04:05.678901"


def test_token_check_sees_the_frozen_clock(load_tokenizer: Any) -> None:
    tokenizer = load_tokenizer("qwen2.5")
    patched = templatefix.patch_template(MICROSECONDS).patched
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    with frozen_clock():
        assert check_token_masks(patched, tokenizer, messages) == []
