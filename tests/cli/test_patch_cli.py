"""``templatefix patch`` end to end: local files and directories, the loopback Hub, pushes and PRs.

Most tests use a fake patcher (a tiny template, deterministic verdicts) so they test the command,
not the patcher; the acceptance tests at the end use the real patcher on real corpus templates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fakes import TINY, TINY_PATCHED, UNVERIFIABLE, fake_patch_template
from support.hub_server import TEST_TOKEN, FakeHub, hub_environment, hub_offline

import templatefix
from templatefix.cli import main


@pytest.fixture
def fake_patcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(templatefix, "patch_template", fake_patch_template)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["patch", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- local SOURCEs -----------------------------------------------------------------------------


def test_preview_writes_nothing(
    fake_patcher: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "t.jinja", TINY)
    code, out, _ = run(capsys, str(path))
    assert code == 0
    assert "✓ verified" in out and "+" + TINY_PATCHED.splitlines()[0] in out
    assert "nothing written" in out
    assert _tree(tmp_path) == {"t.jinja": TINY.encode()}


def test_stdout_output_is_the_patched_template(
    fake_patcher: None, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    crlf = TINY.replace("\n", "\r\n") + "\r\n"
    path = _write(tmp_path / "t.jinja", crlf)
    code = main(["patch", str(path), "-o", "-"])
    out, err = capsysbinary.readouterr()
    assert code == 0
    assert (
        out == crlf.replace(TINY.replace("\n", "\r\n"), TINY_PATCHED.replace("\n", "\r\n")).encode()
        or out == fake_patch_template(crlf).patched.encode()
    )
    assert b"verified" in err


def test_output_file_and_conflicts(
    fake_patcher: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "t.jinja", TINY)
    target = tmp_path / "out.jinja"
    assert run(capsys, str(path), "-o", str(target))[0] == 0
    assert target.read_text() == TINY_PATCHED
    target.write_text("user's own file")
    code, _, err = run(capsys, str(path), "-o", str(target))
    assert code == 2 and "exists and differs" in err and err.count("\n") == 1
    assert target.read_text() == "user's own file"
    assert run(capsys, str(path), "-o", str(target), "--force")[0] == 0
    assert target.read_text() == TINY_PATCHED


def test_output_directory_same_layout(
    fake_patcher: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    _write(model / "chat_template.jinja", TINY)
    _write(model / "additional_chat_templates" / "tool_use.jinja", TINY + "{# tools #}")
    _write(model / "model.safetensors", b"\0" * 64)
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, str(model), "-o", str(out))
    assert code == 0, stdout
    files = _tree(out)
    assert sorted(files) == [
        "additional_chat_templates/tool_use.jinja",
        "chat_template.jinja",
        "templatefix-report.json",
    ]
    assert files["chat_template.jinja"] == TINY_PATCHED.encode()
    report = json.loads(files["templatefix-report.json"])
    assert report["verified"] is True
    assert [t["label"] for t in report["templates"]] == [
        "chat_template.jinja",
        "additional_chat_templates/tool_use.jinja",
    ]
    assert _tree(model)["chat_template.jinja"] == TINY.encode()  # the input is never touched


def test_output_directory_cannot_be_the_source(
    fake_patcher: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "chat_template.jinja", TINY)
    code, _, err = run(capsys, str(tmp_path), "-o", str(tmp_path))
    assert code == 2 and "use --in-place" in err


def test_in_place_with_and_without_backup(
    fake_patcher: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {"chat_template": TINY, "eos_token": "</s>"}
    path = _write(tmp_path / "tokenizer_config.json", json.dumps(config, indent=2))
    original = path.read_bytes()
    assert run(capsys, str(tmp_path), "--in-place")[0] == 0
    assert json.loads(path.read_text()) == {**config, "chat_template": TINY_PATCHED}
    assert (tmp_path / "tokenizer_config.json.bak").read_bytes() == original
    file_source = _write(tmp_path / "other" / "t.jinja", TINY)
    assert run(capsys, str(file_source), "--in-place", "--no-backup")[0] == 0
    assert _tree(file_source.parent) == {"t.jinja": TINY_PATCHED.encode()}


def test_unverified_is_not_written_unless_forced(
    fake_patcher: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "chat_template.jinja", UNVERIFIABLE)
    code, out, _ = run(capsys, str(tmp_path), "--in-place")
    assert code == 1
    assert "not verified" in out and "fake: cannot place the span" in out
    assert "not written" in out
    assert _tree(tmp_path) == {"chat_template.jinja": UNVERIFIABLE.encode()}
    assert run(capsys, str(tmp_path), "--in-place", "--force")[0] == 1  # written, still not verified
    assert (tmp_path / "chat_template.jinja").read_text() == UNVERIFIABLE.replace(TINY, TINY_PATCHED)


@pytest.mark.parametrize("target", ["out.jinja", "outdir"])
def test_unverified_output_is_not_written_unless_forced(
    fake_patcher: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    source = _write(tmp_path / "src" / "chat_template.jinja", UNVERIFIABLE)
    out_path = tmp_path / target
    code, out, _ = run(capsys, str(source), "-o", str(out_path))
    assert code == 1
    assert "nothing written" in out and "--force" in out
    assert not out_path.exists()
    assert _tree(source.parent) == {"chat_template.jinja": UNVERIFIABLE.encode()}
    assert run(capsys, str(source), "-o", str(out_path), "--force")[0] == 1  # written, still not verified
    assert out_path.exists()


def test_json_result(fake_patcher: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "t.jinja", TINY)
    code, out, _ = run(capsys, str(path), "--json", "--turns", "last")
    data = json.loads(out)
    assert code == 0
    assert data["verified"] is True and data["policy"]["turns"] == "last"
    assert data["templates"][0]["changed"] is True and data["templates"][0]["diff"].startswith(
        "--- a/t.jinja"
    )
    assert data["changed_files"] == ["t.jinja"] and data["written"] == []


def test_as_named_in_directory(
    fake_patcher: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    _write(model / "chat_template.jinja", TINY)
    assert run(capsys, str(model), "--as-named", "training", "-o", str(tmp_path / "out"))[0] == 0
    files = _tree(tmp_path / "out")
    assert files["chat_template.jinja"] == TINY.encode()  # the default stays as it was
    assert files["additional_chat_templates/training.jinja"] == TINY_PATCHED.encode()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope/a/b"], "no such file or directory"),
        (["{src}", "--in-place", "-o", "x"], "either -o OUT or --in-place"),
        (["{src}", "--no-backup"], "--no-backup only applies to --in-place"),
        (["{src}", "--create-pr"], "--create-pr needs --push-to"),
        (["{src}", "--revision", "main"], "--revision applies to Hub repo ids"),
        (["{src}", "--as-named", "training"], "needs a model directory"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    fake_patcher: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    src = _write(tmp_path / "t.jinja", TINY)
    code, _, err = run(capsys, *[a.replace("{src}", str(src)) for a in argv])
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


# ---- the loopback Hub --------------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    fake = FakeHub(token=TEST_TOKEN)
    fake.add_repo(
        "org/tiny",
        {"chat_template.jinja": TINY.encode(), "model.safetensors": b"\0", "config.json": b"{}"},
        sizes={"model.safetensors": 10**10},
    )
    fake.add_repo("org/unverifiable", {"chat_template.jinja": UNVERIFIABLE.encode()})
    with fake.serving() as url:
        hub_environment(monkeypatch, tmp_path, url)
        yield fake


def test_hub_to_directory(
    fake_patcher: None, hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "org/tiny", "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert _tree(tmp_path / "out")["chat_template.jinja"] == TINY_PATCHED.encode()
    assert hub.downloaded() == ["chat_template.jinja"]
    assert TEST_TOKEN not in out + err


def test_dry_run_pr_equals_real_pr(
    fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "org/tiny", "--create-pr", "--dry-run", "--json", "--as-default")
    assert code == 0
    planned = json.loads(out)["push"]
    assert hub.commits == [] and planned["pushed"] is False and planned["status"] == "would open"
    assert planned["files"] == ["chat_template.jinja"]
    code, out, _ = run(capsys, "org/tiny", "--create-pr", "--json", "--as-default")
    assert code == 0
    (commit,) = hub.commits
    assert commit.create_pr and commit.files == {"chat_template.jinja": TINY_PATCHED.encode()}
    assert (commit.summary, commit.description) == (planned["title"], planned["description"])
    pushed = json.loads(out)["push"]
    assert pushed["pr_url"].endswith("/org/tiny/discussions/1")
    assert (
        hub.repos["org/tiny"].snapshots[hub.repos["org/tiny"].refs["main"]]["chat_template.jinja"]
        == TINY.encode()
    )


def test_dry_run_text_output(fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "org/tiny", "--create-pr", "--dry-run")
    assert code == 0
    assert "dry run: would open a pull request on org/tiny (base main) with 1 file(s):" in out
    assert "  additional_chat_templates/training.jinja (" in out
    assert "title: Add a 'training' chat template with {% generation %} markers" in out
    assert "jinja2 (plain)" in out and "inference engines" in out
    assert "«" in out and "assistant_only_loss" in out
    assert hub.commits == []


def test_push_to_other_repo(
    fake_patcher: None, hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.add_repo("me/fork", {"README.md": b"fork"})
    src = _write(tmp_path / "model" / "chat_template.jinja", TINY)
    code, out, _ = run(capsys, str(src.parent), "--push-to", "me/fork")
    assert code == 0, out
    (commit,) = hub.commits
    assert (commit.repo_id, commit.create_pr, commit.files) == (
        "me/fork",
        False,
        {"chat_template.jinja": TINY_PATCHED.encode()},
    )
    assert commit.summary.startswith("Add {% generation %} markers")


def test_unverified_is_not_pushed(
    fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "org/unverifiable", "--create-pr")
    assert code == 1 and "not pushed to org/unverifiable" in err and hub.commits == []
    code, _, _ = run(capsys, "org/unverifiable", "--create-pr", "--force")
    assert code == 1  # pushed on request, still reported as not verified
    (commit,) = hub.commits
    assert "NOT verified" in commit.description and "fake: cannot place the span" in commit.description


@pytest.mark.parametrize(
    ("pattern", "kind", "expected"),
    [
        ("^GET /api/models/org/tiny", "401", "HTTP 401"),
        ("^GET /api/models/org/tiny", "404", "repository not found"),
        ("^GET /org/tiny/resolve/", "drop", "network error"),
    ],
)
def test_hub_failures_leave_no_output(
    fake_patcher: None,
    hub: FakeHub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    pattern: str,
    kind: str,
    expected: str,
) -> None:
    import time

    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    hub.fail(pattern, kind)
    code, out, err = run(capsys, "org/tiny", "-o", str(tmp_path / "out"))
    assert code == 2
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert TEST_TOKEN not in out + err


@pytest.mark.parametrize(("kind", "expected"), [("401", "authentication failed"), ("drop", "network error")])
def test_push_failures(
    fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str], kind: str, expected: str
) -> None:
    hub.fail("^POST /api/models/org/tiny/commit/", kind)
    code, _, err = run(capsys, "org/tiny", "--create-pr")
    assert code == 2 and "push failed" in err and expected in err and err.count("\n") == 1
    assert hub.commits == []


def test_offline_cli(
    fake_patcher: None,
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hub_offline(monkeypatch, True)
    code, _, err = run(capsys, "org/tiny")
    assert code == 2 and "HF_HUB_OFFLINE is set" in err
    hub_offline(monkeypatch, False)
    assert run(capsys, "org/tiny")[0] == 0
    hub_offline(monkeypatch, True)
    before = len(hub.requests)
    assert run(capsys, "org/tiny", "-o", str(tmp_path / "out"))[0] == 0
    assert len(hub.requests) == before


def test_subprocess_end_to_end(hub: FakeHub, tmp_path: Path) -> None:
    """The installed entry point, its own process, the real patcher: exit code and one-line errors."""
    env = {**os.environ}
    ok = subprocess.run(
        [sys.executable, "-m", "templatefix.cli", "patch", "org/tiny", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode in (0, 1), ok.stderr
    assert json.loads(ok.stdout)["source"]["repo_id"] == "org/tiny"
    bad = subprocess.run(
        [sys.executable, "-m", "templatefix.cli", "patch", "org/missing"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "org/missing" in bad.stderr
    assert TEST_TOKEN not in ok.stdout + ok.stderr + bad.stdout + bad.stderr


# ---- acceptance: the real patcher on real layouts --------------------------------------------------------


@pytest.fixture
def real_hub(hub: FakeHub, corpus_dir: Path) -> FakeHub:
    gpt_oss = (corpus_dir / "templates" / "gpt-oss" / "openai-gpt-oss-20b.2025-08-08.jinja").read_bytes()
    qwen = (corpus_dir / "templates" / "qwen" / "Qwen2.5-7B-Instruct.jinja").read_bytes().decode()
    hub.add_repo(
        "openai/gpt-oss-20b",
        {
            "chat_template.jinja": gpt_oss,
            "config.json": b"{}",
            "tokenizer_config.json": b'{"eos_token": "<|return|>", "model_max_length": 1000000}',
            "model-00000-of-00002.safetensors": b"\0",
            "model.safetensors.index.json": b"{}",
            "original/model.safetensors": b"\0",
        },
        sizes={
            "model-00000-of-00002.safetensors": 4_625_017_896,
            "original/model.safetensors": 13_761_264_768,
        },
    )
    config = {
        "add_bos_token": False,
        "bos_token": None,
        "chat_template": qwen,
        "eos_token": "<|im_end|>",
        "model_max_length": 131072,
    }
    hub.add_repo(
        "Qwen/Qwen2.5-7B-Instruct",
        {
            "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False).encode(),
            "model-00001-of-00004.safetensors": b"\0",
            "generation_config.json": b"{}",
        },
        sizes={"model-00001-of-00004.safetensors": 3_945_441_440},
    )
    return hub


def test_acceptance_qwen25_layout(
    real_hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "Qwen/Qwen2.5-7B-Instruct", "-o", str(tmp_path / "out"))
    files = _tree(tmp_path / "out")
    assert sorted(files) == ["templatefix-report.json", "tokenizer_config.json"]
    assert real_hub.downloaded() == ["tokenizer_config.json"]
    report = json.loads(files["templatefix-report.json"])
    assert code == 0 and report["verified"] is True, out + err
    patched = json.loads(files["tokenizer_config.json"])
    assert "{% generation %}" in patched["chat_template"]
    original = json.loads(real_hub.repos["Qwen/Qwen2.5-7B-Instruct"].files["tokenizer_config.json"])
    assert {k: v for k, v in patched.items() if k != "chat_template"} == {
        k: v for k, v in original.items() if k != "chat_template"
    }


def test_acceptance_gpt_oss_layout(
    real_hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gpt-oss passes every probe, but its tool-schema macros hold outputs no probe reaches
    (SPEC §4: unverified code, exit 4); written on request, in the repo's own layout."""
    code, out, err = run(capsys, "openai/gpt-oss-20b", "-o", str(tmp_path / "out"), "--force")
    files = _tree(tmp_path / "out")
    assert sorted(files) == ["chat_template.jinja", "templatefix-report.json"]
    assert sorted(real_hub.downloaded()) == ["chat_template.jinja", "tokenizer_config.json"]
    report = json.loads(files["templatefix-report.json"])
    (template,) = report["templates"]
    assert template["passed"] is True, template["reasons"]
    assert code == (0 if template["verified"] else 4), err
    assert template["verified"] or template["unverified_code"]
    assert b"{% generation %}" in files["chat_template.jinja"]


