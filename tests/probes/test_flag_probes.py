"""Flag values combined with tool calls: Nemotron 3 writes ``<think></think>`` before its calls,
which is the generation prompt's with thinking off and half the answer's with thinking on. A patch
that marks it for one value is wrong for the other, so it must not be verified unless it is right
on thinking-off conversations with calls (judged by the independent checker)."""

from __future__ import annotations

from pathlib import Path

import pytest
from independent.conversations import Conversation
from independent.judge import judge

from templatefix.patch.api import patch_template
from templatefix.probes import fixed_battery
from templatefix.shapes import make_probe

NEMOTRON_3 = ("nemotron/NVIDIA-Nemotron-3-Nano-30B-A3B.jinja", "nemotron/NVIDIA-Nemotron-3-Ultra.jinja")
#: One call with no text, one after reasoning, two after text, two with neither.
CALL_SHAPES = ("tool_calls", "reasoning_tool_calls", "tool_calls_multi", "tool_calls_parallel")


def _read(corpus_dir: Path, name: str) -> str:
    path = corpus_dir / "templates" / name
    if not path.is_file():
        pytest.skip(f"{name} is not in this corpus")
    return path.read_text(encoding="utf-8")


@pytest.mark.corpus
@pytest.mark.parametrize("name", NEMOTRON_3)
def test_nemotron_3_battery_has_thinking_off_tool_calls(corpus_dir: Path, name: str) -> None:
    names = {probe.name for probe in fixed_battery(_read(corpus_dir, name))}
    for shape in (*CALL_SHAPES, "reasoning_some_turns"):
        assert f"{shape}[enable_thinking=False]" in names


@pytest.mark.corpus
@pytest.mark.parametrize("name", NEMOTRON_3)
def test_nemotron_3_patch_is_right_with_thinking_off_tool_calls_or_not_verified(
    corpus_dir: Path, name: str
) -> None:
    original = _read(corpus_dir, name)
    result = patch_template(original)
    wrong = []
    for shape in CALL_SHAPES:
        probe = make_probe(shape)
        conversation = Conversation(list(probe.messages), {**probe.render_kwargs(), "enable_thinking": False})
        verdict = judge(original, result.patched, conversation)
        assert not verdict.skipped, shape
        if not verdict.ok:
            wrong.append(shape)
    assert not (result.verified and wrong), f"{result.status}, wrong on {wrong}"
