"""Benchmark: what the inference-engine check adds to ``templatefix patch`` (run by hand).

For each reference template (``templates/``) it times, in the same run: patching and verifying
(``templatefix.patch_template``, the baseline), and ``check_engines`` per engine (original and
patched rendered on the probe contexts). Prints seconds and the ratio of each engine's check to
the patch.

    python benchmarks/bench_engines.py [--templates templates]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import templatefix
from templatefix.engines import all_engines, check_engines, probe_contexts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", default=str(Path(__file__).resolve().parent.parent / "templates"))
    args = parser.parse_args()
    engines = all_engines()
    print(f"{'template':<16}{'contexts':>9}{'patch s':>9}" + "".join(f"{e.name[:18]:>20}" for e in engines))
    totals = [0.0] * len(engines)
    patch_total = 0.0
    for path in sorted(Path(args.templates).glob("*.jinja")):
        original = path.read_text(encoding="utf-8")
        started = time.perf_counter()
        patched = templatefix.patch_template(original).patched
        patch_seconds = time.perf_counter() - started
        patch_total += patch_seconds
        cells = []
        for index, engine in enumerate(engines):
            started = time.perf_counter()
            (result,) = check_engines(original, patched, engines=[engine])
            seconds = time.perf_counter() - started
            totals[index] += seconds
            cells.append(f"{seconds:6.2f}s x{seconds / patch_seconds:4.2f} {result.status[:5]:>5}")
        contexts = len(probe_contexts(original))
        print(f"{path.name:<16}{contexts:>9}{patch_seconds:>9.2f}" + "".join(f"{c:>20}" for c in cells))
    print(
        f"{'total':<16}{'':>9}{patch_total:>9.2f}"
        + "".join(f"{t:>9.2f}s x{t / patch_total:4.2f}     " for t in totals)
    )


if __name__ == "__main__":
    main()
