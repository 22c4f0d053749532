"""Keep-history variants over the corpus: which templates get one, what it changes, whether it is proven.

For each template: the tests rewritten (``templatefix.patch.variants``), the tests that depend on
later messages but could not be rewritten, SPEC §8 (a)-(c) on the template's probes, and with
``--patch`` the status of the patched variant (``patch_template(..., keep_history=True)``).

Usage:
    TEMPLATEFIX_CORPUS=../shared/corpus python benchmarks/keep_history.py \
        [--filter TEXT] [--patch] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from templatefix.errors import TemplatefixError
from templatefix.jinja.markers import has_markers
from templatefix.patch.strip import strip_generation_markers
from templatefix.patch.variants import keep_history_variant, patch_keep_history, prove
from templatefix.probes import probe_battery


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=os.environ.get("TEMPLATEFIX_CORPUS"))
    parser.add_argument("--filter", default="", help="only templates whose name contains TEXT")
    parser.add_argument("--patch", action="store_true", help="also patch and verify each changed variant")
    parser.add_argument("--json", metavar="OUT", help="write the rows as JSON")
    args = parser.parse_args()
    if not args.corpus:
        parser.error("give --corpus or set TEMPLATEFIX_CORPUS")
    root = Path(args.corpus) / "templates"
    rows = []
    for path in sorted(root.rglob("*.jinja")):
        name = str(path.relative_to(root))
        if args.filter not in name:
            continue
        start = time.perf_counter()
        text = path.read_text(encoding="utf-8")
        row: dict = {"template": name}
        try:
            original = strip_generation_markers(text) if has_markers(text) else text
            probes = probe_battery(original)
            variant = keep_history_variant(original, probes)
            proof = prove(original, variant.template, probes)
            row.update(
                rewrites=[r.describe() for r in variant.rewrites],
                problems=variant.problems,
                proven=proof.holds,
                proof=proof.summary(),
                failures=proof.failures[:3],
            )
            if args.patch and (variant.rewrites or variant.problems):
                result = patch_keep_history(text, probes=None)
                row.update(status=result.status, reasons=result.reasons[:3])
        except TemplatefixError as error:
            row.update(error=str(error))
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        kind = (
            "error" if "error" in row
            else "variant" if row["rewrites"] and row["proven"]
            else "unproven" if row["rewrites"] or row["problems"] or not row["proven"]
            else "keeps history"
        )  # fmt: skip
        row["kind"] = kind
        rewrites = "; ".join(row.get("rewrites", []))
        print(f"{kind:14} {row.get('status', ''):16} {name}  {rewrites}", flush=True)
        for problem in row.get("problems", []):
            print(f"{'':31} not rewritten: {problem}")
        if kind == "unproven":
            for failure in row.get("failures", []):
                print(f"{'':31} {failure}")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())), f"of {len(rows)} templates")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