def test_acceptance_gpt_oss_not_written_unless_verified(
    real_hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "openai/gpt-oss-20b", "-o", str(tmp_path / "out"))
    files = _tree(tmp_path / "out") if (tmp_path / "out").exists() else {}
    if code == 0:  # verified: written
        assert b"{% generation %}" in files["chat_template.jinja"]
    else:  # passed with unreached outputs: named, and nothing written without --force
        assert code == 4
        assert "unverified code" in out and "line " in out
        assert "nothing written" in out and files == {}


def test_acceptance_pr_description_dry_run_equals_real(
    real_hub: FakeHub, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    planned = json.loads(run(capsys, "Qwen/Qwen2.5-7B-Instruct", "--create-pr", "--dry-run", "--json")[1])[
        "push"
    ]
    code, out, err = run(capsys, "Qwen/Qwen2.5-7B-Instruct", "--create-pr", "--json")
    assert code == 0, err
    (commit,) = real_hub.commits
    assert (commit.summary, commit.description) == (planned["title"], planned["description"])
    assert sorted(commit.files) == ["tokenizer_config.json"]
    description = commit.description
    for needle in (
        "assistant_only_loss",
        "return_assistant_tokens_mask",
        "| default | `tokenizer_config.json[chat_template]` | verified |",
        "```diff",
        "«",
        "<|im_end|>»",
    ):
        assert needle in description
    out_dir = Path(os.environ.get("TEMPLATEFIX_PR_EXAMPLE_DIR", ""))
    if out_dir.name:  # lets a maintainer collect the generated PR text
        (out_dir / "pr-qwen2.5.md").write_text(f"# {commit.summary}\n\n{description}")


def test_rerun_into_same_output_is_a_no_op(
    fake_patcher: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "model" / "chat_template.jinja", TINY)
    out = tmp_path / "out"
    assert run(capsys, str(tmp_path / "model"), "-o", str(out))[0] == 0
    before = _tree(out)
    code, stdout, _ = run(capsys, str(tmp_path / "model"), "-o", str(out))
    assert code == 0 and "unchanged:" in stdout and _tree(out) == before
    (out / "templatefix-report.json").write_text("{}")  # a different file: never clobbered silently
    code, _, err = run(capsys, str(tmp_path / "model"), "-o", str(out))
    assert code == 2 and "exists and differs" in err


def test_in_place_on_hub_source_is_refused(
    fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "org/tiny", "--in-place")
    assert code == 2 and "--in-place needs a local SOURCE" in err
