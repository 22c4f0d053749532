"""Patch a template with templatefix under a policy, then judge the patch on random conversations.

Two judges: the prefix rule (``independent.judge``, SPEC rules 1-3, default policy only) and the
word rule (``independent.words``, SPEC §6-§7, every policy). Under a ``train_field`` policy each
conversation gets that field switched off on some assistant messages
(``conversations.switch_off``). Shared by ``tests/corpus/test_independent_check.py`` (a small
sample in CI) and ``benchmarks/crosscheck.py`` (the whole corpus by hand).
``templatefix.patch_template`` is the thing under test; everything that judges it lives in ``independent``.

Example:
    >>> outcome = check_template("chatml", open("templates/chatml.jinja").read(), 2)  # doctest: +SKIP
    >>> outcome.status, outcome.wrong  # doctest: +SKIP
    ('verified', False)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from independent.conversations import Conversation, random_conversation, switch_off
from independent.judge import Failure, Verdict, judge
from independent.words import WordFailure, WordVerdict, check_policy, judge_words

#: The policies ``--all-policies`` runs, default first (``templatefix.patch_template`` keywords).
POLICIES: tuple[dict[str, Any], ...] = (
    {},
    {"reasoning": "not_trained"},
    {"reasoning": "final_channel_only"},
    {"tool_calls": "not_trained"},
    {"turns": "last"},
    {"turns": "last_message"},
    {"train_field": "train"},
)


def policy_name(policy: dict[str, Any]) -> str:
    """``default`` or ``key=value,...`` (sorted), as used in file names and tables.

    Example:
        >>> policy_name({}), policy_name({"tool_calls": "not_trained"})
        ('default', 'tool_calls=not_trained')
    """
    return ",".join(f"{k}={v}" for k, v in sorted(policy.items())) or "default"


def policy_conversation(conversation: Conversation, policy: dict[str, Any], seed: int) -> Conversation:
    """The conversation judged under ``policy``: with ``train_field`` switched off on some turns."""
    field_name = policy.get("train_field")
    return switch_off(conversation, field_name, seed) if field_name else conversation


@dataclass
class Finding:
    """One conversation on which a verified patch is wrong."""

    conversation: Conversation
    failures: list[Failure | WordFailure]

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
    policy: dict[str, Any] = field(default_factory=dict)
    word_inside: int = 0  # word occurrences judged that must be inside a span
    word_outside: int = 0  # word occurrences judged that must be outside

    @property
    def wrong(self) -> bool:
        return bool(self.findings)

    def add_words(self, verdict: WordVerdict) -> None:
        self.word_inside += verdict.inside
        self.word_outside += verdict.outside

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
    policy: dict[str, Any] | None = None,
    prefix_rule: bool | None = None,
) -> Outcome:
    """Patch ``text`` with templatefix under ``policy`` and, if it says verified (or passed with
    unreached outputs), judge it on random conversations.

    Draws ``random_conversation(base_seed), random_conversation(base_seed + 1), ...`` until
    ``per_template`` of them are accepted by the original or ``max_attempts`` (default four times
    as many) were drawn; stops early after ``max_findings`` wrong conversations. Every
    conversation is judged by the word rule; under the default policy (or ``prefix_rule=True``)
    by the prefix rule too.
    """
    import templatefix
    from templatefix.errors import TemplatefixError

    policy = check_policy(policy or {})
    if prefix_rule is None:
        prefix_rule = not policy
    try:
        result = templatefix.patch_template(text, **policy)
    except ValueError as error:  # a policy value this templatefix does not know
        return Outcome(name, "policy-unknown", str(error).splitlines()[0], policy=policy)
    except TemplatefixError as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        return Outcome(name, "rejected", detail, policy=policy)
    except Exception as error:  # anything else escaping patch_template is a crash
        return Outcome(name, "crash", f"{type(error).__name__}: {error}", policy=policy)
    if result.verified:
        outcome = Outcome(name, "verified", patched=result.patched, policy=policy)
    elif getattr(result, "passed", False):  # every probe passed, but some outputs no probe reached
        unreached = "; ".join(getattr(result, "unverified_code", []))[:200]
        outcome = Outcome(name, "unverified-code", unreached, patched=result.patched, policy=policy)
    else:
        reasons = "; ".join(result.reasons)[:200]
        return Outcome(name, "not verified", reasons, patched=result.patched, policy=policy)
    attempts = max_attempts if max_attempts is not None else 4 * per_template
    for count, seed in enumerate(seeds(base_seed)):
        if count >= attempts or outcome.judged >= per_template or len(outcome.findings) >= max_findings:
            break
        conversation = policy_conversation(random_conversation(seed), policy, seed)
        training, other = judge_both(text, result.patched, conversation, policy, prefix_rule, outcome)
        if training is None:
            outcome.skipped += 1
            if other:  # the original rejects it, and the patched template does not alike
                outcome.findings.append(Finding(conversation, other))
            continue
        outcome.judged += 1
        if training:
            outcome.findings.append(Finding(conversation, training))
        elif other and len(outcome.prompt_findings) < max_findings:
            outcome.prompt_findings.append(Finding(conversation, other))
    return outcome


def judge_both(
    original: str,
    patched: str,
    conversation: Conversation,
    policy: dict[str, Any],
    prefix_rule: bool,
    outcome: Outcome | None = None,
) -> tuple[list[Failure | WordFailure] | None, list[Failure | WordFailure]]:
    """(failures where users train, other failures) of the word rule and, if asked, the prefix
    rule; ``(None, errors)`` when the original rejects the conversation, where ``errors`` are the
    renders on which the patched template does not raise as the original does (rule 1 holds
    there too, under every policy)."""
    words = judge_words(original, patched, conversation.messages, policy, conversation.kwargs)
    if words.skipped:
        return None, [f for f in judge(original, patched, conversation).failures if f.rule == "error"]
    training: list[Failure | WordFailure] = list(words.training_failures)
    other: list[Failure | WordFailure] = []
    if outcome is not None:
        outcome.add_words(words)
    if prefix_rule:
        verdict = judge(original, patched, conversation)
        if outcome is not None:
            outcome.add(verdict)
        training = list(verdict.training_failures) + training
        other = [f for f in verdict.failures if not f.training]
    return training, other
