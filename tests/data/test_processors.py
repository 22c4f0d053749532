"""Processors (vision-language models): exact masks after image-token expansion, a TRL collator,
and the CLI on a processor folder.

The Gemma 3 processor folder is assembled offline: the real Gemma 3 tokenizer from
``TEMPLATEFIX_TOKENIZERS``, Gemma 3's image-processor and processor configs written here, and
its own chat template in the legacy processor file ``chat_template.json``. Building the image
processor needs Pillow (Gemma 3 has a PIL backend; torchvision is not needed); those tests skip
without it. Run this file with transformers < 5.18 (e.g. 4.56) to see transformers' own
``assistant_masks`` come back empty after expansion; 5.18+ corrects the shift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from templatefix.cli import main
from templatefix.data.processors import (
    DIFFERS,
    EMPTY,
    SHIFTED,
    AssistantMaskCollator,
    classify,
    expanded_mask,
    processor_mask,
    with_images,
)
from templatefix.data.resolve import resolve_template, tokenizer_template
from templatefix.render import render
from templatefix.tokens import load_fast_tokenizer, ranges_from_mask

pytestmark = pytest.mark.tokenizers

GEMMA3_IMAGE_PROCESSOR = {
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "Gemma3ImageProcessor", "image_seq_length": 256, "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Gemma3Processor", "resample": 2, "rescale_factor": 0.00392156862745098,
    "size": {"height": 896, "width": 896},
}


@pytest.fixture(scope="module")
def processor_dir(tmp_path_factory: pytest.TempPathFactory, tokenizers_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("gemma3-processor")
    source = tokenizers_dir / "gemma3"
    (folder / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = config.pop("chat_template")
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}), encoding="utf-8")
    (folder / "preprocessor_config.json").write_text(json.dumps(GEMMA3_IMAGE_PROCESSOR), encoding="utf-8")
    (folder / "processor_config.json").write_text(
        json.dumps({"image_seq_length": 256, "processor_class": "Gemma3Processor"}), encoding="utf-8"
    )
    return folder


@pytest.fixture(scope="module")
def processor(processor_dir: Path) -> Any:
    pytest.importorskip("PIL", reason="building Gemma 3's image processor needs Pillow (pip install pillow)")
    from transformers import AutoProcessor

    loaded = AutoProcessor.from_pretrained(str(processor_dir))
    assert type(loaded).__name__ == "Gemma3Processor"
    return loaded


def image() -> Any:
    import numpy as np

    return np.zeros((32, 32, 3), dtype=np.uint8)


def conversation() -> list[dict[str, Any]]:
    """An image in the first user turn: both assistant spans sit after its expansion. (One image per
    conversation: transformers 4.56's Gemma 3 processor rejects two as a batch-size mismatch.)"""
    return [
        {"role": "user", "content": [{"type": "image", "image": image()}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A black square."}]},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Another one."}]},
    ]


def generated(template: str, messages: list[dict[str, Any]], special: dict[str, Any]) -> list[str]:
    """SPEC §2's G of each assistant turn (the text after its generation prompt)."""
    texts = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = render(template, messages[:index], add_generation_prompt=True, special_tokens=special)
            turn = render(template, messages[: index + 1], special_tokens=special)
            texts.append(turn[len(prompt) :])
    return texts


def transformers_corrects_expansion() -> bool:
    """transformers 5.18+ shifts spans past expanded placeholders (TRL checks the same version)."""
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__) >= Version("5.18.0.dev0")


def test_processor_mask_is_each_turns_span_after_expansion(processor: Any) -> None:
    messages = conversation()
    result = processor_mask(processor, messages)
    template = resolve_template(None, processor).template
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<image_soft_token>") in result.input_ids
    assert result.input_ids.count(tokenizer.convert_tokens_to_ids("<image_soft_token>")) == 256
    runs = [
        tokenizer.decode(result.input_ids[start:end], skip_special_tokens=False)
        for start, end in ranges_from_mask(result.assistant_masks)
    ]
    expected = generated(template, messages, tokenizer.special_tokens_map)
    assert [run.rstrip("\n") for run in runs] == [text.rstrip("\n") for text in expected]
    assert all(run.endswith("<end_of_turn>") for run in runs)
    # transformers' own mask: exact since 5.18; empty before (4.56 trains nothing here)
    assert result.issue == (None if transformers_corrects_expansion() else EMPTY), result.message
    assert (result.transformers_masks == result.assistant_masks) == transformers_corrects_expansion()


