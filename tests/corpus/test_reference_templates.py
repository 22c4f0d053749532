"""The reference templates in ``templates/`` are sound patcher inputs.

Each compiles; renders every probe of its battery or refuses it on purpose (``raise_exception``,
never a crash); and its generation prompt is a prefix of the training render of the turn that
follows (SPEC §2: ``render(M[:i], add_generation_prompt=True)`` starts
``render(M[:i+1])``), with that turn's own text inside the continuation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from support.strategies import random_probes

from templatefix.conversation import Probe
from templatefix.errors import TemplateRejected
from templatefix.flags import find_flags
from templatefix.probes import probe_battery
from templatefix.render import compile_template, render
from templatefix.shapes import make_probe

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "templates"
TEMPLATES = {path.stem: path.read_text(encoding="utf-8") for path in sorted(REFERENCE_DIR.glob("*.jinja"))}
NAMES = list(TEMPLATES)

#: Shapes without tools or several roles in a row: every reference template must render them.
UNIVERSAL_SHAPES = (
    "single_turn",
    "system_multi_turn",
    "multi_turn",
    "reasoning",
    "content_parts",
    "empty_content",
)
#: Shapes whose assistant turns carry no reasoning, so no flag may break the prompt/turn prefix.
PLAIN_SHAPES = (*UNIVERSAL_SHAPES[:3], "content_parts", "empty_content", "tool_calls")


def test_reference_set_is_complete() -> None:
    assert set(NAMES) >= {"chatml", "gemma", "harmony", "llama3", "mistral"}
    assert (REFERENCE_DIR / "README.md").read_text(encoding="utf-8").count(".jinja") >= len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_compiles_and_stays_small(name: str) -> None:
    compile_template(TEMPLATES[name])
    assert len(TEMPLATES[name].splitlines()) <= 60


def _render_or_refuse(template: str, probe: Probe, **extra: Any) -> str | None:
    """The render, or None when the template refuses on purpose; any other failure raises."""
    try:
        return render(template, probe.conversation(), **probe.render_kwargs(), **extra)
    except TemplateRejected:
        return None


@pytest.mark.parametrize("name", NAMES)
def test_renders_or_refuses_every_probe(name: str) -> None:
    template = TEMPLATES[name]
    for probe in probe_battery(template):
        text = _render_or_refuse(template, probe)
        if probe.name in UNIVERSAL_SHAPES:
            assert text is not None, f"{name} refused {probe.name}"
        if text is None:
            continue
        for message in probe.messages:  # user and tool texts always show; assistant ones may be history
            if message["role"] in ("user", "tool") and isinstance(message.get("content"), str):
                # templates may trim the whitespace some probes put around contents
                lost = f"{name} lost a {message['role']} message in {probe.name}"
                assert message["content"].strip() in text, lost


def _generated_words(message: dict[str, Any]) -> list[str]:
    """Texts the model writes in this turn: the call arguments if it calls tools (several of these
    formats drop the content beside a call), else the content."""
    if message.get("tool_calls"):
        arguments = [(call.get("function") or call)["arguments"] for call in message["tool_calls"]]
        return [(json.loads(a) if isinstance(a, str) else a)["query"] for a in arguments]
    content = message.get("content", "")
    words = [content] if isinstance(content, str) else [part.get("text", "") for part in content]
    return [word.strip() for word in words if word.strip()]  # templates may trim edge whitespace


def _assert_prompt_prefixes_turns(template: str, probe: Probe, **flags: Any) -> int:
    """Check every assistant turn as the last turn; return how many turns were checked."""
    messages = probe.conversation()
    kwargs = {**probe.render_kwargs(), **flags}
    checked = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        try:
            prompt = render(template, messages[:index], add_generation_prompt=True, **kwargs)
            full = render(template, messages[: index + 1], **kwargs)
        except TemplateRejected:
            continue
        where = f"{probe.name} {flags} turn {index}"
        assert full.startswith(prompt), f"generation prompt is not a prefix of the turn: {where}"
        generated = full[len(prompt) :]
        for word in _generated_words(message):
            assert word in generated, f"turn text outside the generated part: {where}"
        checked += 1
    return checked


@pytest.mark.parametrize("name", NAMES)
def test_generation_prompt_prefixes_every_last_turn(name: str) -> None:
    template = TEMPLATES[name]
    # Flag variants are left to the next test: with thinking switched off, a turn that still
    # carries reasoning disagrees with its prompt on purpose (as Qwen3 does).
    battery = [probe for probe in probe_battery(template) if "[" not in probe.name]
    checked = sum(_assert_prompt_prefixes_turns(template, probe) for probe in battery)
    assert checked >= len(UNIVERSAL_SHAPES)


@pytest.mark.parametrize("name", NAMES)
def test_generation_prompt_prefixes_plain_turns_under_every_flag(name: str) -> None:
    template = TEMPLATES[name]
    for flag, values in find_flags(template).items():
        for value in values:
            for shape in PLAIN_SHAPES:
                _assert_prompt_prefixes_turns(template, make_probe(shape), **{flag: value})


def test_chatml_disabled_thinking_puts_an_empty_think_block_in_the_prompt() -> None:
    messages = make_probe("single_turn").conversation()
    prompt = render(TEMPLATES["chatml"], messages[:1], add_generation_prompt=True, enable_thinking=False)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert render(TEMPLATES["chatml"], messages, enable_thinking=False).startswith(prompt)


def test_harmony_history_ends_with_end_and_last_turn_with_return() -> None:
    probe = make_probe("reasoning_multi_turn")
    messages = probe.conversation()
    for message in messages:  # transformers 5 aliases these itself; 4.x passes only what it is given
        if "reasoning_content" in message:
            message.setdefault("thinking", message["reasoning_content"])
    text = render(TEMPLATES["harmony"], messages)
    first, last = probe.messages[2], probe.messages[4]
    assert f"<|channel|>final<|message|>{first['content']}<|end|>" in text
    assert text.endswith(f"<|channel|>final<|message|>{last['content']}<|return|>")
    assert first["reasoning_content"] not in text  # analysis before the last user turn is dropped
    assert f"<|channel|>analysis<|message|>{last['reasoning_content']}<|end|>" in text


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(probe=random_probes())
def test_random_conversations_render_or_are_refused(name: str, probe: Probe) -> None:
    template = TEMPLATES[name]
    if _render_or_refuse(template, probe) is not None:
        _assert_prompt_prefixes_turns(template, probe)
