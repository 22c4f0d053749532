"""Patch a template with templatefix, then judge the patch on random conversations.

Shared by ``tests/test_independent_check.py`` (a small sample in CI) and
``benchmarks/crosscheck.py`` (the whole corpus by hand). ``templatefix.patch_template`` is the
thing under test; everything that judges it lives in ``independent``.

Example:
    >>> outcome = check_template("chatml", open("templates/chatml.jinja").read(), 2)  # doctest: +SKIP
    >>> outcome.status, outcome.wrong  # doctest: +SKIP
    ('verified', False)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from independent.conversations import Conversation, random_conversation
from independent.judge import Failure, Verdict, judge


@dataclass
class Finding:
    """One conversation on which a verified patch is wrong."""

    conversation: Conversation
    failures: list[Failure]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.conversation.to_json(),
            "failures": [str(f) for f in self.failures[:10]],
        }


@dataclass
class Outcome:
    """What happened to one template."""

    name: str
    status: str  # "verified", "unverified-code" (passed, coverage incomplete), "not verified",
    # "rejected" (TemplatefixError), "crash"
    detail: str = ""  # the reason for rejected/crash
    judged: int = 0  # conversations the original accepts, judged
    skipped: int = 0  # conversations the original rejects
    owed: int = 0  # assistant turns judged by rule 2
    mismatch: int = 0  # assistant turns not judged: F does not start with P
    history_judged: int = 0  # earlier turns judged in the full render (rule 3)
    history_rewritten: int = 0  # earlier turns not prefix-preserving in the full render
    findings: list[Finding] = field(default_factory=list)  # wrong where users train (or rule 1)
    prompt_findings: list[Finding] = field(default_factory=list)  # wrong only in prompt renders
    patched: str = ""

    @property
    def wrong(self) -> bool:
        return bool(self.findings)

    def add(self, verdict: Verdict) -> None:
        self.owed += verdict.owed
        self.mismatch += verdict.mismatch
        self.history_judged += verdict.history_judged
        self.history_rewritten += verdict.history_rewritten

    def first_failure(self) -> str:
        """The first wrong edge and its conversation, as text (empty when nothing is wrong)."""
        import json

        if not self.findings and not self.prompt_findings:
            return ""
        finding = (self.findings or self.prompt_findings)[0]
        return f"{finding.failures[0]}\nconversation: {json.dumps(finding.conversation.to_json())}"


def seeds(base: int) -> Any:
    """The endless, deterministic seed sequence starting at ``base`` (the same for every template)."""
    seed = base
    while True:
        yield seed
        seed += 1


def check_template(
    name: str,
    text: str,
    per_template: int,
    *,
    base_seed: int = 0,
    max_attempts: int | None = None,
    max_findings: int = 3,
) -> Outcome:
    """Patch ``text`` with templatefix and, if it says verified (or passed with unreached outputs),
    judge it on random conversations.

    Draws ``random_conversation(base_seed), random_conversation(base_seed + 1), ...`` until
    ``per_template`` of them are accepted by the original or ``max_attempts`` (default four times
    as many) were drawn; stops early after ``max_findings`` wrong conversations.
    """
    import templatefix
    from templatefix.errors import TemplatefixError

    try:
        result = templatefix.patch_template(text)
    except TemplatefixError as error:
        return Outcome(name, "rejected", str(error).splitlines()[0] if str(error) else type(error).__name__)
    except Exception as error:  # anything else escaping patch_template is a crash
        return Outcome(name, "crash", f"{type(error).__name__}: {error}")
    if result.verified:
        outcome = Outcome(name, "verified", patched=result.patched)
    elif getattr(result, "passed", False):  # every probe passed, but some outputs no probe reached
        unreached = "; ".join(getattr(result, "unverified_code", []))[:200]
        outcome = Outcome(name, "unverified-code", unreached, patched=result.patched)
    else:
        return Outcome(name, "not verified", "; ".join(result.reasons)[:200], patched=result.patched)
    attempts = max_attempts if max_attempts is not None else 4 * per_template
    for count, seed in enumerate(seeds(base_seed)):
        if count >= attempts or outcome.judged >= per_template or len(outcome.findings) >= max_findings:
            break
        conversation = random_conversation(seed)
        verdict = judge(text, result.patched, conversation)
        if verdict.skipped:
            outcome.skipped += 1
            if verdict.failures:  # the original rejects it, and the patched template does not alike
                outcome.findings.append(Finding(conversation, verdict.failures))
            continue
        outcome.judged += 1
        outcome.add(verdict)
        if verdict.training_failures:
            outcome.findings.append(Finding(conversation, verdict.training_failures))
        elif verdict.failures and len(outcome.prompt_findings) < max_findings:
            outcome.prompt_findings.append(Finding(conversation, verdict.failures))
    return outcome
