"""Dataset transforms: ``datasets`` ``map`` (with workers) finds exactly what ``templatefix audit``
finds, the masks are the spans' tokens, and ``expand_turns`` equals ``--expand-turns``."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from templatefix.cli import main
from templatefix.data.audit import CATEGORIES
from templatefix.data.rows import plain, rows_of_batch
from templatefix.data.transforms import AUDIT_COLUMNS, AuditTransform, expand_turns, summarize
from templatefix.render import merge_spans, render_with_spans

pytestmark = pytest.mark.tokenizers

CHATML = (
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
    "{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: Drops the reasoning of earlier turns (like Qwen3): those turns are "rewritten"; refuses tools.
TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}{% endfor %}"
    + CHATML.replace(
        "{% generation %}{{ m.content }}",
        "{% generation %}{% if loop.last and m.reasoning_content %}<think>\n{{ m.reasoning_content }}\n"
        "</think>\n\n{% endif %}{{ m.content }}",
    )
)
USER = {"role": "user", "content": "Is 7 prime?"}
TWO = [USER, {"role": "assistant", "content": "Yes."}]
MULTI = [
    USER,
    {"role": "assistant", "reasoning_content": "No divisors.", "content": "Yes, 7 is prime."},
    {"role": "user", "content": "And 9?"},
    {"role": "assistant", "reasoning_content": "3*3.", "content": "No."},
]


def rows() -> list[dict[str, Any]]:
    """Every finding category at known indices, repeated so that batches and workers split them."""
    base = [
        {"messages": TWO, "id": 0},
        {"messages": MULTI, "id": 1},  # rewritten
        {"messages": None, "id": 2},  # bad_row
        {"messages": [USER, {"role": "tool", "content": "x"}], "id": 3},  # template_error
        {"messages": [USER], "id": 4},  # empty_mask
        {"messages": [{"role": "user", "content": "word " * 40}, TWO[1]], "id": 5},  # truncated
    ]
    return [dict(row, id=row["id"] + 10 * copy) for copy in range(7) for row in base]


@pytest.fixture(scope="module")
def qwen3_dir(tokenizers_dir: Path) -> Path:
    return tokenizers_dir / "qwen3"


def test_datasets_map_with_workers_equals_cli_audit(
    tmp_path: Path, qwen3_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_list(rows())
    directory = tmp_path / "ds"
    data.save_to_disk(str(directory))
    (tmp_path / "t.jinja").write_text(TEMPLATE, encoding="utf-8")
    argv = ["audit", str(directory), "--tokenizer", str(qwen3_dir), "--template", str(tmp_path / "t.jinja")]
    assert main([*argv, "--json", "--max-length", "20", "--workers", "2"]) == 1
    cli = json.loads(capsys.readouterr().out)

    transform = AuditTransform(qwen3_dir, TEMPLATE, max_length=20)
    mapped = data.map(transform, batched=True, batch_size=5, num_proc=2)
    pipeline = summarize(mapped).to_json()

    counts = {name: finding["count"] for name, finding in cli["findings"].items()}
    assert counts == {
        "bad_row": 7, "template_error": 7, "empty_mask": 7, "truncated": 7, "token_issue": 0,
        "rewritten": 7, "mismatch": 0,
    }
    for name in CATEGORIES:
        assert pipeline["findings"][name]["indices"] == cli["findings"][name]["indices"], name
        assert pipeline["findings"][name]["messages"] == cli["findings"][name]["messages"], name
    assert (pipeline["examples"], pipeline["tokens"], pipeline["trained_tokens"]) == (
        cli["examples"], cli["tokens"], cli["trained_tokens"]
    )
    assert mapped.column_names == ["messages", "id", "input_ids", "assistant_masks", *AUDIT_COLUMNS.values()]
    assert mapped[1]["audit_rewritten"].startswith("assistant message 1 ")
    assert mapped[0]["audit_rewritten"] == "" and mapped[2]["input_ids"] == []


def test_masks_are_exactly_the_span_tokens(qwen3_dir: Path, load_tokenizer: Any) -> None:
    tokenizer = load_tokenizer("qwen3")
    transform = AuditTransform(qwen3_dir, TEMPLATE, history="off")
    conversations = [TWO, MULTI, [USER, {"role": "assistant", "content": " spaced \n"}]]
    out = transform({"messages": conversations})
    for messages, ids, mask in zip(conversations, out["input_ids"], out["assistant_masks"], strict=True):
        text, spans = render_with_spans(TEMPLATE, messages, special_tokens=tokenizer.special_tokens_map)
        reference = tokenizer.apply_chat_template(messages, chat_template=TEMPLATE, return_dict=True)
        assert ids.tolist() == list(reference["input_ids"])
        offsets = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
        inside = [int(any(s <= a and b <= e for s, e in merge_spans(spans))) for a, b in offsets]
        assert mask.tolist() == inside and sum(inside) > 0
        trained = "".join(text[a:b] for (a, b), m in zip(offsets, inside, strict=True) if m)
        assert trained.endswith(f"{messages[-1]['content']}<|im_end|>")


def test_transform_pickles_without_its_tokenizer_and_reloads(qwen3_dir: Path) -> None:
    transform = AuditTransform(qwen3_dir, CHATML)
    transform({"messages": [TWO]})  # loads state, fills the shape cache
    copy = pickle.loads(pickle.dumps(transform))
    assert copy._tokenizer is None and copy._state is None
    assert copy({"messages": [TWO]})["assistant_masks"][0].tolist() == transform(
        {"messages": [TWO]}
    )["assistant_masks"][0].tolist()


def test_patches_an_unmarked_template_with_the_policy(qwen3_dir: Path, load_tokenizer: Any) -> None:
    unmarked = CHATML.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    conversation = {"messages": [[MULTI[0], {"role": "assistant", "content": "A."}, MULTI[2], MULTI[3]]]}
    every = AuditTransform(qwen3_dir, unmarked)
    last = AuditTransform(qwen3_dir, unmarked, turns="last")
    assert "patched and verified" in every.notes[0]
    first_turn = len(load_tokenizer("qwen3").encode("A.<|im_end|>", add_special_tokens=False))
    trained_every = sum(every(conversation)["assistant_masks"][0])
    assert trained_every == sum(last(conversation)["assistant_masks"][0]) + first_turn


def test_keep_columns_for_ray_style_batches(qwen3_dir: Path) -> None:
    """Ray Data's numpy batches hold object arrays; map_batches keeps only what is returned."""
    messages = np.empty(2, dtype=object)
    messages[0] = np.array(TWO, dtype=object)
    messages[1] = np.array([USER], dtype=object)
    batch = {"messages": messages, "id": np.array([5, 6])}
    out = AuditTransform(qwen3_dir, CHATML, keep_columns=True)(batch)
    assert out["id"].tolist() == [5, 6] and out["messages"] is messages
    assert out["audit_empty_mask"] == ["", "no token is trained (no span, or spans lost)"]
    assert rows_of_batch(batch, ["messages"])[0] == {"messages": TWO}
    assert plain(np.array([np.int64(1)])) == [1]


