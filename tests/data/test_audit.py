"""`templatefix audit`: every finding category, agreement with transformers, workers, CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from templatefix.cli import main
from templatefix.data.audit import AuditOptions, audit_rows, open_rows, shape_of
from templatefix.data.rows import RowError, conversation_of, expand_row

CHATML = (
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
    "{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: Drops the reasoning of earlier turns, like Qwen3: those turns are "rewritten".
DROPS_REASONING = CHATML.replace(
    "{% generation %}{{ m.content }}",
    "{% generation %}{% if loop.last and m.reasoning_content %}"
    "<think>\n{{ m.reasoning_content }}\n</think>\n\n"
    "{% endif %}{{ m.content }}",
)
#: Generation prompt opens <think> that the training render never has (like QwQ): "mismatch".
THINK_PROMPT = CHATML.replace(
    "<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>\n{% endif %}"
)
#: Refuses tool messages.
STRICT = (
    "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}{% endfor %}"
    + CHATML
)

USER = {"role": "user", "content": "Is 7 prime?"}
ANSWER = {"role": "assistant", "reasoning_content": "No divisors.", "content": "Yes, 7 is prime."}
TWO = [USER, {"role": "assistant", "content": "Yes."}]
REASONING_MULTI = [
    USER,
    ANSWER,
    {"role": "user", "content": "And 9?"},
    {"role": "assistant", "reasoning_content": "3*3.", "content": "No."},
]


# ----------------------------------------------------------------------------- rows


def test_conversation_of_reads_trl_columns() -> None:
    messages, kwargs = conversation_of(
        {
            "prompt": [USER],
            "completion": [{"role": "assistant", "content": "x", "tool_calls": None}],
            "tools": '[{"type": "function", "function": {"name": "f"}}]',
            "chat_template_kwargs": {"enable_thinking": False},
        }
    )
    assert messages == [USER, {"role": "assistant", "content": "x"}]
    assert kwargs == {"tools": [{"type": "function", "function": {"name": "f"}}], "enable_thinking": False}
    for bad, match in [
        ({"text": "x"}, "columns: text"),
        ({"messages": []}, "empty"),
        ({"prompt": "a", "completion": "b"}, "plain text"),
        ([1], "not an object"),
        ({"messages": [{"content": "x"}]}, "'role'"),
    ]:
        with pytest.raises(RowError, match=match):
            conversation_of(bad)


def test_expand_row_one_example_per_assistant_turn() -> None:
    rows = expand_row({"tools": [{"x": 1}]}, REASONING_MULTI)
    assert [(len(r["prompt"]), r["completion"][0]["content"]) for r in rows] == [
        (1, "Yes, 7 is prime."),
        (3, "No."),
    ]
    assert all(r["tools"] == [{"x": 1}] for r in rows)
    assert expand_row({}, [{"role": "assistant", "content": "no prompt"}]) == []


def test_shape_ignores_words_but_not_structure() -> None:
    assert shape_of(TWO, {}) == shape_of(
        [{"role": "user", "content": "hm"}, {"role": "assistant", "content": "b"}], {}
    )
    assert shape_of(TWO, {}) != shape_of([USER, ANSWER], {})
    assert shape_of(TWO, {}) != shape_of(TWO, {"enable_thinking": False})


# ----------------------------------------------------------------------------- findings


@pytest.fixture(scope="module")
def qwen3(load_tokenizer: Any) -> Any:
    return load_tokenizer("qwen3")


def audit(rows: list[Any], template: str, tokenizer: Any, **options: Any) -> Any:
    workers = options.pop("workers", 1)
    return audit_rows(enumerate(rows), template, tokenizer, AuditOptions(**options), workers=workers)


def test_clean_data_is_ok(qwen3: Any) -> None:
    result = audit([{"messages": TWO}] * 5, CHATML, qwen3)
    assert result.ok and result.examples == 5 and result.trained_tokens == 5 * 3  # "Yes", ".", <|im_end|>


def test_each_category_with_indices(qwen3: Any) -> None:
    rows = [
        {"messages": TWO},  # 0 fine
        {"text": "no messages"},  # 1 bad_row
        '{"messages": [',  # 2 bad_row (JSON line)
        {"messages": [USER, {"role": "tool", "content": "x"}]},  # 3 template_error
        {"messages": [USER]},  # 4 empty_mask
        {"messages": [{"role": "user", "content": "word " * 50}, TWO[1]]},  # 5 truncated
    ]
    result = audit(rows, STRICT, qwen3, max_length=20)
    assert {k: v for k, v in result.counts.items() if v} == {
        "bad_row": 2,
        "template_error": 1,
        "empty_mask": 1,
        "truncated": 1,
    }
    assert result.indices["bad_row"] == [1, 2] and result.indices["template_error"] == [3]
    assert result.indices["empty_mask"] == [4] and result.indices["truncated"] == [5]
    assert "no tools" in result.messages["template_error"][0][1]
    assert "invalid JSON" in result.messages["bad_row"][1][1]


def test_rewritten_history_and_mismatch(qwen3: Any) -> None:
    result = audit(
        [{"messages": REASONING_MULTI}, {"messages": TWO}, {"messages": REASONING_MULTI}],
        DROPS_REASONING,
        qwen3,
    )
    assert result.counts["rewritten"] == 2 and result.indices["rewritten"] == [0, 2]
    assert result.history_checked == 2  # the third example reused its shape's verdict
    assert "assistant message 1" in result.messages["rewritten"][0][1]
    assert (
        audit([{"messages": REASONING_MULTI}], DROPS_REASONING, qwen3, history="all").counts["rewritten"] == 1
    )
    assert audit([{"messages": REASONING_MULTI}], DROPS_REASONING, qwen3, history="off").ok
    # only the last turn trained: the rewritten turn has no span, so nothing to report
    last_only = (
        "{%- for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and loop.last %}"
        "{% generation %}{% if m.reasoning_content %}<think>\n{{ m.reasoning_content }}\n</think>\n\n"
        "{% endif %}{{ m.content }}<|im_end|>{% endgeneration %}"
        "{% else %}{{ m.content }}<|im_end|>{% endif %}\n\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    assert audit([{"messages": REASONING_MULTI}], last_only, qwen3, history="all").ok
    mismatch = audit([{"messages": TWO}], THINK_PROMPT, qwen3)
    assert mismatch.counts["mismatch"] == 1 and mismatch.counts["rewritten"] == 0


def test_token_issue_is_named(qwen3: Any) -> None:
    # span opens inside the token "assistant": the mask cannot follow it
    template = CHATML.replace(
        "{% if m.role == 'assistant' %}{% generation %}", "{% if m.role == 'assistant' %}"
    )
    template = template.replace(
        "<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}",
        "{% if m.role == 'assistant' %}<|im_start|>assist{% generation %}ant\n",
    )
    result = audit([{"messages": TWO}], template, qwen3)
    assert result.counts["token_issue"] == 1
    assert "straddles" in result.messages["token_issue"][0][1]


def test_workers_agree_with_single_process(qwen3: Any) -> None:
    rows = [{"messages": REASONING_MULTI if i % 3 else TWO} for i in range(700)] + [{"bad": 1}]
    one = audit(rows, DROPS_REASONING, qwen3, chunk_size=64)
    two = audit(rows, DROPS_REASONING, qwen3, chunk_size=64, workers=2)
    assert (one.examples, one.tokens, one.trained_tokens, one.counts) == (
        two.examples,
        two.tokens,
        two.trained_tokens,
        two.counts,
    )
    assert one.indices == two.indices and one.counts["bad_row"] == 1 and one.indices["bad_row"] == [700]


# ----------------------------------------------------------------------------- versus transformers

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
VARIED = [
    {"messages": TWO},
    {"messages": [{"role": "system", "content": "Be  terse.\n"}, *REASONING_MULTI]},
    {"messages": [USER, {"role": "assistant", "content": " spaced  out \n"}]},
    {
        "messages": [
            USER,
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "name": "get_weather", "content": "21"},
            {"role": "assistant", "content": "21 °C — sunny 🌞"},
        ],
        "tools": TOOLS,
    },
    {"messages": [USER, {"role": "assistant", "content": ""}]},
]
TEMPLATES = {
    "qwen3": "qwen/trl-qwen3_instruct_2507_training.jinja",
    "qwen2.5": "qwen/trl-qwen2_5_training.jinja",
    "gemma3": "gemma/trl-gemma3_training.jinja",
    "gemma2": "gemma/trl-gemma_training.jinja",
    "llama3": "llama/trl-llama3_training.jinja",
    "gpt-oss": "gpt-oss/trl-gptoss_training.jinja",
}


@pytest.mark.corpus
@pytest.mark.tokenizers
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_counts_equal_transformers_loop(corpus_dir: Path, load_tokenizer: Any, name: str) -> None:
    """Token and trained-token totals equal transformers' own per-example loop."""
    tokenizer = load_tokenizer(name)
    template = (corpus_dir / "templates" / TEMPLATES[name]).read_text(encoding="utf-8")
    result = audit(VARIED, template, tokenizer, history="off")
    tokens = trained = failed = 0
    for row in VARIED:
        messages, kwargs = conversation_of(row)
        try:
            out = tokenizer.apply_chat_template(
                messages,
                chat_template=template,
                return_dict=True,
                return_assistant_tokens_mask=True,
                **kwargs,
            )
        except Exception:  # noqa: BLE001 - the template refuses it; audit must say so
            failed += 1
            continue
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)
        assert tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids == out["input_ids"]
        tokens += len(out["input_ids"])
        trained += sum(out["assistant_masks"])
    assert result.counts["template_error"] == failed
    assert (result.tokens, result.trained_tokens) == (tokens, trained)


