"""Long fuzzing campaign for ``patch_template`` (the strategies and cross-check of tests/corpus/test_fuzz.py).

Usage:
    TEMPLATEFIX_CORPUS=../shared/corpus python benchmarks/fuzz.py --n 10000 [--seed 1] [--minutes 15]

Prints N, outcome counts (verified / not verified / rejected), crashes (anything but a
``TemplatefixError``), false "verified" (the independent cross-check fails) and the rate. Every
crash and false verdict is saved under ``--out`` (default ``fuzz-findings/``) for replay. Exits 1
if there was any.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from corpus.test_fuzz import check_one, corpus_seeds, mutated, reference_seeds  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from support.strategies import conversations  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of mutated templates")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=15.0, help="stop after this long")
    parser.add_argument("--out", type=Path, default=Path("fuzz-findings"))
    args = parser.parse_args()

    seeds = reference_seeds()
    corpus = os.environ.get("TEMPLATEFIX_CORPUS")
    if corpus:
        seeds += corpus_seeds(Path(corpus))
    counts: collections.Counter[str] = collections.Counter()
    findings: list[tuple[str, str, str]] = []  # kind, template, "failure\n\nconversations as JSON"
    start = time.monotonic()
    stop_at = start + args.minutes * 60

    @settings(
        max_examples=args.n,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        phases=[__import__("hypothesis").Phase.generate],  # no shrinking: count every example once
    )
    @given(template=mutated(seeds), extra=st.lists(conversations(max_turns=2), max_size=1))
    def run(template: str, extra: list[Any]) -> None:
        if time.monotonic() > stop_at:
            counts["skipped (time)"] += 1
            return
        try:
            counts[check_one(template, extra)] += 1
        except AssertionError as error:
            kind = "crash" if "crashed" in str(error) else "false verified"
            counts[kind] += 1
            detail = str(error) + "\n\n" + json.dumps(extra, ensure_ascii=False, default=str)
            findings.append((kind, template, detail))
            print(f"{kind}: {' | '.join(str(error).splitlines()[:2])[:300]}", file=sys.stderr)
        done = sum(v for k, v in counts.items() if k != "skipped (time)")
        if done % 250 == 0:
            print(
                f"  {done} done, {dict(counts)}, {done / (time.monotonic() - start):.1f}/s", file=sys.stderr
            )

    import random

    random.seed(args.seed)
    from hypothesis import seed as hypothesis_seed

    hypothesis_seed(args.seed)(run)()
    elapsed = time.monotonic() - start
    done = sum(v for k, v in counts.items() if k != "skipped (time)")
    if findings:
        args.out.mkdir(parents=True, exist_ok=True)
        for i, (kind, template, detail) in enumerate(findings):
            stem = args.out / f"{i:04d}-{kind.replace(' ', '-')}"
            stem.with_suffix(".jinja").write_text(template, encoding="utf-8")
            stem.with_suffix(".txt").write_text(detail, encoding="utf-8")
    print(f"N={done} in {elapsed:.0f}s ({done / elapsed:.1f}/s)")
    for key in ("verified", "not verified", "rejected", "crash", "false verified"):
        print(f"  {key}: {counts.get(key, 0)}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