def test_expanded_mask_follows_any_expansion(load_tokenizer: Any) -> None:
    """The alignment needs no processor internals: a placeholder replaced by many tokens, and a
    BOS the processor adds, leave the mask on exactly the span's tokens."""
    tokenizer = load_tokenizer("gemma3")
    text = "<start_of_turn>user\n<start_of_image>Hi<end_of_turn>\n<start_of_turn>model\nYes.<end_of_turn>\n"
    start = text.index("Yes.")
    spans = [(start, len(text) - 1)]
    plain_ids = tokenizer.encode(text, add_special_tokens=False)
    placeholder = tokenizer.convert_tokens_to_ids("<start_of_image>")
    soft = tokenizer.convert_tokens_to_ids("<image_soft_token>")
    at = plain_ids.index(placeholder)
    expanded = [tokenizer.bos_token_id, *plain_ids[:at], placeholder, *[soft] * 7, *plain_ids[at + 1 :]]
    mask = expanded_mask(text, spans, tokenizer, expanded)
    trained = [t for t, m in zip(expanded, mask, strict=True) if m]
    assert tokenizer.decode(trained, skip_special_tokens=False) == "Yes.<end_of_turn>"
    assert len(mask) == len(expanded)
    # a span holding the placeholder and the text after it trains the inserted tokens too; a span
    # ending right at the insertion point does not
    hi = text.index("Hi")
    mask = expanded_mask(text, [(text.index("<start_of_image>"), hi + 2)], tokenizer, expanded)
    assert [t for t, m in zip(expanded, mask, strict=True) if m] == [
        placeholder, *[soft] * 7, *tokenizer.encode("Hi", add_special_tokens=False)
    ]
    mask = expanded_mask(text, [(text.index("<start_of_image>"), hi)], tokenizer, expanded)
    assert [t for t, m in zip(expanded, mask, strict=True) if m] == [placeholder]


def test_classify_names_empty_shifted_and_differing_masks() -> None:
    assert classify([0, 1, 1, 0], [0, 1, 1, 0]) == (None, "")
    assert classify([0, 0, 0, 0], [0, 1, 1, 0])[0] == EMPTY
    issue, message = classify([0, 0, 0, 1, 1], [0, 1, 1, 0, 0])
    assert issue == SHIFTED and "shifted by 2" in message
    assert classify([1, 1, 1, 0], [0, 1, 1, 0])[0] == DIFFERS


def test_collator_labels_are_the_exact_mask(processor: Any) -> None:
    pytest.importorskip("torch")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A black square."}]},
    ]
    examples = [{"messages": messages, "images": [image()]}, {"messages": conversation()}]
    batch = AssistantMaskCollator(processor)(examples)
    assert {"input_ids", "attention_mask", "pixel_values", "labels"} <= set(batch)
    for row, example in enumerate(examples):
        exact = processor_mask(processor, with_images(example["messages"], example.get("images") or []))
        keep = batch["attention_mask"][row].bool()
        labels = batch["labels"][row][keep].tolist()
        assert batch["input_ids"][row][keep].tolist() == exact.input_ids
        assert [int(label != -100) for label in labels] == exact.assistant_masks
        assert (batch["labels"][row][~keep] == -100).all()


def test_cli_accepts_a_processor_folder(processor_dir: Path, tmp_path: Path, capsys: Any) -> None:
    """patch, show, check --tokenizer and audit read the tokenizer and the processor's
    chat_template.json (tokenizer_config.json has no template); no image processor is needed."""
    tokenizer = load_fast_tokenizer(processor_dir)
    official = json.loads((processor_dir / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
    assert tokenizer_template(tokenizer) == official
    patched = tmp_path / "patched.jinja"
    assert main(["patch", str(processor_dir), "-o", str(patched)]) == 0
    capsys.readouterr()
    data = tmp_path / "d.jsonl"
    row = {"messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A black square."}]},
    ]}
    data.write_text(json.dumps(row) + "\n", encoding="utf-8")
    tokenizer_args = ["--tokenizer", str(processor_dir)]
    assert main(["audit", str(data), *tokenizer_args, "--template", str(patched), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    answer = tokenizer.encode("A black square.<end_of_turn>", add_special_tokens=False)
    assert out["ok"] and out["trained_tokens"] == len(answer)
    assert main(["show", str(patched), *tokenizer_args]) == 0
    assert "assistant" in capsys.readouterr().out
    assert main(["check", str(patched), "--original", str(processor_dir), *tokenizer_args]) == 0