# ----------------------------------------------------------------------------- CLI


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


@pytest.fixture()
def template_file(tmp_path: Path) -> Path:
    path = tmp_path / "t.jinja"
    path.write_text(DROPS_REASONING, encoding="utf-8")
    return path


@pytest.mark.tokenizers
def test_cli_json_and_exit_codes(
    tmp_path: Path, tokenizers_dir: Path, template_file: Path, capsys: Any
) -> None:
    base = ["audit", "--tokenizer", str(tokenizers_dir / "qwen3"), "--template", str(template_file)]
    clean = write_jsonl(tmp_path / "clean.jsonl", [{"messages": TWO}] * 3)
    assert main([*base, str(clean)]) == 0
    assert "nothing wrong" in capsys.readouterr().out
    dirty = write_jsonl(tmp_path / "dirty.jsonl", [{"messages": REASONING_MULTI}, {"x": 1}])
    assert main([*base, str(dirty), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["examples"] == 2
    assert data["findings"]["rewritten"]["indices"] == [0] and data["findings"]["bad_row"]["indices"] == [1]


@pytest.mark.tokenizers
def test_cli_expand_turns_is_atomic_and_never_overwrites(
    tmp_path: Path, tokenizers_dir: Path, template_file: Path, capsys: Any
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": REASONING_MULTI}, {"messages": TWO}])
    out = tmp_path / "turns.jsonl"
    args = [
        "audit",
        str(data),
        "--tokenizer",
        str(tokenizers_dir / "qwen3"),
        "--template",
        str(template_file),
        "--expand-turns",
        str(out),
    ]
    assert main(args) == 1  # the rewritten turn is still reported
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["prompt"]) for r in lines] == [1, 3, 1]
    assert "wrote 3 per-turn examples" in capsys.readouterr().out
    # the expansion itself audits clean: each example trains its final turn exactly
    assert (
        main(
            [
                "audit",
                str(out),
                "--tokenizer",
                str(tokenizers_dir / "qwen3"),
                "--template",
                str(template_file),
            ]
        )
        == 0
    )
    capsys.readouterr()
    out.write_text("keep me")
    assert main(args) == 2 and out.read_text() == "keep me"
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 1 and len(out.read_text().splitlines()) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".turns")]  # no temp file left


