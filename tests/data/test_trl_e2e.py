"""TRL end to end: SFTTrainer's own data preparation with ``assistant_only_loss=True``.

A tiny randomly initialised Llama (built from a config, nothing downloaded) lets ``SFTTrainer``
run its real ``_prepare_dataset``; we then check that the tokens it trains (label != -100) are
exactly each assistant turn's generated text plus its end-of-turn token (SPEC §2), and nothing
of the prompt. Needs the ``trl`` extra (torch, trl, datasets).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("datasets")

from support.sft import prepare  # noqa: E402

from templatefix.data.audit import AuditOptions, audit_rows  # noqa: E402
from templatefix.data.rows import expand_row  # noqa: E402
from templatefix.render import render  # noqa: E402

pytestmark = [pytest.mark.trl, pytest.mark.corpus, pytest.mark.tokenizers]

#: tokenizer dir -> (official template, TRL's marked copy, is TRL's copy exact per SPEC's reference)
FAMILIES = {
    "qwen3": ("qwen/Qwen3-Instruct-2507.jinja", "qwen/trl-qwen3_instruct_2507_training.jinja", True),
    "gemma3": ("gemma/gemma-3-4b-it.jinja", "gemma/trl-gemma3_training.jinja", True),
    "gpt-oss": ("gpt-oss/openai-gpt-oss-20b.2025-08-08.jinja", "gpt-oss/trl-gptoss_training.jinja", False),
}

USER = {"role": "user", "content": "What is 2 + 2?"}
CONVERSATIONS = {
    "qwen3": [
        [USER, {"role": "assistant", "content": "4"}],
        [
            {"role": "system", "content": "Be terse."},
            USER,
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3 + 3?"},
            {"role": "assistant", "content": "6 — easy.\n"},
        ],
    ],
    "gemma3": [
        [USER, {"role": "assistant", "content": "4"}],
        [
            USER,
            {"role": "assistant", "content": "It is 4."},
            {"role": "user", "content": "And 3 + 3?"},
            {"role": "assistant", "content": "6 — easy."},
        ],
    ],
    # gpt-oss rewrites earlier turns (drops analysis, <|end|> for <|return|>): one turn per example here,
    # multi-turn goes through --expand-turns below
    "gpt-oss": [
        [USER, {"role": "assistant", "content": "4"}],
        [USER, {"role": "assistant", "thinking": "Simple addition.", "content": "2 + 2 = 4."}],
    ],
}
MULTI_TURN = [
    USER,
    {"role": "assistant", "thinking": "Add them.", "content": "4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "thinking": "Add again.", "content": "6."},
]


def _corpus() -> Path | None:
    value = os.environ.get("TEMPLATEFIX_CORPUS")
    if not value:
        return None
    for candidate in (Path(value), Path(__file__).resolve().parents[2] / value):
        if (candidate / "templates").is_dir():
            return candidate
    return None


@functools.cache
def template_for(name: str) -> tuple[str, str, bool]:
    """``(which, template, exact)``: patched official when verified, else TRL's copy."""
    from templatefix.patch.api import patch_template

    corpus = _corpus()
    if corpus is None:
        return "no-corpus", "", True
    official, trl_copy, exact = FAMILIES[name]
    result = patch_template((corpus / "templates" / official).read_text(encoding="utf-8"))
    if result.passed and "generation" in result.patched:
        return "patched", result.patched, True
    return "trl", (corpus / "templates" / trl_copy).read_text(encoding="utf-8"), exact


def family_params(strict_spec: bool) -> list[Any]:
    params = []
    for name in sorted(FAMILIES):
        which, _, exact = template_for(name)
        marks = []
        if strict_spec and not exact:
            marks.append(
                pytest.mark.xfail(
                    strict=True,
                    reason=f"TRL's {name} copy trains part of the prompt "
                    "(SPEC reference); passes once the patcher lands",
                )
            )
        params.append(pytest.param(name, id=f"{name}-{which}", marks=marks))
    return params


