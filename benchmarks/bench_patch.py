"""Benchmark: patch plus full verification per template, over a corpus (run by hand).

Prints the median and p95 seconds per template, and the ratio to a baseline measured in the same
run: rendering each template's fixed probe battery once with transformers (what any check must
at least do). The patch time includes building the battery, the coverage search among them
(``templatefix.coverage.search``) and measuring coverage in the verification; it also prints
how many templates reach full coverage.

    python benchmarks/bench_patch.py --corpus ../shared/corpus [--limit N] [--filter qwen]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from templatefix.errors import RenderError
from templatefix.patch.api import patch_template
from templatefix.probes import fixed_battery
from templatefix.render import render


def baseline_seconds(text: str) -> float:
    """Render every probe of the fixed battery once with and without the generation prompt."""
    started = time.perf_counter()
    for probe in fixed_battery(text):
        for generation_prompt in (False, True):
            try:
                render(text, probe.messages, add_generation_prompt=generation_prompt, **probe.kwargs)
            except RenderError:
                pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", default="../shared/corpus")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--filter", default="")
    parser.add_argument("--every", type=int, default=1, help="take every N-th template (a sample)")
    parser.add_argument("--slowest", type=int, default=5, help="list the N slowest templates")
    args = parser.parse_args()
    paths = sorted(p for p in Path(args.corpus).rglob("*.jinja") if args.filter in str(p))[:: args.every]
    if args.limit:
        paths = paths[: args.limit]
    patch_times, base_times, verified, passed = [], [], 0, 0
    for path in paths:
        text = path.read_text(encoding="utf-8")
        base_times.append(baseline_seconds(text))
        started = time.perf_counter()
        try:
            result = patch_template(text)
            verified += result.verified
            passed += bool(result.passed)
        except Exception:  # noqa: BLE001 - a refusal still costs time; count it
            pass
        patch_times.append(time.perf_counter() - started)

    def p95(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    median_patch, median_base = statistics.median(patch_times), statistics.median(base_times)
    print(f"templates: {len(paths)}, verified (full coverage): {verified}, every probe passed: {passed}")
    print(
        f"patch+verify: median {median_patch:.3f}s  p95 {p95(patch_times):.3f}s  "
        f"total {sum(patch_times):.1f}s"
    )
    print(f"baseline (render battery once): median {median_base:.3f}s  p95 {p95(base_times):.3f}s")
    print(f"ratio patch+verify / baseline: median {median_patch / median_base:.1f}x")
    print(f"goal: median <= 1.0 s per template -> {'PASS' if median_patch <= 1.0 else 'FAIL'}")
    print(f"goal: p95 <= 3.0 s per template -> {'PASS' if p95(patch_times) <= 3.0 else 'FAIL'}")
    slowest = sorted(zip(patch_times, paths, strict=True), reverse=True)[: args.slowest]
    for seconds, path in slowest:
        print(f"  {seconds:6.2f}s  {path.relative_to(args.corpus)}")


if __name__ == "__main__":
    main()
