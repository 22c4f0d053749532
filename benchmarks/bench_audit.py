"""Audit speed versus transformers' own per-example loop, measured in the same run.

The baseline is what a user would otherwise run to get masks:
``tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)``
for every example (messages already in memory). The audit reads the same examples from a JSONL
file, renders, tokenizes in batches, checks masks, history and truncation. Runs are interleaved
and repeated; the best time of each is compared (the machine may be shared).

Usage:
    TEMPLATEFIX_TOKENIZERS=../shared/tokenizers python benchmarks/bench_audit.py --n 10000

Acceptance: audit / transformers <= 1.0 for 10k two-turn conversations with the qwen3 tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the model learns to answer questions about data training tokens loss value gradient batch "
    "sequence length reasoning tool call weather city paris quick brown fox jumps over lazy dog"
).split()


def conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` two-turn conversations (user, assistant) of varied length."""
    rng = random.Random(seed)

    def sentence(low: int, high: int) -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
        return " ".join(words).capitalize() + rng.choice([".", "?", "!"])

    return [
        [{"role": "user", "content": sentence(5, 40)}, {"role": "assistant", "content": sentence(5, 120)}]
        for _ in range(n)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of conversations (default 10000)")
    parser.add_argument("--tokenizer", help="tokenizer dir (default: $TEMPLATEFIX_TOKENIZERS/qwen3)")
    parser.add_argument("--template", help="marked template (default: the tokenizer's own, patched)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before transformers loads
    from transformers import AutoTokenizer

    from templatefix.commands.audit import resolve_template
    from templatefix.data.audit import AuditOptions, audit_rows, open_rows

    tokenizer_dir = args.tokenizer or (
        os.path.join(os.environ["TEMPLATEFIX_TOKENIZERS"], "qwen3")
        if "TEMPLATEFIX_TOKENIZERS" in os.environ
        else None
    )
    if not tokenizer_dir or not Path(tokenizer_dir).is_dir():
        print("bench_audit: give --tokenizer DIR or set TEMPLATEFIX_TOKENIZERS", file=sys.stderr)
        return 2
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    template, notes, warnings = resolve_template(args.template, tokenizer)
    for line in notes + warnings:
        print(f"# {line}")

    data = conversations(args.n)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "data.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for messages in data:
                handle.write(json.dumps({"messages": messages}) + "\n")

        def baseline() -> float:
            started = time.perf_counter()
            for messages in data:
                tokenizer.apply_chat_template(
                    messages, chat_template=template, return_dict=True, return_assistant_tokens_mask=True
                )
            return time.perf_counter() - started

        def audit(workers: int) -> tuple[float, object]:
            rows, _ = open_rows(path)
            started = time.perf_counter()
            result = audit_rows(rows, template, tokenizer, AuditOptions(), workers=workers)
            return time.perf_counter() - started, result

        baseline()  # warm up caches (template compilation) for both sides
        times: dict[str, list[float]] = {"transformers": [], "audit": [], "audit-1": []}
        result = None
        for _ in range(args.repeats):
            times["transformers"].append(baseline())
            elapsed, result = audit(args.workers)
            times["audit"].append(elapsed)
            if args.workers != 1:
                times["audit-1"].append(audit(1)[0])

    assert result is not None
    best = {name: min(values) for name, values in times.items() if values}
    print(
        f"conversations: {args.n}  tokens: {result.tokens}  trained: {result.trained_tokens}  "
        f"findings: {sum(result.counts.values())}  cpus: {os.cpu_count()}"
    )
    print(
        f"transformers loop        : {best['transformers']:.2f} s  "
        f"({result.tokens / best['transformers']:,.0f} tokens/s)  [{args.n / best['transformers']:,.0f} ex/s]"
    )
    print(
        f"audit ({args.workers} workers)        : {best['audit']:.2f} s  "
        f"({result.tokens / best['audit']:,.0f} tokens/s)  ratio {best['audit'] / best['transformers']:.2f}"
    )
    if "audit-1" in best:
        single = best["audit-1"]
        print(
            f"audit (1 process)        : {single:.2f} s  "
            f"({result.tokens / single:,.0f} tokens/s)  ratio {single / best['transformers']:.2f}"
        )
    print(f"all runs: {json.dumps({k: [round(v, 3) for v in vs] for k, vs in times.items()})}")
    ratio = best["audit"] / best["transformers"]
    print(f"ACCEPTANCE (ratio <= 1.0): {'PASS' if ratio <= 1.0 else 'FAIL'} ({ratio:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