def trained_runs(example: dict) -> list[list[int]]:
    """Maximal runs of consecutive trained tokens (label != -100)."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        trained = label != -100
        if trained:
            assert label == token
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = trained
    return runs


def generated_texts(template: str, messages: list[dict], special: dict, only_last: bool = False) -> list[str]:
    """G for each assistant turn (SPEC §2), asserting the conversation renders every turn exactly."""
    full = render(template, messages, special_tokens=special)
    texts = []
    indices = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for index in indices[-1:] if only_last else indices:
        prompt = render(template, messages[:index], add_generation_prompt=True, special_tokens=special)
        turn = render(template, messages[: index + 1], special_tokens=special)
        assert turn.startswith(prompt), "generation prompt disagrees with the training render"
        generated = turn[len(prompt) :]
        if not only_last:
            assert full.startswith(prompt) and full.startswith(generated, len(prompt)), "turn is rewritten"
        texts.append(generated)
    return texts


def assert_runs_are_turns(tokenizer: Any, example: dict, expected: list[str]) -> None:
    runs = [
        tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for run in trained_runs(example)
    ]
    assert len(runs) == len(expected), (runs, expected)
    for run, generated in zip(runs, expected, strict=True):
        # the generated text and its end-of-turn token, trailing whitespace allowed in or out
        assert run.rstrip() == generated.rstrip() and generated.startswith(run), (run, generated)


@pytest.mark.parametrize("name", family_params(strict_spec=True))
def test_sft_trains_exactly_the_generated_turns(tokenizers_dir: Path, tmp_path: Path, name: str) -> None:
    _, template, _ = template_for(name)
    conversations = CONVERSATIONS[name]
    tokenizer, prepared = prepare(
        tokenizers_dir, name, template, [{"messages": c} for c in conversations], tmp_path
    )
    special = dict(tokenizer.special_tokens_map)
    for messages, example in zip(conversations, prepared, strict=True):
        assert_runs_are_turns(tokenizer, example, generated_texts(template, messages, special))
    # the audit counts exactly the tokens TRL trains, and finds nothing wrong
    result = audit_rows(
        enumerate({"messages": c} for c in conversations), template, tokenizer, AuditOptions(history="all")
    )
    assert result.ok, result.to_json()["findings"]
    assert result.trained_tokens == sum(sum(1 for label in e["labels"] if label != -100) for e in prepared)


@pytest.mark.parametrize("name", family_params(strict_spec=False))
def test_expanded_turns_train_each_final_turn_exactly(
    tokenizers_dir: Path, tmp_path: Path, name: str
) -> None:
    """--expand-turns rows (prompt/completion) train only each final turn, exactly as generated, even for
    templates that rewrite history (gpt-oss) and even with TRL's inexact gpt-oss copy."""
    _, template, _ = template_for(name)
    messages = (
        MULTI_TURN
        if name == "gpt-oss"
        else [{k: v for k, v in m.items() if k != "thinking"} for m in MULTI_TURN]
    )
    rows = expand_row({}, messages)
    assert len(rows) == 2
    tokenizer, prepared = prepare(tokenizers_dir, name, template, rows, tmp_path)
    special = dict(tokenizer.special_tokens_map)
    for row, example in zip(rows, prepared, strict=True):
        expected = generated_texts(template, row["prompt"] + row["completion"], special, only_last=True)
        assert_runs_are_turns(tokenizer, example, expected)


@pytest.mark.parametrize("name", ["qwen3", "gemma3"])
def test_train_field_leaves_the_switched_off_turn_untrained(
    tokenizers_dir: Path, tmp_path: Path, name: str
) -> None:
    """Policy train_field="train": SFTTrainer trains exactly the turns not marked "train": false."""
    from transformers import AutoTokenizer

    from templatefix import patch_tokenizer

    corpus = _corpus()
    if corpus is None:
        pytest.skip("TEMPLATEFIX_CORPUS is unset")
    official = (corpus / "templates" / FAMILIES[name][0]).read_text(encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizers_dir / name))
    tokenizer.chat_template = official
    tokenizer, result = patch_tokenizer(tokenizer, train_field="train")  # raises unless verified
    messages = [
        USER,
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "7, I think.", "train": False},
        {"role": "user", "content": "Check again."},
        {"role": "assistant", "content": "6 — sorry."},
    ]
    switched_on = [USER, {"role": "assistant", "content": "4", "train": True}]
    rows = [{"messages": messages}, {"messages": switched_on}]
    tokenizer, prepared = prepare(tokenizers_dir, name, result.patched, rows, tmp_path)
    special = dict(tokenizer.special_tokens_map)
    every = generated_texts(result.patched, messages, special)
    assert_runs_are_turns(tokenizer, prepared[0], [every[0], every[2]])
    assert_runs_are_turns(tokenizer, prepared[1], generated_texts(result.patched, switched_on, special))
    # the same data with the unpatched-for-the-field template would train the switched-off turn
    plain = template_for(name)[1]
    _, default = prepare(tokenizers_dir, name, plain, rows[:1], tmp_path / "default")
    assert len(trained_runs(default[0])) == 3
