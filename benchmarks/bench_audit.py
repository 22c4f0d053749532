"""Audit speed against transformers' own per-example loop and against the floor, in the same run.

Ways to get every example's tokens and assistant mask, all from the same conversations held in
memory, timed the same way: wall clock and CPU time (this process's threads plus worker
processes), best of ``--repeats`` interleaved runs. On a shared machine CPU time is the steadier
measure; wall clock shows what parallelism buys.

- ``transformers loop``: ``tokenizer.apply_chat_template(messages, return_dict=True,
  return_assistant_tokens_mask=True)`` per example, what a user would otherwise run;
- ``floor``: render every conversation, then one batched tokenize with offsets (reading each
  encoding's offsets): the least any exact mask needs;
- ``audit``: ``templatefix.data.audit.audit_rows`` (render with spans, batched tokenize, exact and
  transformers masks, history once per shape, truncation), with 1 process (tokenizing each chunk
  on a thread while the next renders) and with ``--workers`` processes;
- ``transform``: the dataset transform on the same rows in 256-row batches (tokens and masks
  built as columns), 1 process.

Usage (nice'd, the machine is shared):
    TEMPLATEFIX_TOKENIZERS=../shared/tokenizers nice -n 10 python benchmarks/bench_audit.py --n 10000

Goal: audit <= 1.2 x floor (single process, the same template and tokenizer).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from collections.abc import Callable
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


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def best_of(
    repeats: int, runs: dict[str, Callable[[], object]]
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict]:
    """Run every function ``repeats`` times, interleaved: wall-clock and CPU seconds, last results."""
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            started, started_cpu = time.perf_counter(), cpu_seconds()
            results[name] = run()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(cpu_seconds() - started_cpu)
    return wall, cpu, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of conversations (default 100000)")
    parser.add_argument("--tokenizer", help="tokenizer dir (default: $TEMPLATEFIX_TOKENIZERS/qwen3)")
    parser.add_argument("--template", help="marked template (default: the tokenizer's own, patched)")
    parser.add_argument("--workers", type=int, nargs="*", default=[2], help="worker counts to time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-transformers", action="store_true", help="skip the slow per-example loop")
    args = parser.parse_args()

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before transformers loads
    from transformers import AutoTokenizer

    from templatefix.commands.audit import resolve_template
    from templatefix.data.audit import AuditOptions, audit_rows
    from templatefix.data.transforms import AuditTransform
    from templatefix.render import render

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
    special = dict(tokenizer.special_tokens_map)
    backend = tokenizer.backend_tokenizer
    data = conversations(args.n)
    rows = [{"messages": messages} for messages in data]

    def transformers_loop() -> int:
        trained = 0
        for messages in data:
            out = tokenizer.apply_chat_template(
                messages, chat_template=template, return_dict=True, return_assistant_tokens_mask=True
            )
            trained += sum(out["assistant_masks"])
        return trained

    def floor() -> int:
        texts = [render(template, messages, special_tokens=special) for messages in data]
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return sum(len(encoding.offsets) for encoding in encodings)

    def audit(workers: int) -> Callable[[], object]:
        return lambda: audit_rows(enumerate(rows), template, tokenizer, AuditOptions(), workers=workers)

    transform = AuditTransform(tokenizer, template)

    def transform_batches() -> int:
        trained = 0
        for start in range(0, len(rows), 256):
            out = transform({"messages": data[start : start + 256]})
            trained += sum(int(mask.sum()) for mask in out["assistant_masks"])
        return trained

    runs: dict[str, Callable[[], object]] = {}
    if not args.skip_transformers:
        runs["transformers loop"] = transformers_loop
    runs["floor"] = floor
    runs["audit, 1 process"] = audit(1)
    for workers in args.workers:
        if workers > 1:
            runs[f"audit, {workers} workers"] = audit(workers)
    runs["transform, 1 process"] = transform_batches
    floor()  # warm up (template compilation, tokenizer caches)
    times, cpu, results = best_of(args.repeats, runs)

    result = results["audit, 1 process"]
    best = {name: min(values) for name, values in times.items()}
    best_cpu = {name: min(values) for name, values in cpu.items()}
    print(
        f"conversations: {args.n}  tokens: {result.tokens}  trained: {result.trained_tokens}  "
        f"findings: {sum(result.counts.values())}  cpus: {os.cpu_count()}  tokenizer: {tokenizer_dir}"
    )
    if "transformers loop" in results:
        assert results["transformers loop"] == result.trained_tokens, "audit and transformers disagree"
    assert results["transform, 1 process"] == result.trained_tokens
    print(f"{'':24}  {'wall':>7}    {'tokens/s':>12}  {'':7}  {'cpu':>7}")
    for name, seconds in best.items():
        print(
            f"{name:24}: {seconds:7.2f} s  {result.tokens / seconds:>12,.0f}  "
            f"{seconds / best['floor']:5.2f} x  "
            f"{best_cpu[name]:7.2f} s  {best_cpu[name] / best_cpu['floor']:5.2f} x floor"
        )
    print(f"wall, all runs: {json.dumps({k: [round(v, 2) for v in vs] for k, vs in times.items()})}")
    print(f"cpu, all runs: {json.dumps({k: [round(v, 2) for v in vs] for k, vs in cpu.items()})}")
    ratio = best["audit, 1 process"] / best["floor"]
    ratio_cpu = best_cpu["audit, 1 process"] / best_cpu["floor"]
    print(
        f"GOAL audit <= 1.2 x floor (1 process): wall {ratio:.2f} {'PASS' if ratio <= 1.2 else 'FAIL'}, "
        f"cpu {ratio_cpu:.2f} {'PASS' if ratio_cpu <= 1.2 else 'FAIL'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
