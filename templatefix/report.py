"""What `verify` found: dataclasses, a stable JSON form, one-line failures and a rich view.

JSON (``Report.to_json``) and the rich view (``print_report``) are built from the same fields:
the table shows each probe's turns with their verdicts, the lines under it are ``failures()``,
then the outputs no probe reached (``Report.coverage``).

A report's ``status`` (SPEC §4):

- ``verified``: every probe the original accepts passes rules 1–3, and the probes reached every
  output of the template that writes text (``verified`` is True only here);
- ``unverified-code``: every probe passes, but some outputs were reached by no probe; the patch
  may be wrong there, and the report names each (line, expression). ``passed`` is True,
  ``verified`` False;
- ``failed``: some probe fails, or the template could not be checked.

The commands exit with :data:`EXIT_CODES`: 0 verified, 1 failed, 4 unverified code (2 is bad
input, 3 an internal error).

Example:
    >>> report = Report(template_name="t.jinja", policy={"turns": "all"}, errors=["no markers"])
    >>> report.verified
    False
    >>> report.failures()
    ['t.jinja: no markers']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Span = tuple[int, int]
TurnVerdict = Literal["exact", "rewritten", "mismatch", "wrong", "untrained"]
ProbeStatus = Literal["passed", "failed", "skipped"]
ReportStatus = Literal["verified", "unverified-code", "failed"]

#: Exit status of ``templatefix check``/``patch``/``corpus`` by report status (2 is bad input,
#: 3 an internal error).
EXIT_CODES: dict[str, int] = {"verified": 0, "failed": 1, "unverified-code": 4}


def exit_code(statuses: list[str]) -> int:
    """The exit status for several templates: the worst one (failed, then unverified code).

    Example:
        >>> exit_code(["verified", "unverified-code"]), exit_code(["unverified-code", "failed"])
        (4, 1)
    """
    for status in ("failed", "unverified-code"):
        if status in statuses:
            return EXIT_CODES[status]
    return 0

#: How far each side of an offset `context` shows.
CONTEXT_CHARS = 20

_VERDICT_STYLE = {
    "exact": "green",
    "rewritten": "yellow",
    "mismatch": "yellow",
    "wrong": "bold red",
    "untrained": "dim",
}


def context(text: str, offset: int, width: int = CONTEXT_CHARS) -> str:
    """``width`` characters either side of ``offset``, escaped onto one line, with a caret ``‸``.

    Example:
        >>> context("<|im_start|>assistant\\nhello", 21, 6)
        'istant‸\\\\nhello'
    """
    offset = max(0, min(offset, len(text)))
    left = text[max(0, offset - width):offset]
    right = text[offset:offset + width]
    return _escape(left) + "‸" + _escape(right)


def _escape(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii").replace("\\\\", "\\")


def _span_json(span: Span | None) -> list[int] | None:
    return [span[0], span[1]] if span is not None else None


def _span_text(span: Span | None) -> str:
    return f"[{span[0]},{span[1]})" if span is not None else "none"


@dataclass
class EdgeDiff:
    """One span edge that is not where SPEC puts it.

    Attributes:
        edge: ``start`` or ``end``.
        expected: where the oracle puts it (``None`` when no span was expected).
        actual: where the patched template put it (``None`` when it has no span there).
        expected_context / actual_context: the render around each offset, caret at the offset.
        note: what the difference means, e.g. ``span includes '\\n' of the header``.
    """

    edge: Literal["start", "end"]
    expected: int | None
    actual: int | None
    expected_context: str = ""
    actual_context: str = ""
    note: str = ""

    def describe(self) -> str:
        parts = [f"{self.edge} at {self.actual} (…{self.actual_context}…), expected {self.expected}"]
        if self.expected_context:
            parts.append(f"(…{self.expected_context}…)")
        if self.note:
            parts.append(f"— {self.note}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "edge": self.edge,
            "expected": self.expected,
            "actual": self.actual,
            "expected_context": self.expected_context,
            "actual_context": self.actual_context,
            "note": self.note,
        }


@dataclass
class TurnResult:
    """One assistant message of one probe.

    Attributes:
        message_index: index of the message in the probe conversation.
        kind: what the oracle found: ``exact`` | ``rewritten`` | ``mismatch``.
        verdict: ``kind`` when the span is right, ``untrained`` when correctly left out by policy,
            else ``wrong``.
        expected / actual: the expected span and the patched template's (merged) span there.
        edges: the edges that differ.
        end_of_turn: end-of-turn text of the turn; ``end_of_turn_inside`` says whether the
            actual span covers it (``None`` when unknown).
        problems: one-line descriptions of what is wrong.
    """

    message_index: int
    kind: str
    verdict: TurnVerdict
    trained: bool = True
    expected: Span | None = None
    actual: Span | None = None
    edges: list[EdgeDiff] = field(default_factory=list)
    end_of_turn: str = ""
    end_of_turn_inside: bool | None = None
    problems: list[str] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "message_index": self.message_index,
            "kind": self.kind,
            "verdict": self.verdict,
            "trained": self.trained,
            "expected": _span_json(self.expected),
            "actual": _span_json(self.actual),
            "edges": [edge.to_json() for edge in self.edges],
            "end_of_turn": self.end_of_turn,
            "end_of_turn_inside": self.end_of_turn_inside,
            "problems": list(self.problems),
            "note": self.note,
        }


@dataclass
class ProbeResult:
    """One probe conversation.

    Attributes:
        name: the probe's name.
        status: ``passed`` | ``failed`` | ``skipped``.
        reason: why it was skipped.
        render_problems: SPEC rule 1 failures (the patched render differs from the original).
        turns: per assistant message.
        stray_spans: problems with spans that belong to no assistant turn.
        token_problems: SPEC §5 disagreements reported by ``templatefix.tokens``.
        word_problems: SPEC §7 failures: a word on the wrong side of a span edge (which word,
            of which message and field, inside or outside), from ``templatefix.words``.
    """

    name: str
    status: ProbeStatus
    reason: str = ""
    render_problems: list[str] = field(default_factory=list)
    turns: list[TurnResult] = field(default_factory=list)
    stray_spans: list[str] = field(default_factory=list)
    token_problems: list[str] = field(default_factory=list)
    word_problems: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """One line per failure: ``probe: where: what``."""
        lines = [f"{self.name}: render: {problem}" for problem in self.render_problems]
        for turn in self.turns:
            lines.extend(f"{self.name}: message {turn.message_index}: {p}" for p in turn.problems)
        lines.extend(f"{self.name}: {problem}" for problem in self.stray_spans)
        lines.extend(f"{self.name}: tokens: {problem}" for problem in self.token_problems)
        lines.extend(f"{self.name}: words: {problem}" for problem in self.word_problems)
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "render_problems": list(self.render_problems),
            "turns": [turn.to_json() for turn in self.turns],
            "stray_spans": list(self.stray_spans),
            "token_problems": list(self.token_problems),
            "word_problems": list(self.word_problems),
        }


@dataclass
class Report:
    """The verdict on one patched template.

    Attributes:
        template_name: where the template came from (file name, ``name`` in a config…).
        policy: the policy judged against, as a dict.
        probes: one result per probe.
        errors: failures of the whole template (no markers, does not compile…).
        flags: turns that pass but deserve attention (rewritten history, mismatching prompt),
            with the honest alternatives.
        render_compared: whether rule 1 was checked (it needs the original template).
        coverage: which outputs of the (original) template the probes reached
            (``templatefix.coverage.Coverage``; ``None`` when not measured).
    """

    template_name: str
    policy: dict[str, str]
    probes: list[ProbeResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    render_compared: bool = False
    coverage: Any = None

    @property
    def checked(self) -> list[ProbeResult]:
        return [probe for probe in self.probes if probe.status != "skipped"]

    @property
    def passed(self) -> bool:
        """True if every probe the original accepts passes rules 1–3 and one was checked."""
        checked = self.checked
        return not self.errors and bool(checked) and all(p.status == "passed" for p in checked)

    @property
    def verified(self) -> bool:
        """True only if the probes all pass and they reached every output that writes text."""
        return self.passed and self.coverage is not None and self.coverage.complete

    @property
    def status(self) -> ReportStatus:
        """``verified``, ``unverified-code`` (passed, some outputs unreached) or ``failed``."""
        if not self.passed:
            return "failed"
        return "verified" if self.verified else "unverified-code"

    def unverified_code(self) -> list[str]:
        """One line per output no probe reached: ``line N: expression``."""
        if self.coverage is None:
            return ["coverage was not measured"] if self.passed else []
        return [output.describe() for output in self.coverage.unreached]

    def failures(self) -> list[str]:
        """Every failure, one line each, prefixed with the template name."""
        lines = list(self.errors)
        if not self.errors and not self.checked:
            lines.append("no probe conversation could be checked (the original rejects them all)")
        for probe in self.probes:
            lines.extend(probe.failures())
        return [f"{self.template_name}: {line}" for line in lines]

    def counts(self) -> dict[str, int]:
        """How many turns got each verdict, and how many probes each status."""
        counts: dict[str, int] = {}
        for probe in self.probes:
            counts[f"probes_{probe.status}"] = counts.get(f"probes_{probe.status}", 0) + 1
            for turn in probe.turns:
                counts[turn.verdict] = counts.get(turn.verdict, 0) + 1
        return dict(sorted(counts.items()))

    def summary(self) -> str:
        """One line: the verdict and the counts."""
        counts = self.counts()
        probes = ", ".join(
            f"{counts.get(f'probes_{s}', 0)} {s}" for s in ("passed", "failed", "skipped")
        )
        verdicts = ("exact", "rewritten", "mismatch", "untrained", "wrong")
        turns = ", ".join(f"{counts[v]} {v}" for v in verdicts if v in counts)
        verdict = {
            "verified": "VERIFIED",
            "unverified-code": "PASSED, NOT VERIFIED: UNVERIFIED CODE",
            "failed": "NOT VERIFIED",
        }[self.status]
        rule1 = "" if self.render_compared else "; render not compared (no original given)"
        reached = f"; coverage: {self.coverage.summary()}" if self.coverage is not None else ""
        return f"{self.template_name}: {verdict} — probes: {probes}; turns: {turns or 'none'}{reached}{rule1}"

    def to_json(self) -> dict[str, Any]:
        """A stable, JSON-serialisable dict (keys in a fixed order)."""
        return {
            "template": self.template_name,
            "status": self.status,
            "verified": self.verified,
            "passed": self.passed,
            "summary": self.summary(),
            "policy": dict(self.policy),
            "render_compared": self.render_compared,
            "counts": self.counts(),
            "errors": list(self.errors),
            "flags": list(self.flags),
            "failures": self.failures(),
            "unverified_code": self.unverified_code(),
            "coverage": self.coverage.to_json() if self.coverage is not None else None,
            "probes": [probe.to_json() for probe in self.probes],
        }


def print_report(report: Report, console: Any) -> None:
    """Show ``report`` with rich: a probe × turn table, then failures and flags.

    ``console`` is a ``rich.console.Console``.
    """
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(report.template_name), show_lines=False)
    table.add_column("probe")
    table.add_column("status")
    table.add_column("turns (message index: verdict)")
    for probe in report.probes:
        status_style = {"passed": "green", "failed": "bold red", "skipped": "dim"}[probe.status]
        turns = Text()
        if probe.status == "skipped":
            turns.append(probe.reason, style="dim")
        for turn in probe.turns:
            if turns:
                turns.append("  ")
            turns.append(f"{turn.message_index}:{turn.verdict}", style=_VERDICT_STYLE[turn.verdict])
        if probe.render_problems:
            turns.append("  render differs", style="bold red")
        if probe.word_problems:
            turns.append(f"  {len(probe.word_problems)} word(s) misplaced", style="bold red")
        table.add_row(Text(probe.name), Text(probe.status, style=status_style), turns)
    console.print(table)

    failures = report.failures()
    if failures:
        console.print(Text("Failures:", style="bold red"))
        for line in failures:
            console.print(Text("  " + line))
    if report.flags:
        console.print(Text("Flags:", style="bold yellow"))
        for line in report.flags:
            console.print(Text("  " + line))
    unreached = report.unverified_code()
    if unreached:
        title = "Unverified code (outputs no probe reached; the patch may be wrong there):"
        console.print(Text(title, style="bold yellow"))
        for line in unreached:
            console.print(Text("  " + line))
    style = {"verified": "bold green", "unverified-code": "bold yellow", "failed": "bold red"}[report.status]
    console.print(Text(report.summary(), style=style))
