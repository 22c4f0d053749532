"""The independent checker over a whole corpus: is every template templatefix calls verified right?

Usage:
    TEMPLATEFIX_CORPUS=../shared/corpus python benchmarks/crosscheck.py --per-template 50 \\
        [--corpus DIR] [--filter TEXT] [--every N] [--json OUT] [--seed S]
    python benchmarks/crosscheck.py --replay OUT   # re-judge saved failing conversations

Each template is patched with ``templatefix.patch_template`` (default policy). For a verified
patch (and for one that passed with outputs no probe reached, reported apart), random
conversations (``tests/independent/conversations.py``, seeded, the same sequence
for every template) are drawn until ``--per-template`` of them are accepted by the original (at
most four times as many draws) and each is judged from SPEC rules 1-3 by
``tests/independent/judge.py``, which shares no code with templatefix. Prints each wrong
template's first failing conversation and edge, then the totals: templates, patched, verified,
judged, wrong. ``--json`` saves every failing conversation for replay. Exits 1 if any verified
template is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from independent.conversations import Conversation  # noqa: E402
from independent.judge import judge  # noqa: E402
from independent.sweep import Outcome, check_template  # noqa: E402


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout


def _templates(corpus: Path, text_filter: str | None, every: int = 1) -> list[tuple[str, str]]:
    root = corpus / "templates"
    out = []
    for path in sorted(root.rglob("*.jinja")):
        name = path.relative_to(root).as_posix()
        if text_filter and text_filter not in name:
            continue
        with open(path, encoding="utf-8", newline="") as handle:
            out.append((name, handle.read()))
    return out[::every]


def _replay(path: Path, corpus: Path) -> int:
    import templatefix

    records = json.loads(path.read_text(encoding="utf-8"))
    wrong = 0
    patched: dict[str, str | None] = {}
    for record in records:
        name = record["template"]
        if name not in patched:
            text = (corpus / "templates" / name).read_text(encoding="utf-8")
            result = templatefix.patch_template(text)
            patched[name] = result.patched if result.verified else None
        if patched[name] is None:
            print(f"{name}: no longer verified")
            continue
        text = (corpus / "templates" / name).read_text(encoding="utf-8")
        verdict = judge(text, patched[name], Conversation.from_json(record))
        print(f"{name}: {'WRONG ' + str(verdict.failures[0]) if verdict.failures else 'ok'}")
        wrong += bool(verdict.failures)
    print(f"replayed {len(records)}, still wrong {wrong}")
    return 1 if wrong else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-template", type=int, default=50, help="judged conversations per template")
    parser.add_argument("--corpus", type=Path, default=os.environ.get("TEMPLATEFIX_CORPUS"))
    parser.add_argument("--filter", help="only templates whose name contains this text")
    parser.add_argument("--every", type=int, default=1, help="take every N-th template (a sample)")
    parser.add_argument("--json", type=Path, help="write failing conversations here (for --replay)")
    parser.add_argument("--seed", type=int, default=0, help="first conversation seed")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per template before giving up")
    parser.add_argument("--replay", type=Path, help="re-judge the conversations saved by --json")
    args = parser.parse_args()
    if args.corpus is None or not (Path(args.corpus) / "templates").is_dir():
        parser.error("give --corpus DIR or set TEMPLATEFIX_CORPUS (a folder holding templates/)")
    corpus = Path(args.corpus)
    if args.replay:
        return _replay(args.replay, corpus)

    signal.signal(signal.SIGALRM, _alarm)
    outcomes: list[Outcome] = []
    start = time.monotonic()
    for name, text in _templates(corpus, args.filter, args.every):
        began = time.monotonic()
        signal.alarm(args.timeout)
        try:
            outcome = check_template(name, text, args.per_template, base_seed=args.seed)
        except _Timeout:
            outcome = Outcome(name, "timeout", f"over {args.timeout}s")
        finally:
            signal.alarm(0)
        outcomes.append(outcome)
        mark = "WRONG" if outcome.wrong else "PROMPT-WRONG" if outcome.prompt_findings else outcome.status
        if outcome.status == "unverified-code" and (outcome.wrong or outcome.prompt_findings):
            mark += "(uc)"
        print(
            f"{mark:>12}  {name}  judged={outcome.judged} skipped={outcome.skipped} owed={outcome.owed} "
            f"rewritten={outcome.history_rewritten} mismatch={outcome.mismatch} "
            f"({time.monotonic() - began:.1f}s)",
            flush=True,
        )
        if outcome.wrong or outcome.prompt_findings:
            print("      " + outcome.first_failure().replace("\n", "\n      ")[:3000], flush=True)
        if outcome.status == "crash":
            print(f"      {outcome.detail}", flush=True)
    _summary(outcomes, time.monotonic() - start)
    if args.json:
        records = [
            {"template": o.name, "training": training, **finding.to_json()}
            for o in outcomes
            for training, findings in ((True, o.findings), (False, o.prompt_findings))
            for finding in findings
        ]
        args.json.write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
        print(f"failing conversations: {args.json}")
    return 1 if any(o.wrong for o in outcomes if o.status == "verified") else 0


def _summary(outcomes: list[Outcome], elapsed: float) -> None:
    verified = [o for o in outcomes if o.status == "verified"]
    partial = [o for o in outcomes if o.status == "unverified-code"]
    judged = [o for o in verified if o.judged]
    wrong = [o for o in verified if o.wrong]
    prompt_wrong = [o for o in verified if not o.wrong and o.prompt_findings]
    patched = [o for o in outcomes if o.status in ("verified", "unverified-code", "not verified")]
    print()
    print(f"templates {len(outcomes)}, patched {len(patched)}, verified {len(verified)}, "
          f"judged {len(judged)}, wrong {len(wrong)} (+{len(prompt_wrong)} wrong only in prompt renders)"
          f"  ({elapsed:.0f}s)")
    if partial:
        partial_wrong = [o.name for o in partial if o.wrong]
        print(f"passed with unreached outputs (unverified-code) {len(partial)}: judged too, "
              f"wrong {len(partial_wrong)}{': ' + ', '.join(partial_wrong) if partial_wrong else ''}")

    def total(attribute: str) -> int:
        return sum(getattr(o, attribute) for o in verified)

    print(
        f"conversations judged {total('judged')}, skipped {total('skipped')}; turns owed {total('owed')}, "
        f"history judged {total('history_judged')}, history rewritten {total('history_rewritten')}, "
        f"mismatch {total('mismatch')}"
    )
    unjudged = [o.name for o in verified if not o.judged]
    if unjudged:
        print(f"verified but no conversation accepted (not judged): {', '.join(unjudged)}")
    for status in ("crash", "timeout"):
        names = [o.name for o in outcomes if o.status == status]
        if names:
            print(f"{status}: {', '.join(names)}")
    if wrong:
        print("wrong: " + ", ".join(o.name for o in wrong))
    if prompt_wrong:
        print("wrong only in prompt renders: " + ", ".join(o.name for o in prompt_wrong))


if __name__ == "__main__":
    sys.exit(main())