@pytest.mark.tokenizers
def test_cli_one_line_errors(
    tmp_path: Path, tokenizers_dir: Path, template_file: Path, capsys: Any, monkeypatch: Any
) -> None:
    tok = ["--tokenizer", str(tokenizers_dir / "qwen3"), "--template", str(template_file)]
    cases = [
        (["audit", str(tmp_path / "missing.jsonl"), *tok], "no such file"),
        (
            ["audit", str(write_jsonl(tmp_path / "x.jsonl", [])), "--tokenizer", str(tmp_path / "nope")],
            "tokenizer directory not found",
        ),
        (["audit", str(tmp_path / "x.jsonl"), *tok, "--workers", "0"], "--workers"),
    ]
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed
    cases.append((["audit", str(tmp_path), *tok], "needs the 'datasets' package"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


@pytest.mark.tokenizers
def test_cli_datasets_directory(
    tmp_path: Path, tokenizers_dir: Path, template_file: Path, capsys: Any
) -> None:
    datasets = pytest.importorskip("datasets")
    directory = tmp_path / "ds"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([{"messages": TWO}, {"messages": REASONING_MULTI}])}
    ).save_to_disk(str(directory))
    argv = [
        "audit",
        str(directory),
        "--tokenizer",
        str(tokenizers_dir / "qwen3"),
        "--template",
        str(template_file),
        "--json",
        "--workers",
        "2",
    ]
    assert main(argv) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["examples"] == 2 and data["findings"]["rewritten"]["indices"] == [1]
    assert main([*argv, "--split", "test"]) == 2
    assert "choose a split" in capsys.readouterr().err


def test_open_rows_counts_jsonl(tmp_path: Path) -> None:
    rows, total = open_rows(write_jsonl(tmp_path / "a.jsonl", [{"a": 1}, {"a": 2}]))
    assert total == 2 and [i for i, _ in rows] == [0, 1]
