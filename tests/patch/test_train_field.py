"""Per-message loss control (policy ``train_field``): a turn whose field is false is not trained,
the render never changes, and the verifier probes both kinds of turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from templatefix import Policy, patch_template, verify
from templatefix.cli import main
from templatefix.conversation import Probe
from templatefix.probes import train_field_variants
from templatefix.render import render, render_with_spans

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
MESSAGES = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "2 + 2?"},
    {"role": "assistant", "content": "5.", "train": False},
    {"role": "user", "content": "Again?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "6.", "train": True},
]


def test_policy_field_must_be_a_name() -> None:
    assert Policy(train_field="train").trains({"train": True})
    assert Policy(train_field="train").trains({})
    assert not Policy(train_field="train").trains({"train": False})
    assert Policy().trains({"train": False})  # no field, no switch
    for bad in ("", "a-b", "role", "1x"):
        with pytest.raises(ValueError, match="train_field"):
            Policy(train_field=bad)


def test_variants_switch_turns_off_both_ways() -> None:
    probe = Probe("two", tuple(MESSAGES[1:2] + [{"role": "assistant", "content": "x"}] + MESSAGES[3:5]))
    base, first, last = train_field_variants([probe], "train")
    assert base is probe and first.name == "two[train]" and last.name == "two[train@1]"
    assert [m.get("train") for m in first.messages if m["role"] == "assistant"] == [False, True]
    assert [m.get("train") for m in last.messages if m["role"] == "assistant"] == [True, False]


#: The answer after tool results is written by its own output (DeepSeek-R1's shape), which only a
#: later assistant turn reaches.
AFTER_TOOLS = (
    "{% set ns = namespace(is_tool=false) %}{% for m in messages %}"
    "{% if m.role == 'user' %}{% set ns.is_tool = false %}<U>{{ m.content }}"
    "{% elif m.role == 'tool' %}{% set ns.is_tool = true %}<T>{{ m.content }}"
    "{% elif m.role == 'assistant' %}"
    "{% if ns.is_tool %}{{ '<T_END>' + m.content + '<E>' }}{% set ns.is_tool = false %}"
    "{% else %}<A>{% if m.tool_calls %}{% for c in m.tool_calls %}<C>{{ c.function.name }}{% endfor %}"
    "{% else %}{{ m.content }}{% endif %}<E>{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{% if ns.is_tool %}<T_END>{% else %}<A>{% endif %}{% endif %}"
)


def test_a_switched_off_answer_after_tool_results_is_untrained() -> None:
    result = patch_template(AFTER_TOOLS, train_field="train")
    assert result.verified, result.reasons
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "lookup", "arguments": {}}}]},
        {"role": "tool", "content": "cold"},
        {"role": "assistant", "content": "wrapped-up", "train": False},
    ]
    text, spans = render_with_spans(result.patched, messages)
    assert text == render(AFTER_TOOLS, messages)
    trained = "".join(text[start:end] for start, end in spans)
    assert "lookup" in trained and "wrapped-up" not in trained


@pytest.mark.parametrize("name", ["chatml.jinja", "gemma.jinja", "llama3.jinja"])
def test_patched_template_gates_each_turn_on_the_field(name: str) -> None:
    original = (TEMPLATES / name).read_text(encoding="utf-8")
    result = patch_template(original, train_field="train")
    assert result.verified, result.reasons
    assert "train is false" in result.patched
    # the verifier saw both kinds: probes with a switched-off turn, judged untrained
    verdicts = [turn.verdict for probe in result.report.probes if probe.name.endswith("[train]")
                for turn in probe.turns]
    assert "untrained" in verdicts and any(v != "untrained" for v in verdicts)
    # rule 1: the render is the original's; spans: exactly the turns not switched off
    assert render(result.patched, MESSAGES) == render(original, MESSAGES)
    text, spans = render_with_spans(result.patched, MESSAGES)
    trained = "".join(text[start:end] for start, end in spans)
    assert "4." in trained and "6." in trained and "5." not in trained
    default = patch_template(original)
    _, default_spans = render_with_spans(default.patched, MESSAGES)
    assert len(default_spans) > len(spans)  # the same template without the field trains the third turn too


def test_verify_catches_a_template_that_ignores_the_field() -> None:
    original = (TEMPLATES / "chatml.jinja").read_text(encoding="utf-8")
    ignores = patch_template(original).patched  # trains every turn, field or not
    report = verify(ignores, original, policy=Policy(train_field="train"))
    assert not report.verified
    assert any("[train]" in failure for failure in report.failures())


def test_cli_train_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "patched.jinja"
    assert main(["patch", str(TEMPLATES / "chatml.jinja"), "--train-field", "train", "-o", str(out)]) == 0
    assert "train is false" in out.read_text(encoding="utf-8")
    capsys.readouterr()
    argv = ["check", str(out), "--original", str(TEMPLATES / "chatml.jinja")]
    assert main([*argv, "--train-field", "train"]) == 0
    assert main(argv) == 0  # conversations without the field train every turn, as before
    capsys.readouterr()
    assert main([*argv, "--train-field", "no-such name"]) == 2
    assert "train_field" in capsys.readouterr().err
