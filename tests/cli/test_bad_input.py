"""Bad input through the real CLI: one clear line on stderr, the documented exit code, no traceback.

Each case runs ``templatefix.cli.main([...])`` as a user would and checks the content words of the
message (what is wrong and where), not merely that something was printed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support.hub_server import TEST_TOKEN, FakeHub, hub_environment

from templatefix.cli import main

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *words: str) -> str:
    """stderr holds exactly one ``templatefix: error:`` line containing ``words``; no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("templatefix: error:")]
    assert len(errors) == 1, err
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def write(path: Path, data: str | bytes) -> str:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return str(path)


# -- templates ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["check", "patch"])
def test_malformed_jinja_names_file_line_and_column(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(
        tmp_path / "broken.jinja", "{{ bos_token }}\n{% for m in messages %}\n  x {{ m.content }\n"
    )
    code, _, err = run_cli(capsys, command, source)
    assert code == 2
    assert_one_line_error(err, "broken.jinja", "invalid Jinja", "line 3", "column 5")


@pytest.mark.parametrize("command", ["check", "patch"])
def test_empty_file(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path / "empty.jinja", "  \n")
    code, _, err = run_cli(capsys, command, source)
    assert code == 2
    assert_one_line_error(err, "empty.jinja", "empty")


@pytest.mark.parametrize("command", ["check", "patch"])
def test_file_not_utf8(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path / "latin1.jinja", "{{ 'caf\xe9' }}".encode("latin-1"))
    code, _, err = run_cli(capsys, command, source)
    assert code == 2
    assert_one_line_error(err, "latin1.jinja", "not UTF-8", "byte 7")


def test_missing_source_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "patch", str(tmp_path / "nope.jinja"))
    assert code == 2
    assert_one_line_error(err, "nope.jinja")


def test_template_without_assistant_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only user text is ever rendered: nothing to train, said plainly, exit 1 (not verified)."""
    source = write(
        tmp_path / "users.jinja",
        "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}",
    )
    code, out, err = run_cli(capsys, "patch", source, "-o", str(tmp_path / "out.jinja"))
    assert code == 1
    assert "Traceback" not in err + out
    assert "not verified" in out
    assert re.search(r"never renders what the assistant says|no template output produces assistant text", out)
    _written_unchanged_or_not_at_all(tmp_path / "out.jinja", source)


def test_template_that_raises_on_every_probe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path / "refuses.jinja", "{{ raise_exception('this model has no chat format') }}")
    code, out, err = run_cli(capsys, "patch", source, "-o", str(tmp_path / "out.jinja"))
    assert code == 1
    assert "Traceback" not in err + out
    assert "rejects every probe conversation" in out
    _written_unchanged_or_not_at_all(tmp_path / "out.jinja", source)


def _written_unchanged_or_not_at_all(out: Path, source: str) -> None:
    """A failed patch may pass the input through untouched, never a changed template."""
    if out.exists():
        assert out.read_bytes() == Path(source).read_bytes()


def test_template_that_errors_on_every_probe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path / "typo.jinja", "{% for m in messages %}{{ m.content.nosuch() }}{% endfor %}")
    code, out, err = run_cli(capsys, "patch", source)
    assert code in (1, 2)
    assert "Traceback" not in err + out
    assert "nosuch" in out + err or "every probe" in out + err


SLOW_TEMPLATE = (
    "{% set r = range(100000) %}{% for m in messages %}{{ m.content }}"
    "{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}{% endfor %}"
)


def test_pathological_template_is_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A template that would loop for hours ends quickly, not verified, without a traceback."""
    import time

    monkeypatch.setenv("TEMPLATEFIX_MAX_RENDER_SECONDS", "0.2")
    source = write(tmp_path / "slow.jinja", SLOW_TEMPLATE)
    start = time.monotonic()
    code, out, err = run_cli(capsys, "patch", source)
    assert time.monotonic() - start < 60
    assert code in (1, 2)
    assert "Traceback" not in out + err
    assert "not verified" in out or "error" in err


def test_pathological_template_names_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPLATEFIX_MAX_RENDER_SECONDS", "0.2")
    source = write(tmp_path / "slow.jinja", SLOW_TEMPLATE)
    code, _, err = run_cli(capsys, "patch", source)
    assert code == 2
    assert_one_line_error(err, "slow.jinja", "render stopped", "0.2 s", "TEMPLATEFIX_MAX_RENDER_SECONDS")


# -- tokenizers -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["check", "show"])
def test_missing_tokenizer_path(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path / "chatml.jinja", CHATML)
    code, _, err = run_cli(capsys, command, source, "--tokenizer", str(tmp_path / "no-tokenizer"))
    assert code == 2
    assert_one_line_error(err, "tokenizer directory not found", "no-tokenizer")


