"""`templatefix check`: exit codes, JSON output, SOURCE layouts, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from templatefix.cli import main

ORIGINAL = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NL = "{{ '\\n' }}"
CORRECT = (
    "{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>assistant\n{% generation %}"
    "{{ m.content }}<|im_end|>{% endgeneration %}" + NL + "{% else %}<|im_start|>{{ m.role }}\n"
    "{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HEADER_INSIDE = CORRECT.replace("assistant\n{% generation %}", "assistant{% generation %}" + NL)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["check", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_verified_template_exits_zero(tmp_path, capsys):
    patched, original = write(tmp_path / "p.jinja", CORRECT), write(tmp_path / "o.jinja", ORIGINAL)
    code, out, _ = run(capsys, str(patched), "--original", str(original))
    assert code == 0
    assert "VERIFIED" in out and "NOT VERIFIED" not in out


def test_wrong_span_exits_one_and_json_says_where(tmp_path, capsys):
    code, out, _ = run(
        capsys, str(write(tmp_path / "p.jinja", HEADER_INSIDE)), "--original",
        str(write(tmp_path / "o.jinja", ORIGINAL)), "--json",
    )
    assert code == 1
    data = json.loads(out)
    assert data["verified"] is False
    [report] = data["templates"]
    assert report["render_compared"] is True
    assert report["failures"] and all("start at" in line for line in report["failures"])


def test_policy_options_reach_the_verifier(tmp_path, capsys):
    source = str(write(tmp_path / "p.jinja", CORRECT))
    code, out, _ = run(capsys, source, "--turns", "last", "--json")
    assert code == 1  # every assistant turn is marked, but only the last may be
    assert json.loads(out)["templates"][0]["policy"]["turns"] == "last"
    code, out, _ = run(capsys, source, "--turns", "last_message", "--json")
    assert code == 1
    assert json.loads(out)["templates"][0]["policy"]["turns"] == "last_message"
    code, out, _ = run(capsys, source, "--trailing-whitespace", "in", "--json")
    assert json.loads(out)["templates"][0]["policy"]["trailing_whitespace"] == "in"


def test_no_markers_exits_one(tmp_path, capsys):
    code, out, _ = run(capsys, str(write(tmp_path / "o.jinja", ORIGINAL)), "--json")
    assert code == 1
    assert "no {% generation %} markers" in json.loads(out)["templates"][0]["errors"][0]


def test_directory_with_tokenizer_config_list_checks_each_template(tmp_path, capsys):
    templates = [{"name": "default", "template": CORRECT}, {"name": "plain", "template": ORIGINAL}]
    config = {"chat_template": templates}
    write(tmp_path / "tokenizer_config.json", json.dumps(config))
    code, out, _ = run(capsys, str(tmp_path), "--json")
    assert code == 1
    verdicts = [t["verified"] for t in json.loads(out)["templates"]]
    assert verdicts == [True, False]


def test_directory_with_chat_template_jinja(tmp_path, capsys):
    write(tmp_path / "chat_template.jinja", CORRECT)
    code, _, _ = run(capsys, str(tmp_path))
    assert code == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("", "empty"),
        (b"\xff\xfe", "not UTF-8"),
        ("{% if %}", "invalid Jinja at line 1, column 1"),
    ],
    ids=["missing", "empty", "not-utf8", "bad-jinja"],
)
def test_bad_input_is_one_line_and_exit_two(tmp_path, capsys, content, message):
    path = tmp_path / "t.jinja"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        write(path, content)
    code, out, err = run(capsys, str(path))
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_original_is_bad_input(tmp_path, capsys):
    patched, original = write(tmp_path / "p.jinja", CORRECT), write(tmp_path / "o.jinja", "{{ x")
    code, _, err = run(capsys, str(patched), "--original", str(original))
    assert code == 2 and "invalid Jinja" in err


def test_trailing_whitespace_in_or_out_is_accepted_unless_a_policy_is_given(tmp_path, capsys):
    # SPEC rule 2 allows the newline after <|im_end|> in or out of the span.
    marked_with_newline = (
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' }}"
        "{% if m.role == 'assistant' %}{% generation %}{{ m.content + '<|im_end|>\\n' }}{% endgeneration %}"
        "{% else %}{{ m.content + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    source = write(tmp_path / "t.jinja", marked_with_newline)
    assert run(capsys, str(source))[0] == 0
    assert run(capsys, str(source), "--trailing-whitespace", "in")[0] == 0
    code, out, _ = run(capsys, str(source), "--trailing-whitespace", "out")
    assert code == 1 and "whitespace" in out
