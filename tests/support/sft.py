"""TRL's own dataset preparation, run for tests: ``SFTTrainer(assistant_only_loss=True)`` on a
tiny randomly initialised Llama built from a config (nothing downloaded). Needs torch, trl, datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def prepare(
    tokenizers_dir: Path, name: str, template: str, rows: list[dict], tmp_path: Path
) -> tuple[Any, list]:
    """Run SFTTrainer's real dataset preparation; return (tokenizer, prepared rows in order)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizers_dir / name))
    tokenizer.chat_template = template
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        assistant_only_loss=True,
        report_to="none",
        use_cpu=True,
        bf16=False,
        max_length=None,
    )
    trainer = SFTTrainer(
        model=LlamaForCausalLM(config),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    prepared = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    assert len(prepared) == len(rows)
    return tokenizer, prepared