def test_missing_tokenizer_path_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write(tmp_path / "d.jsonl", json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    code, _, err = run_cli(capsys, "audit", data, "--tokenizer", str(tmp_path / "no-tokenizer"))
    assert code == 2
    assert_one_line_error(err, "tokenizer directory not found")


@pytest.mark.parametrize("command", ["check", "show"])
def test_slow_tokenizer_where_offsets_are_needed(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    slow = SimpleNamespace(is_fast=False, chat_template=None, special_tokens_map={})

    class SlowTokenizer(SimpleNamespace):
        pass

    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: SlowTokenizer(**vars(slow))
    )
    (tmp_path / "tok").mkdir()
    source = write(tmp_path / "chatml.jinja", CHATML)
    code, _, err = run_cli(capsys, command, source, "--tokenizer", str(tmp_path / "tok"))
    assert code == 2
    assert_one_line_error(err, "SlowTokenizer", "not a fast tokenizer", "offsets")


# -- datasets (audit) -----------------------------------------------------------------------


@pytest.fixture
def tokenizer_path(tokenizers_dir: Path) -> str:
    path = tokenizers_dir / "qwen3"
    if not path.is_dir():
        pytest.skip("no qwen3 tokenizer in TEMPLATEFIX_TOKENIZERS")
    return str(path)


def _jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _audit(capsys: pytest.CaptureFixture[str], data: str, tokenizer: str, template: str) -> tuple[int, Any]:
    code, out, err = run_cli(
        capsys, "audit", data, "--tokenizer", tokenizer, "--template", template, "--json", "--workers", "1"
    )
    assert "Traceback" not in out + err
    return code, json.loads(out)


def _findings(result: Any) -> dict[str, Any]:
    return {
        f["key"] if isinstance(f, dict) and "key" in f else str(i): f
        for i, f in enumerate(result["findings"])
    }


def test_dataset_row_without_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tokenizer_path: str
) -> None:
    template = write(tmp_path / "chatml.jinja", CHATML)
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    data = _jsonl(tmp_path / "d.jsonl", [good, {"text": "no messages here"}, good])
    code, result = _audit(capsys, data, tokenizer_path, template)
    assert code == 1
    text = json.dumps(result)
    assert "no 'messages' column" in text
    assert "[1]" in json.dumps(result).replace(" ", "") or '"indices": [1' in text


def test_dataset_that_is_not_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tokenizer_path: str
) -> None:
    template = write(tmp_path / "chatml.jinja", CHATML)
    data = write(tmp_path / "d.jsonl", "this is not json\n")
    code, out, err = run_cli(capsys, "audit", data, "--tokenizer", tokenizer_path, "--template", template)
    assert code in (1, 2)
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        [{"role": "user", "content": 42}, {"role": "assistant", "content": {"nested": {"dict": [1]}}}],
        [{"role": "user", "content": None}, {"role": "assistant", "content": ["a", 1]}],
    ],
    ids=["unknown role", "int and dict content", "none and list content"],
)
def test_dataset_odd_messages_never_crash(
    messages: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], tokenizer_path: str
) -> None:
    """A template that refuses odd input reports it as a template error on that row, exit 1."""
    strict = write(
        tmp_path / "strict.jinja",
        "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
        "{{ raise_exception('unknown role ' ~ m.role) }}{% endif %}"
        "<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    )
    data = _jsonl(tmp_path / "d.jsonl", [{"messages": messages}])
    code, result = _audit(capsys, data, tokenizer_path, strict)
    assert code in (0, 1)
    if code == 1:
        assert "template" in json.dumps(result)


def test_dataset_file_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tokenizer_path: str
) -> None:
    code, _, err = run_cli(capsys, "audit", str(tmp_path / "gone.jsonl"), "--tokenizer", tokenizer_path)
    assert code == 2
    assert_one_line_error(err, "gone.jsonl", "no such file")


# -- the Hub --------------------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    fake = FakeHub(token=TEST_TOKEN)
    fake.add_repo("org/model", {"chat_template.jinja": CHATML.encode(), "config.json": b"{}"})
    with fake.serving() as url:
        hub_environment(monkeypatch, tmp_path, url)
        yield fake


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr(time, "sleep", lambda seconds: None)


def test_hub_id_that_does_not_exist(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "patch", "org/does-not-exist")
    assert code == 2
    assert_one_line_error(err, "org/does-not-exist", "not found")


def test_no_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_sleep: None
) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hub_environment(monkeypatch, tmp_path, f"http://127.0.0.1:{port}")
    code, _, err = run_cli(capsys, "patch", "org/model")
    assert code == 2
    line = assert_one_line_error(err, "org/model")
    assert "network" in line or "connect" in line.lower()
    assert TEST_TOKEN not in err


