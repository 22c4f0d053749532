"""Coverage of every corpus template's outputs by the probes (run by hand).

For each template: the share of its outputs that write text reached by the fixed battery alone
and by the full battery (fixed plus the coverage search), the probes the search kept, the time
the battery took, and the first unreached outputs. Totals: templates at full coverage, mean and
median coverage.

    python benchmarks/coverage_report.py --corpus ../shared/corpus [--filter gemma] [--every 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from templatefix.coverage import measure
from templatefix.errors import TemplatefixError
from templatefix.probes import fixed_battery, probe_battery


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", default="../shared/corpus")
    parser.add_argument("--filter", default="")
    parser.add_argument("--every", type=int, default=1, help="take every N-th template (a sample)")
    parser.add_argument("--show", type=int, default=3, help="unreached outputs shown per template")
    args = parser.parse_args()
    paths = sorted(p for p in Path(args.corpus).rglob("*.jinja") if args.filter in str(p))[:: args.every]
    fixed_fractions, fractions, seconds = [], [], []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(args.corpus).as_posix()
        try:
            fixed = fixed_battery(text)
            before = measure(text, fixed)
            started = time.perf_counter()
            battery = probe_battery(text)
            seconds.append(time.perf_counter() - started)
            after = measure(text, battery)
        except TemplatefixError as error:
            print(f"{name}: {error}")
            continue
        fixed_fractions.append(before.fraction)
        fractions.append(after.fraction)
        print(
            f"{after.fraction:6.1%} (fixed {before.fraction:6.1%}) +{len(battery) - len(fixed)} probes "
            f"{seconds[-1]:.2f}s  {name}  {after.summary()}"
        )
        for output in after.unreached[: args.show]:
            print(f"         {output.describe()}")
    if not fractions:
        return
    print(
        f"\ntemplates: {len(fractions)}; full coverage: {sum(f >= 1.0 for f in fractions)} "
        f"(fixed battery alone: {sum(f >= 1.0 for f in fixed_fractions)}); "
        f"mean {statistics.mean(fractions):.1%} (fixed {statistics.mean(fixed_fractions):.1%}), "
        f"median {statistics.median(fractions):.1%}; battery time median {statistics.median(seconds):.2f}s"
    )


if __name__ == "__main__":
    main()
