"""Every output seen under every flag value (``templatefix.coverage.flag_cover``).

The template below writes ``<think></think>`` before an assistant message whose content is a list
of parts, whatever ``enable_thinking`` is; its generation prompt writes it only with thinking off.
So with thinking on the literal is the answer's, and with thinking off the prompt's. The fixed
battery passes the flag only with its flag shapes, whose contents are strings: without
``flag_cover`` no probe reaches the parts branch with thinking off, the labeller never sees that
case, and the patch trains the prompt's ``<think></think>`` there while calling itself verified.
The independent judge (``tests/independent``, no code shared with templatefix) decides.
"""

from __future__ import annotations

import pytest
from independent.conversations import Conversation
from independent.judge import judge

import templatefix
from templatefix import coverage
from templatefix.flags import find_flags
from templatefix.probes import fixed_battery

TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'user' -%}<|user|>{{ m.content if m.content is string "
    "else m.content|map(attribute='text')|join('') }}<|end|>\n"
    "{%- elif m.role == 'assistant' -%}<|assistant|>"
    "{%- if m.content is string -%}"
    "{%- if enable_thinking is defined and not enable_thinking -%}<think></think>{%- endif -%}{{ m.content }}"
    "{%- else -%}{{ '<think></think>' }}{{ m.content|map(attribute='text')|join('') }}{%- endif -%}"
    "<|end|>\n"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>"
    "{%- if enable_thinking is defined and not enable_thinking -%}<think></think>{%- endif -%}{%- endif -%}"
)

#: Content parts in the assistant's answer, thinking off: the case only ``flag_cover`` probes.
PARTS_THINKING_OFF = Conversation(
    [
        {"role": "user", "content": "question alpha1q"},
        {"role": "assistant", "content": [{"type": "text", "text": "answer bravo2q"}]},
    ],
    {"enable_thinking": False},
)


def test_flag_cover_adds_the_parts_probe_with_thinking_off() -> None:
    battery = fixed_battery(TEMPLATE)
    flags = find_flags(TEMPLATE)
    assert False in flags["enable_thinking"]
    added = coverage.flag_cover(TEMPLATE, battery, flags)
    with_parts_off = [
        probe
        for probe in added
        if probe.kwargs.get("enable_thinking") is False
        and any(isinstance(m.get("content"), list) for m in probe.messages if m.get("role") == "assistant")
    ]
    assert with_parts_off, [probe.name for probe in added]
    # nothing is added twice: each kept probe reached an output under a value no other did
    assert len({probe.name for probe in added}) == len(added)


def test_flag_cover_adds_nothing_without_flags() -> None:
    plain = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    assert coverage.flag_cover(plain, fixed_battery(plain), find_flags(plain)) == []


def test_the_patch_is_right_with_thinking_off() -> None:
    result = templatefix.patch_template(TEMPLATE)
    assert result.verified, result.reasons
    verdict = judge(TEMPLATE, result.patched, PARTS_THINKING_OFF)
    assert not verdict.skipped
    assert verdict.ok, [str(failure) for failure in verdict.failures]


def test_without_flag_cover_the_verdict_would_be_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    """The case this module exists for: the same template (a comment makes it a new text, so no
    cached battery is reused) patched without ``flag_cover`` is called verified and is wrong."""
    monkeypatch.setattr(coverage, "flag_cover", lambda *args, **kwargs: [])
    text = TEMPLATE + "{# without flag_cover #}"
    result = templatefix.patch_template(text)
    assert result.verified
    verdict = judge(text, result.patched, PARTS_THINKING_OFF)
    assert not verdict.ok


def test_flag_cover_sets_one_flag_at_a_time() -> None:
    """Two switches (``force`` and ``skip``) that contradict each other when both are on: a probe
    made by ``flag_cover`` passes one of them, never both."""
    template = TEMPLATE.replace(
        "{%- if add_generation_prompt -%}",
        "{%- if force and not skip -%}!{%- endif -%}{%- if add_generation_prompt -%}",
    )
    flags = find_flags(template)
    assert {"enable_thinking", "force", "skip"} <= set(flags)
    added = coverage.flag_cover(template, fixed_battery(template), flags)
    assert added
    assert all(sum(flag in probe.kwargs for flag in flags) == 1 for probe in added), [p.name for p in added]
