"""The independent checker over a whole corpus: is every template templatefix calls verified right?

Usage:
    TEMPLATEFIX_CORPUS=../shared/corpus python benchmarks/crosscheck.py --per-template 50 \\
        [--corpus DIR] [--filter TEXT] [--every N] [--shard K/N] [--json OUT] [--seed S] \\
        [--policy KEY=VALUE ... | --all-policies [--json-dir DIR]]
    python benchmarks/crosscheck.py --replay OUT   # re-judge saved failing conversations

Each template is patched with ``templatefix.patch_template(text, **policy)`` (``--policy
tool_calls=not_trained``, repeatable; default policy without it). For a verified patch (and for
one that passed with outputs no probe reached, reported apart), random conversations
(``tests/independent/conversations.py``, seeded, the same sequence for every template) are drawn
until ``--per-template`` of them are accepted by the original (at most four times as many draws).
Each is judged by the word rule of SPEC §6-§7 for the policy (``tests/independent/words.py``)
and, under the default policy, by SPEC rules 1-3 from the original's prefix renders
(``tests/independent/judge.py``); neither shares code with templatefix. Prints each wrong
template's first failing conversation and edge, then the totals: templates, patched, verified,
judged, wrong. ``--all-policies`` runs every policy of ``independent.sweep.POLICIES`` in turn
and ends with a table per policy. ``--json`` (one policy) or ``--json-dir`` (one
``<policy>.json`` per policy) saves every failing conversation, with its policy, for
``--replay``. Exits 1 if any verified template is wrong.
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
from independent.sweep import POLICIES, Outcome, check_template, judge_both, policy_name  # noqa: E402
from independent.words import check_policy  # noqa: E402


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


def _parse_policy(pairs: list[str]) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--policy {pair!r}: write KEY=VALUE, e.g. tool_calls=not_trained")
        policy[key.strip().replace("-", "_")] = value.strip()
    return check_policy(policy)


def _replay(path: Path, corpus: Path) -> int:
    """Re-judge saved conversations, each under the policy recorded with it (default if none)."""
    import templatefix

    records = json.loads(path.read_text(encoding="utf-8"))
    wrong = 0
    patched: dict[tuple[str, str], str | None] = {}
    for record in records:
        name = record["template"]
        policy = check_policy(record.get("policy") or {})
        key = (name, policy_name(policy))
        with open(corpus / "templates" / name, encoding="utf-8", newline="") as handle:
            text = handle.read()
        if key not in patched:
            result = templatefix.patch_template(text, **policy)
            patched[key] = result.patched if result.verified or getattr(result, "passed", False) else None
        if patched[key] is None:
            print(f"{name} [{key[1]}]: no longer verified")
            continue
        training, other = judge_both(text, patched[key], Conversation.from_json(record), policy, not policy)
        failures = (training or []) + ([] if record.get("training", True) else other)
        print(f"{name} [{key[1]}]: {'WRONG ' + str(failures[0]) if failures else 'ok'}")
        wrong += bool(failures)
    print(f"replayed {len(records)}, still wrong {wrong}")
    return 1 if wrong else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-template", type=int, default=50, help="judged conversations per template")
    parser.add_argument("--corpus", type=Path, default=os.environ.get("TEMPLATEFIX_CORPUS"))
    parser.add_argument("--filter", help="only templates whose name contains this text")
    parser.add_argument("--every", type=int, default=1, help="take every N-th template (a sample)")
    parser.add_argument("--shard", metavar="K/N", help="only the K-th of N interleaved parts (0 <= K < N), "
                        "to run parts in parallel processes")
    parser.add_argument("--json", type=Path, help="write failing conversations here (for --replay)")
    parser.add_argument("--seed", type=int, default=0, help="first conversation seed")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per template before giving up")
    parser.add_argument("--replay", type=Path, help="re-judge the conversations saved by --json")
    parser.add_argument("--policy", action="append", default=[], metavar="KEY=VALUE",
                        help="patch and judge under this policy option (repeatable), e.g. turns=last")
    parser.add_argument("--all-policies", action="store_true", help="run every policy in turn, then a table")
    parser.add_argument("--json-dir", type=Path, help="with --all-policies: one <policy>.json per policy")
    args = parser.parse_args()
    if args.corpus is None or not (Path(args.corpus) / "templates").is_dir():
        parser.error("give --corpus DIR or set TEMPLATEFIX_CORPUS (a folder holding templates/)")
    corpus = Path(args.corpus)
    if args.replay:
        if not args.replay.is_file():
            parser.error(f"--replay {args.replay}: no such file")
        return _replay(args.replay, corpus)
    try:
        policy = _parse_policy(args.policy)
    except ValueError as error:
        parser.error(str(error))
    if args.all_policies and policy:
        parser.error("give --policy or --all-policies, not both")
    policies = [dict(p) for p in POLICIES] if args.all_policies else [policy]
    templates = _templates(corpus, args.filter, args.every)
    if args.shard:
        try:
            part, parts = (int(x) for x in args.shard.split("/"))
            if not 0 <= part < parts:
                raise ValueError
        except ValueError:
            parser.error(f"--shard {args.shard!r}: write K/N with 0 <= K < N, e.g. 0/2")
        templates = templates[part::parts]
    table: list[tuple[str, list[Outcome], float]] = []
    for current in policies:
        if len(policies) > 1:
            print(f"\n=== policy {policy_name(current)} ===", flush=True)
        began = time.monotonic()
        outcomes = _run(templates, current, args)
        table.append((policy_name(current), outcomes, time.monotonic() - began))
        target = args.json
        if args.json_dir:
            args.json_dir.mkdir(parents=True, exist_ok=True)
            target = args.json_dir / f"{policy_name(current)}.json"
        if target:
            _write(target, outcomes, current)
    if len(policies) > 1:
        _table(table)
    return 1 if any(o.wrong for _, outcomes, _ in table for o in outcomes if o.status == "verified") else 0


def _write(target: Path, outcomes: list[Outcome], policy: dict[str, Any]) -> None:
    records = [
        {"template": o.name, "policy": policy, "training": training, **finding.to_json()}
        for o in outcomes
        for training, findings in ((True, o.findings), (False, o.prompt_findings))
        for finding in findings
    ]
    target.write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"failing conversations: {target}")


def _table(table: list[tuple[str, list[Outcome], float]]) -> None:
    print()
    print(f"{'policy':<34} {'templates':>9} {'verified':>8} {'judged':>6} {'wrong':>5} "
          f"{'uc':>4} {'uc wrong':>8} {'other':>5}  seconds")
    for name, outcomes, elapsed in table:
        verified = [o for o in outcomes if o.status == "verified"]
        partial = [o for o in outcomes if o.status == "unverified-code"]
        other = len(outcomes) - len(verified) - len(partial)
        print(f"{name:<34} {len(outcomes):>9} {len(verified):>8} {sum(bool(o.judged) for o in verified):>6} "
              f"{sum(o.wrong for o in verified):>5} {len(partial):>4} {sum(o.wrong for o in partial):>8} "
              f"{other:>5}  {elapsed:.0f}")
    print("(uc: passed every probe with outputs no probe reached; other: not verified, rejected, "
          "policy unknown, crash, timeout)")


def _run(templates: list[tuple[str, str]], policy: dict[str, Any], args: argparse.Namespace) -> list[Outcome]:
    signal.signal(signal.SIGALRM, _alarm)
    outcomes: list[Outcome] = []
    start = time.monotonic()
    for name, text in templates:
        began = time.monotonic()
        signal.alarm(args.timeout)
        try:
            outcome = check_template(name, text, args.per_template, base_seed=args.seed, policy=policy)
        except _Timeout:
            outcome = Outcome(name, "timeout", f"over {args.timeout}s", policy=policy)
        finally:
            signal.alarm(0)
        outcomes.append(outcome)
        mark = "WRONG" if outcome.wrong else "PROMPT-WRONG" if outcome.prompt_findings else outcome.status
        if outcome.status == "unverified-code" and (outcome.wrong or outcome.prompt_findings):
            mark += "(uc)"
        print(
            f"{mark:>12}  {name}  judged={outcome.judged} skipped={outcome.skipped} owed={outcome.owed} "
            f"rewritten={outcome.history_rewritten} mismatch={outcome.mismatch} "
            f"words in={outcome.word_inside} out={outcome.word_outside} ({time.monotonic() - began:.1f}s)",
            flush=True,
        )
        if outcome.wrong or outcome.prompt_findings:
            print("      " + outcome.first_failure().replace("\n", "\n      ")[:3000], flush=True)
        if outcome.status in ("crash", "policy-unknown"):
            print(f"      {outcome.detail}", flush=True)
    _summary(outcomes, time.monotonic() - start)
    return outcomes


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
    print(f"word occurrences judged: inside {total('word_inside')}, outside {total('word_outside')}")
    for status in ("crash", "timeout", "policy-unknown"):
        names = [o.name for o in outcomes if o.status == status]
        if names:
            print(f"{status}: {', '.join(names)}")
    if wrong:
        print("wrong: " + ", ".join(o.name for o in wrong))
    if prompt_wrong:
        print("wrong only in prompt renders: " + ", ".join(o.name for o in prompt_wrong))


if __name__ == "__main__":
    sys.exit(main())
