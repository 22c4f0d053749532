"""templatefix.engines: the same template in every inference engine, and `check --engines`.

Engines that are not installed here are skipped with a reason (minijinja: the ``engines`` extra;
@huggingface/jinja: node plus ``npm install``, see ``templatefix.engines.node_install_command``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from templatefix.cli import main
from templatefix.engines import (
    HFJinja,
    MiniJinja,
    PlainJinja2,
    Transformers,
    Unavailable,
    check_engines,
    first_difference,
)

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
REFERENCE = sorted(p.name for p in TEMPLATES.glob("*.jinja"))
ORIGINAL = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
MARKED = (
    "{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
    "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{{ '\\n' }}{% endfor %}"
)


def _available(engine: object) -> bool:
    try:
        engine.version()  # type: ignore[attr-defined]
    except Unavailable:
        return False
    return True


needs_minijinja = pytest.mark.skipif(not _available(MiniJinja()), reason="minijinja not installed")
needs_hf_jinja = pytest.mark.skipif(
    not _available(HFJinja()), reason="node or @huggingface/jinja missing (npm install, see README)"
)


def _by_engine(results: list) -> dict[str, object]:
    return {result.engine: result for result in results}


def test_plain_jinja2_fails_on_the_markers_transformers_reads_them() -> None:
    results = _by_engine(check_engines(ORIGINAL, MARKED, engines=[Transformers(), PlainJinja2()]))
    assert results["transformers"].status == "identical" and results["transformers"].compared > 10
    plain = results["jinja2 (plain)"]
    assert plain.status == "fails" and "unknown tag 'generation'" in plain.detail and plain.breaks


def test_a_visible_change_is_a_difference() -> None:
    changed = MARKED.replace("}}: {%", "}}:: {%")
    (result,) = check_engines(ORIGINAL, changed, engines=[Transformers()])
    assert result.status == "differs"
    assert result.where == "single_turn" and "at character 5" in result.detail


def test_original_that_the_engine_cannot_read_is_unreadable() -> None:
    original = "{% for m in messages %}{{ m.content }}{% break %}{% endfor %}"  # loopcontrols
    (result,) = check_engines(original, original, engines=[PlainJinja2()])
    assert result.status == "unreadable" and "original fails too" in result.detail
    assert not result.breaks


def test_first_difference_names_the_position() -> None:
    assert first_difference("abc", "abd").startswith("at character 2:")
    assert first_difference("abc", "abcd").startswith("at character 3:")


def test_missing_engines_are_not_available(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    import shutil

    real_import = builtins.__import__

    def no_minijinja(name: str, *args: object, **kwargs: object) -> object:
        if name == "minijinja":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_minijinja)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    results = _by_engine(check_engines(ORIGINAL, MARKED, engines=[MiniJinja(), HFJinja()]))
    assert results["minijinja"].status == "not available"
    assert "templatefix[engines]" in results["minijinja"].detail
    assert results["@huggingface/jinja"].status == "not available"
    assert "node is not installed" in results["@huggingface/jinja"].detail


def test_hf_jinja_package_missing_names_the_npm_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import shutil

    if shutil.which("node") is None:
        pytest.skip("node not installed")
    monkeypatch.setenv("TEMPLATEFIX_NODE_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("NODE_PATH", str(tmp_path / "none"))
    (result,) = check_engines(ORIGINAL, MARKED, engines=[HFJinja()])
    assert result.status == "not available"
    assert f"npm install --prefix {tmp_path / 'empty'} @huggingface/jinja" in result.detail


@needs_minijinja
def test_minijinja_reads_the_original_and_raise_exception() -> None:
    refusing = "{% if messages | length > 3 %}{{ raise_exception('too long') }}{% endif %}" + ORIGINAL
    (result,) = check_engines(refusing, refusing, engines=[MiniJinja()])
    assert result.status == "identical" and result.compared > 0


@pytest.mark.parametrize("name", REFERENCE)
def test_check_engines_on_patched_reference_templates(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Acceptance: minijinja fails on the markers, @huggingface/jinja renders identically."""
    import templatefix

    original = (TEMPLATES / name).read_text(encoding="utf-8")
    patched = templatefix.patch_template(original)
    assert patched.verified
    marked = tmp_path / "patched.jinja"
    marked.write_text(patched.patched, encoding="utf-8", newline="")
    code = main(["check", str(marked), "--original", str(TEMPLATES / name), "--engines", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    engines = {e["engine"]: e for e in data["templates"][0]["engines"]}
    assert engines["transformers"]["status"] == "identical"
    assert engines["jinja2 (plain)"]["status"] == "fails"
    if _available(MiniJinja()):
        assert engines["minijinja"]["status"] == "fails"
        assert "unknown statement generation" in engines["minijinja"]["detail"]
    else:
        assert engines["minijinja"]["status"] == "not available"
    if _available(HFJinja()):
        assert engines["@huggingface/jinja"]["status"] == "identical"
        assert engines["@huggingface/jinja"]["compared"] > 0
    else:
        assert engines["@huggingface/jinja"]["status"] == "not available"


def test_check_engines_on_unmarked_source_patches_first(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", str(TEMPLATES / "chatml.jinja"), "--engines", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["verified"] is True
    engines = {e["engine"]: e["status"] for e in data["templates"][0]["engines"]}
    assert engines["transformers"] == "identical" and engines["jinja2 (plain)"] == "fails"


def test_a_crashing_engine_never_stops_the_others() -> None:
    class Broken(PlainJinja2):
        name = "broken"

        def render(self, templates: object, contexts: object) -> list:
            raise ValueError("corrupt install\nsecond line")

    results = check_engines(ORIGINAL, MARKED, engines=[Broken(), Transformers()])
    assert [(r.engine, r.status) for r in results] == [
        ("broken", "not available"),
        ("transformers", "identical"),
    ]
    assert results[0].detail == "the engine crashed: ValueError: corrupt install"


def test_check_engines_without_original_strips_the_markers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marked = tmp_path / "marked.jinja"
    marked.write_text(MARKED.replace("{% if m.role", "{%- if m.role"), encoding="utf-8")
    code = main(["check", str(marked), "--engines", "--json"])
    data = json.loads(capsys.readouterr().out)
    engines = {e["engine"]: e for e in data["templates"][0]["engines"]}
    assert engines["transformers"]["status"] == "identical" and engines["transformers"]["compared"] > 10
    assert engines["jinja2 (plain)"]["status"] == "fails"
    assert code == (0 if data["verified"] else 1)
