"""Per-message loss control (policy ``train_field``): a turn whose field is false is not trained,
the render never changes, and the verifier probes both kinds of turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from templatefix import Policy, patch_template, verify
from templatefix.cli import main
from templatefix.probes import Probe, train_field_variants
from templatefix.render import render, render_with_spans

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
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
    base, variant = train_field_variants([probe], "train")
    assert base is probe and variant.name == "two[train]"
    assert [m.get("train") for m in variant.messages if m["role"] == "assistant"] == [False, True]


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