def test_expand_turns_equals_cli_expansion(tmp_path: Path, qwen3_dir: Path) -> None:
    datasets = pytest.importorskip("datasets")
    source = [{"messages": MULTI, "id": 1}, {"messages": TWO, "id": 2}, {"messages": None, "id": 3}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in source), encoding="utf-8")
    (tmp_path / "t.jinja").write_text(TEMPLATE, encoding="utf-8")
    out = tmp_path / "turns.jsonl"
    main(["audit", str(data), "--tokenizer", str(qwen3_dir), "--template", str(tmp_path / "t.jinja"),
          "--expand-turns", str(out)])
    cli = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    dataset = datasets.Dataset.from_list(source)
    expanded = dataset.map(expand_turns, batched=True, batch_size=2, remove_columns=dataset.column_names)
    pipeline = [
        {key: [{k: v for k, v in m.items() if v is not None} for m in value] if key != "id" else value
         for key, value in row.items()}
        for row in expanded
    ]
    assert pipeline == cli
    assert [(len(r["prompt"]), r["id"]) for r in cli] == [(1, 1), (3, 1), (1, 2)]
    # each expanded example trains only its final turn, and is exact: nothing rewritten
    audited = summarize(expanded.map(AuditTransform(qwen3_dir, TEMPLATE), batched=True))
    assert audited.ok and audited.examples == 3


def test_ray_data_map_batches_equals_datasets_map_and_cli_audit(
    tmp_path: Path, qwen3_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's Ray Data pipeline on a local Ray cluster with two workers (``ray[data]``;
    skipped when not installed, run by ``.ci/run``): the same columns as ``datasets.map`` and the
    same counts, indices and messages as ``templatefix audit``."""
    ray = pytest.importorskip("ray")
    datasets = pytest.importorskip("datasets")
    data = rows()
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in data), encoding="utf-8")
    (tmp_path / "t.jinja").write_text(TEMPLATE, encoding="utf-8")
    argv = ["audit", str(tmp_path / "data.jsonl"), "--tokenizer", str(qwen3_dir),
            "--template", str(tmp_path / "t.jinja"), "--json", "--max-length", "20"]
    assert main(argv) == 1
    cli = json.loads(capsys.readouterr().out)
    mapped = datasets.Dataset.from_list(data).map(
        AuditTransform(qwen3_dir, TEMPLATE, max_length=20), batched=True
    )
    reference = summarize(mapped).to_json()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert ray.cluster_resources().get("CPU") == 2
        transformed = ray.data.from_items(data).map_batches(
            AuditTransform(qwen3_dir, TEMPLATE, max_length=20, keep_columns=True), batch_size=8, concurrency=2
        )
        result = sorted(transformed.take_all(), key=lambda row: row["id"])  # data is in id order
        expanded = ray.data.from_items(data).map_batches(expand_turns, concurrency=2).take_all()
    finally:
        ray.shutdown()
    assert sorted(result[0]) == sorted(mapped.column_names)
    pipeline = summarize(result).to_json()
    assert pipeline["findings"] == reference["findings"]
    for name in CATEGORIES:
        assert pipeline["findings"][name]["count"] == cli["findings"][name]["count"], name
        assert pipeline["findings"][name]["indices"] == cli["findings"][name]["indices"], name
    assert (pipeline["examples"], pipeline["tokens"], pipeline["trained_tokens"]) == (
        cli["examples"], cli["tokens"], cli["trained_tokens"]
    )
    assert len(expanded) == 7 * 4  # TWO, MULTI (2 turns), truncated: one turn each; no prompt for bad rows
