"""The command line never shows a traceback: help, no command, and our own bugs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from templatefix import cli

ROOT = Path(__file__).resolve().parents[2]


def _run_module(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "templatefix", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_no_command_prints_usage_and_exits_2() -> None:
    result = _run_module()
    assert result.returncode == 2
    assert "usage: templatefix" in result.stderr and "COMMAND is required" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["--version"]])
def test_top_level_help(argv: list[str]) -> None:
    result = _run_module(*argv)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "templatefix" in result.stdout


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out
    assert "{% generation %}" in out


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_every_command_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert f"usage: templatefix {command}" in captured.out
    assert "Traceback" not in captured.out + captured.err


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "templatefix"
    if not script.exists():
        pytest.skip("the console script is not installed beside this interpreter")
    result = subprocess.run([str(script), "patch", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: templatefix patch" in result.stdout


def _boom(args: object) -> int:
    raise RuntimeError("forced failure for the test")


@pytest.fixture
def broken_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``templatefix check``'s handler raise as a bug in our own code would."""
    import templatefix.commands.check as check

    original_register = check.register

    def register(subparsers: object) -> None:
        original_register(subparsers)
        parser = subparsers.choices["check"]  # type: ignore[attr-defined]
        parser.set_defaults(handler=_boom)

    monkeypatch.setattr(check, "register", register)


def test_internal_error_is_one_line_exit_3(broken_check: None, capsys: pytest.CaptureFixture[str]) -> None:
    monkey_env = os.environ.pop(cli.DEBUG_ENV, None)
    try:
        code = cli.main(["check", "templates/chatml.jinja"])
    finally:
        if monkey_env is not None:
            os.environ[cli.DEBUG_ENV] = monkey_env
    err = capsys.readouterr().err
    assert code == 3
    assert err.count("\n") == 1
    assert err.startswith("templatefix: internal error: RuntimeError: forced failure for the test")
    assert "--debug" in err and cli.DEBUG_ENV in err
    assert "Traceback" not in err


def test_internal_error_traceback_with_debug(broken_check: None) -> None:
    with pytest.raises(RuntimeError, match="forced failure"):
        cli.main(["check", "templates/chatml.jinja", "--debug"])


def test_internal_error_traceback_with_env(broken_check: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(RuntimeError, match="forced failure"):
        cli.main(["check", "templates/chatml.jinja"])


def test_internal_error_in_a_subprocess() -> None:
    """A real process: an internal error from the library (forced through sitecustomize-free code)."""
    code = (
        "import sys, templatefix.commands.check as c\n"
        "orig = c.register\n"
        "def reg(sp):\n"
        "    orig(sp); sp.choices['check'].set_defaults(handler=lambda a: 1 / 0)\n"
        "c.register = reg\n"
        "from templatefix.cli import main\n"
        "sys.exit(main(['check', 'x.jinja']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 3
    assert "internal error: ZeroDivisionError" in result.stderr
    assert "Traceback" not in result.stderr


def test_import_leaves_environment_alone() -> None:
    code = (
        "import os\n"
        "before = dict(os.environ)\n"
        "import templatefix, templatefix.cli\n"
        "templatefix.patch_template(open('templates/chatml.jinja').read())\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFORMERS_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
