"""SOURCE resolution and reading (templatefix.io.sources, templatefix.io.layout) and layout-preserving,
atomic output (templatefix.io.layout, templatefix.io.files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from templatefix.errors import OutputError, SourceError
from templatefix.io.files import write_files, write_in_place
from templatefix.io.layout import (
    json_member_span,
    named_template_files,
    patched_files,
    read_directory,
    template_files_in,
)
from templatefix.io.sources import classify_source, load_source, load_template

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# ---- classify ----------------------------------------------------------------------------------


def test_repo_id_vs_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert classify_source("Qwen/Qwen2.5-7B-Instruct") == ("hub", "Qwen/Qwen2.5-7B-Instruct")
    (tmp_path / "Qwen" / "Qwen2.5-7B-Instruct").mkdir(parents=True)
    assert classify_source("Qwen/Qwen2.5-7B-Instruct")[0] == "path"  # an existing path wins


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.jinja", "no such file or directory"),
        ("./a/b", "no such file or directory"),
        ("a/b/c", "no such file or directory"),
        ("gpt2", "not a file, a directory, or a Hub repo id"),
        ("", "empty SOURCE"),
        ("org/..", "no such file"),
    ],
)
def test_bad_sources(spec: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=message):
        classify_source(spec)


def test_revision_on_local_path_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.jinja", CHATML)
    with pytest.raises(SourceError, match="--revision applies to Hub repo ids"):
        load_source(str(path), revision="main")


def test_template_files_in_never_picks_weights() -> None:
    names = [
        "model.safetensors",
        "model-00001-of-00002.safetensors",
        "tokenizer.json",
        "config.json",
        "chat_template.jinja",
        "additional_chat_templates/rag.jinja",
        "additional_chat_templates/x/y.jinja",
        "sub/chat_template.jinja",
        "tokenizer_config.json",
        "chat_template.json",
    ]
    assert template_files_in(names) == [
        "chat_template.jinja",
        "additional_chat_templates/rag.jinja",
        "tokenizer_config.json",
        "chat_template.json",
    ]


# ---- reading -----------------------------------------------------------------------------------


def test_jinja_file_is_byte_exact(tmp_path: Path) -> None:
    raw = CHATML.replace("{% endfor %}", "{% endfor %}\r\n").encode() + b"\r\n"
    source = load_source(str(_write(tmp_path / "my.jinja", raw)))
    (entry,) = source.templates
    assert entry.template.encode() == raw
    assert (entry.kind, entry.name, entry.label, source.kind) == ("jinja_file", "default", "my.jinja", "file")


def test_directory_layout_and_shadowing(tmp_path: Path) -> None:
    _write(tmp_path / "chat_template.jinja", CHATML)
    _write(tmp_path / "additional_chat_templates" / "tool_use.jinja", "{{ 'tools' }}")
    _write(
        tmp_path / "tokenizer_config.json", json.dumps({"chat_template": "{{ 'old' }}", "eos_token": "</s>"})
    )
    templates = read_directory(tmp_path)
    assert [(e.label, e.effective) for e in templates] == [
        ("chat_template.jinja", True),
        ("additional_chat_templates/tool_use.jinja", True),
        ("tokenizer_config.json[chat_template]", False),  # transformers ignores it
    ]
    assert templates.as_transformers_sees_it() == {"default": CHATML, "tool_use": "{{ 'tools' }}"}
    assert templates.special_tokens == {"eos_token": "</s>"}


def test_tokenizer_config_list_and_processor_json(tmp_path: Path) -> None:
    config = {"chat_template": [{"name": "default", "template": "A"}, {"name": "rag", "template": "B"}]}
    source = load_source(str(_write(tmp_path / "a" / "tokenizer_config.json", json.dumps(config))))
    assert [(e.name, e.kind, e.label) for e in source.templates] == [
        ("default", "tokenizer_config_list", "tokenizer_config.json[chat_template][default]"),
        ("rag", "tokenizer_config_list", "tokenizer_config.json[chat_template][rag]"),
    ]
    processor = load_source(str(_write(tmp_path / "b" / "chat_template.json", '{"chat_template": "P"}')))
    assert [(e.kind, e.template) for e in processor.templates] == [("processor_json", "P")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"chat_template": 3}', "must be a string or a list"),
        (b'{"chat_template": "x",}', "invalid JSON at line 1"),
        (b'{"eos_token": "x"}', "has no chat_template key"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_bad_tokenizer_config(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        load_source(str(_write(tmp_path / "tokenizer_config.json", content)))


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no chat template found"):
        load_source(str(tmp_path))


def test_matches_what_transformers_loads(tmp_path: Path, tokenizers_dir: Path) -> None:
    """Our view of a directory equals ``AutoTokenizer.from_pretrained(dir).chat_template``."""
    from transformers import AutoTokenizer

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizers_dir / "qwen3" / name, tmp_path / name)
    assert (
        load_source(str(tmp_path)).templates.as_transformers_sees_it()
        == AutoTokenizer.from_pretrained(str(tmp_path)).chat_template
    )
    _write(tmp_path / "chat_template.jinja", CHATML)
    _write(tmp_path / "additional_chat_templates" / "training.jinja", "{{ 'x' }}")
    assert (
        load_source(str(tmp_path)).templates.as_transformers_sees_it()
        == AutoTokenizer.from_pretrained(str(tmp_path)).chat_template
    )


# ---- output ------------------------------------------------------------------------------------


def test_json_value_replaced_and_nothing_else(tmp_path: Path) -> None:
    raw = (
        '{\n  "add_bos_token": false,\n  "chat_template": '
        + json.dumps("{{ 'é' }}", ensure_ascii=True)
        + ',\n  "eos_token": "<|im_end|>"\n}'
    ).encode()
    source = load_source(str(_write(tmp_path / "tokenizer_config.json", raw)))
    label = "tokenizer_config.json[chat_template]"
    new = patched_files(source.templates, {label: "{% generation %}{{ 'é' }}{% endgeneration %}"})
    text = new["tokenizer_config.json"].decode()
    start, end = json_member_span(raw.decode(), "chat_template")
    assert text.startswith(raw.decode()[:start]) and text.endswith(raw.decode()[end:])
    assert "\\u00e9" in text  # the file's own escaping style is kept
    assert json.loads(text) == {
        **json.loads(raw),
        "chat_template": "{% generation %}{{ 'é' }}{% endgeneration %}",
    }
    assert patched_files(source.templates, {label: "{{ 'é' }}"}) == {"tokenizer_config.json": raw}


def test_list_entry_replaced(tmp_path: Path) -> None:
    config = {
        "chat_template": [{"name": "default", "template": "A"}, {"name": "rag", "template": "B"}],
        "z": 1,
    }
    source = load_source(str(_write(tmp_path / "tokenizer_config.json", json.dumps(config, indent=2))))
    new = patched_files(source.templates, {"tokenizer_config.json[chat_template][rag]": "B2"})
    assert json.loads(new["tokenizer_config.json"]) == {
        "chat_template": [{"name": "default", "template": "A"}, {"name": "rag", "template": "B2"}],
        "z": 1,
    }


def test_as_named_layouts(tmp_path: Path, tokenizers_dir: Path) -> None:
    from transformers import AutoTokenizer

    jinja_dir = tmp_path / "jinja"
    _write(jinja_dir / "chat_template.jinja", CHATML)
    templates = read_directory(jinja_dir)
    assert named_template_files(templates, "training", "P") == {
        "additional_chat_templates/training.jinja": b"P"
    }
    with pytest.raises(OutputError, match="plain name"):
        named_template_files(templates, "a/b", "P")

    config_dir = tmp_path / "config"
    config_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizers_dir / "qwen3" / name, config_dir / name)
    templates = read_directory(config_dir)
    original = templates.default.template
    files = named_template_files(templates, "training", "{{ 'patched' }}")
    write_files(tmp_path / "out", {**templates.files, **files})
    shutil.copy(config_dir / "tokenizer.json", tmp_path / "out" / "tokenizer.json")
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "out")).chat_template
    assert loaded == {"default": original, "training": "{{ 'patched' }}"}
    with pytest.raises(OutputError, match="already exists"):
        named_template_files(read_directory(tmp_path / "out"), "training", "{{ 'other' }}")


def test_write_files_refuses_to_clobber(tmp_path: Path) -> None:
    _write(tmp_path / "b.jinja", "mine")
    with pytest.raises(OutputError, match="exists and differs"):
        write_files(tmp_path, {"a.jinja": b"A", "b.jinja": b"B"})
    assert not (tmp_path / "a.jinja").exists()  # checked everything before writing anything
    assert (tmp_path / "b.jinja").read_bytes() == b"mine"
    actions = write_files(tmp_path, {"a.jinja": b"A", "b.jinja": b"B"}, force=True)
    assert [a.status for a in actions] == ["created", "replaced"]
    assert [a.status for a in write_files(tmp_path, {"a.jinja": b"A"})] == ["unchanged"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jinja", "b.jinja"]  # no temp files left


def test_write_in_place_keeps_backups(tmp_path: Path) -> None:
    _write(tmp_path / "chat_template.jinja", "old\r\n")
    write_in_place(tmp_path, {"chat_template.jinja": b"new\r\n"})
    assert (tmp_path / "chat_template.jinja.bak").read_bytes() == b"old\r\n"
    assert (tmp_path / "chat_template.jinja").read_bytes() == b"new\r\n"
    with pytest.raises(OutputError, match="chat_template.jinja.bak exists and differs"):
        write_in_place(tmp_path, {"chat_template.jinja": b"newer"})
    assert (tmp_path / "chat_template.jinja").read_bytes() == b"new\r\n"
    write_in_place(tmp_path, {"chat_template.jinja": b"newer"}, backup=False)
    assert (tmp_path / "chat_template.jinja").read_bytes() == b"newer"
    assert (tmp_path / "chat_template.jinja.bak").read_bytes() == b"old\r\n"


def test_load_template_is_the_one_loader_for_show_and_audit(tmp_path: Path) -> None:
    items = [{"name": "tool_use", "template": "{{ 'tools' }}"}, {"name": "default", "template": CHATML}]
    _write(tmp_path / "tokenizer_config.json", json.dumps({"chat_template": items}))
    loaded = load_template(str(tmp_path))
    assert loaded.text == CHATML and loaded.entry.label == "tokenizer_config.json[chat_template][default]"
    assert loaded.describe() == f"{tmp_path} (tokenizer_config.json[chat_template][default])"
    assert load_template(str(tmp_path), name="tool_use").text == "{{ 'tools' }}"
    with pytest.raises(SourceError, match="no template named 'training' \\(it has: default, tool_use\\)"):
        load_template(str(tmp_path), name="training")
    _write(tmp_path / "chat_template.jinja", "{{ 'file wins' }}")  # transformers prefers the file
    assert load_template(str(tmp_path)).text == "{{ 'file wins' }}"