def test_network_drops_mid_download(hub: FakeHub, capsys: pytest.CaptureFixture[str], no_sleep: None) -> None:
    hub.fail("^GET /org/model/resolve/", "drop")
    code, _, err = run_cli(capsys, "patch", "org/model")
    assert code == 2
    assert_one_line_error(err, "org/model", "network")


@pytest.mark.parametrize(("kind", "words"), [("401", "authentication failed"), ("403", "permission denied")])
def test_push_without_permission(
    hub: FakeHub, kind: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.fail("^POST /api/models/org/model/(commit|preupload)", kind)
    source = write(tmp_path / "chatml.jinja", CHATML)
    code, out, err = run_cli(capsys, "patch", source, "--push-to", "org/model")
    assert code == 2
    assert_one_line_error(err, words)
    assert TEST_TOKEN not in out + err
    assert hub.commits == []


def test_push_with_a_wrong_token(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_notTheRightToken")
    source = write(tmp_path / "chatml.jinja", CHATML)
    code, out, err = run_cli(capsys, "patch", source, "--push-to", "org/model")
    assert code == 2
    assert_one_line_error(err, "HTTP 401")
    assert "hf_notTheRightToken" not in out + err
    assert hub.commits == []


# -- nothing lost: atomic writes and backups --------------------------------------------------


def _no_temporaries(directory: Path) -> None:
    assert [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("failing", ["os.replace", "os.fsync"])
def test_interrupted_write_keeps_the_previous_file(
    failing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from templatefix.io.files import atomic_write

    target = tmp_path / "chat_template.jinja"
    target.write_bytes(b"previous")

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, failing.split(".")[1], interrupted)
    with pytest.raises(OSError):
        atomic_write(target, b"new content")
    monkeypatch.undo()
    assert target.read_bytes() == b"previous"
    _no_temporaries(tmp_path)


def test_cli_write_failure_is_one_line_and_keeps_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    source = write(tmp_path / "chatml.jinja", CHATML)
    out = tmp_path / "out.jinja"
    out.write_bytes(b"previous")
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(dst) == out:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    code, _, err = run_cli(capsys, "patch", source, "-o", str(out), "--force")
    assert code == 2
    assert_one_line_error(err, "No space left on device")
    assert out.read_bytes() == b"previous"
    _no_temporaries(tmp_path)


def _model_dir(tmp_path: Path) -> tuple[Path, bytes]:
    model = tmp_path / "model"
    model.mkdir()
    original = CHATML.encode()
    (model / "chat_template.jinja").write_bytes(original)
    return model, original


def test_in_place_keeps_a_backup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, original = _model_dir(tmp_path)
    code, out, err = run_cli(capsys, "patch", str(model), "--in-place")
    assert code == 0, out + err
    patched = (model / "chat_template.jinja").read_bytes()
    assert patched != original and b"{% generation %}" in patched
    assert (model / "chat_template.jinja.bak").read_bytes() == original
    _no_temporaries(model)


def test_in_place_no_backup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, original = _model_dir(tmp_path)
    code, out, err = run_cli(capsys, "patch", str(model), "--in-place", "--no-backup")
    assert code == 0, out + err
    assert b"{% generation %}" in (model / "chat_template.jinja").read_bytes()
    assert sorted(p.name for p in model.iterdir()) == ["chat_template.jinja"]


def test_in_place_never_overwrites_a_different_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, original = _model_dir(tmp_path)
    (model / "chat_template.jinja.bak").write_bytes(b"an older backup")
    code, out, err = run_cli(capsys, "patch", str(model), "--in-place")
    assert code == 2
    assert "Traceback" not in out + err
    assert (model / "chat_template.jinja.bak").read_bytes() == b"an older backup"
    assert (model / "chat_template.jinja").read_bytes() == original


def test_expand_turns_failure_keeps_the_previous_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tokenizer_path: str
) -> None:
    import templatefix.data.audit

    template = write(tmp_path / "chatml.jinja", CHATML)
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    data = _jsonl(tmp_path / "d.jsonl", [good] * 3)
    out = tmp_path / "turns.jsonl"
    out.write_text("previous\n")

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(templatefix.data.audit, "audit_rows", interrupted)
    argv = ["audit", data, "--tokenizer", tokenizer_path, "--template", template]
    code, _, err = run_cli(capsys, *argv, "--expand-turns", str(out), "--force", "--workers", "1")
    assert code == 130 and "interrupted" in err
    assert out.read_text() == "previous\n"
    _no_temporaries(tmp_path)
    monkeypatch.undo()
    code, _, err = run_cli(capsys, *argv, "--expand-turns", str(out), "--force", "--workers", "1")
    assert code == 0, err
    assert [json.loads(line)["completion"] for line in out.read_text().splitlines()] == [
        [{"role": "assistant", "content": "yo"}]
    ] * 3
