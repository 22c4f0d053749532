"""Status and patched-text sha256 of every corpus template: record them, or compare with a record.

Usage:
    TEMPLATEFIX_CORPUS=../shared/corpus python benchmarks/corpus_hashes.py --save before.json
    TEMPLATEFIX_CORPUS=../shared/corpus python benchmarks/corpus_hashes.py --compare before.json
        [--filter TEXT] [--workers K] [policy options as keyword=value, e.g. tool_calls=not_trained]

Each template is patched with ``templatefix.patch_template`` (default policy unless policy
options are given). ``--compare`` prints every template whose status or patched text changed,
then the status counts before and after, and exits 1 when anything changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def _one(args: tuple[str, str, dict[str, Any]]) -> tuple[str, str, str, str]:
    import templatefix

    name, path, policy = args
    with open(path, encoding="utf-8", newline="") as handle:
        text = handle.read()
    try:
        result = templatefix.patch_template(text, **policy)
    except Exception as error:  # a refusal by exception is a status too
        return name, f"error:{type(error).__name__}", "", str(error)[:200]
    digest = hashlib.sha256(result.patched.encode("utf-8")).hexdigest()
    reason = result.reasons[0][:200] if result.reasons else ""
    return name, result.status, digest, reason


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=os.environ.get("TEMPLATEFIX_CORPUS", "../shared/corpus"))
    parser.add_argument("--save", metavar="OUT")
    parser.add_argument("--compare", metavar="BEFORE")
    parser.add_argument("--filter", metavar="TEXT")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("policy", nargs="*", metavar="OPTION=VALUE")
    options = parser.parse_args()
    policy = dict(item.split("=", 1) for item in options.policy)
    root = Path(options.corpus) / "templates"
    jobs = [
        (path.relative_to(root).as_posix(), str(path), policy)
        for path in sorted(root.rglob("*.jinja"))
        if not options.filter or options.filter in path.relative_to(root).as_posix()
    ]
    with ProcessPoolExecutor(options.workers) as pool:
        rows = {name: [status, digest, reason] for name, status, digest, reason in pool.map(_one, jobs)}
    counts = Counter(status for status, _, _ in rows.values())
    if options.save:
        Path(options.save).write_text(json.dumps(rows, indent=1, sort_keys=True), encoding="utf-8")
    if not options.compare:
        print(dict(sorted(counts.items())))
        return 0
    before = json.loads(Path(options.compare).read_text(encoding="utf-8"))
    changed = 0
    for name in sorted(rows):
        if name not in before:
            continue
        old, new = before[name], rows[name]
        if old[:2] != new[:2]:
            changed += 1
            what = f"{old[0]} -> {new[0]}" if old[0] != new[0] else f"{old[0]}, patched text changed"
            print(f"{name}: {what}  {new[2]}")
    old_counts = Counter(before[name][0] for name in rows if name in before)
    print("before:", dict(sorted(old_counts.items())))
    print("after: ", dict(sorted(counts.items())))
    print(f"changed: {changed} of {len(rows)}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
