"""A training variant that keeps history (SPEC §8): every assistant turn written as when it is last.

Some templates write an assistant turn differently once later messages follow it: they drop the
reasoning of earlier turns (a computed last-question index, ``loop.index0 > ns.last_query_index``),
or end earlier turns with another token (``loop.last`` tests). Such a turn is *rewritten* in the
full render (SPEC §3): training on it teaches text the model never produced.

The keep-history variant V of a template T is found from structure and rendered behaviour alone:

1. **Find the tests.** Every ``{% if %}``/``{% elif %}`` test and ``a if test else b`` test outside
   macros, and each operand of its ``and``/``or``/``not`` tree, is wrapped (on a copy of the jinja2
   AST, found with ``jinja2.visitor.NodeVisitor``) in a call that records its truth value and the
   message the outermost enclosing loop over the conversation is on. Every prefix of every probe
   conversation is rendered, with and without the generation prompt.
2. **Compare.** For an assistant message at index j, the value a test has when that message ends
   the conversation (``render(M[:j+1])``) is compared with its values in every render where later
   messages follow (or a generation prompt is asked for after it), where it runs in both. A test
   whose values differ depends on history.
3. **Rewrite.** Top down in each test's ``and``/``or``/``not`` tree, the largest such expression
   that is evaluated only while the loops are on an assistant message, and that has one value in
   every render where its message is last, is replaced by that value (``true``/``false``): the
   turn then renders as when it is last. An expression that takes both values when its message is
   last, or that is also evaluated for other roles, is not rewritten (its operands are tried) and
   is reported. The analysis runs again on the result until nothing differs (at most
   ``MAX_ROUNDS`` times).
4. **Prove SPEC §8 on the probes** (:func:`prove`): (a) V writes each assistant turn's output (G of
   rule 2) exactly as T writes it when the conversation ends with that turn; (b) in V's render of
   every longer prefix, that turn is prefix-preserving; (c) a conversation whose only assistant
   message (if any) is its last renders byte-identically under V and T, with and without the
   generation prompt.
5. **Patch V** with the ordinary patcher and verifier; no turn of it may be rewritten.

Later turns in V see history that T drops (earlier reasoning, for example): V is for training only,
and inference keeps T.

Example:
    >>> variant = keep_history_variant(open("Qwen3.jinja").read())  # doctest: +SKIP
    >>> [(r.line, r.expression, r.value) for r in variant.rewrites]  # doctest: +SKIP
    [(43, 'loop.index0 > ns.last_query_index', True), (44, 'loop.last or (...)', True)]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import jinja2
from jinja2 import nodes
from jinja2.visitor import NodeVisitor

from templatefix import environment as hf_environment
from templatefix.errors import RenderLimitExceeded
from templatefix.jinja.guard import count_output, guard
from templatefix.jinja.markers import has_markers
from templatefix.patch.result import PatchResult, unified_diff
from templatefix.patch.strip import strip_generation_markers
from templatefix.policy import Policy
from templatefix.render import environment, render, template_arguments
from templatefix.source import Edit, TemplateSource

if TYPE_CHECKING:
    from templatefix.conversation import Probe

#: The name the recording call gets inside the instrumented template.
RECORDER = "templatefix_history_test"
#: Analysis rounds: a rewrite can expose a test that only ran when the turn was not last.
MAX_ROUNDS = 3
#: How many proof failures are kept (each names the probe and the turn).
MAX_FAILURES = 20


@dataclass(frozen=True)
class Rewrite:
    """One test expression of T replaced by the value it has when its turn is last.

    Attributes:
        line: the line of the expression in the template it was found in (T for the first round).
        expression: the expression's source text.
        value: what it is replaced by (``True`` -> ``true``).
        start / end: its character range in that template.
    """

    line: int
    expression: str
    value: bool
    start: int
    end: int

    def describe(self) -> str:
        return f"line {self.line}: `{self.expression}` -> `{'true' if self.value else 'false'}`"

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "expression": self.expression, "value": self.value}


@dataclass
class Variant:
    """The keep-history variant of a template (unmarked) and how it was made.

    Attributes:
        original: T without generation markers.
        template: V (equal to ``original`` when no test depends on history).
        rewrites: every rewritten test, in the order found.
        problems: tests that depend on history but could not be rewritten, with the reason.
    """

    original: str
    template: str
    rewrites: list[Rewrite] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.template != self.original


@dataclass
class Proof:
    """SPEC §8 (a)–(c) checked on probe conversations.

    Attributes:
        probes: probes the original accepts (checked).
        turns: assistant turns checked for (a) and (b).
        mismatched: of those, turns whose render does not start with the generation prompt even
            when last (rule 2's mismatch); their output is delimited by the prompt render without
            the generation prompt.
        self_rewritten: of those, turns whose last render in the original extends neither prompt
            render (the original rewrites an earlier message of the same conversation once this
            message ends it); the variant's output must be how the original's render ends.
        extended: (turn, longer prefix) pairs checked for (b).
        single: renders compared for (c).
        failures: what does not hold, one line each (at most ``MAX_FAILURES``).
    """

    probes: int = 0
    turns: int = 0
    mismatched: int = 0
    self_rewritten: int = 0
    extended: int = 0
    single: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return self.turns > 0 and not self.failures

    def fail(self, line: str) -> None:
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(line)

    def summary(self) -> str:
        verdict = "holds" if self.holds else "does NOT hold"
        return (
            f"SPEC §8 {verdict} on {self.probes} probes: (a)+(b) {self.turns} assistant turns "
            f"({self.mismatched} with a mismatching generation prompt, {self.self_rewritten} where the "
            f"original rewrites an earlier message of the same conversation), {self.extended} later renders; "
            f"(c) {self.single} renders without an earlier assistant turn"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "holds": self.holds,
            "probes": self.probes,
            "turns": self.turns,
            "mismatched": self.mismatched,
            "self_rewritten": self.self_rewritten,
            "extended": self.extended,
            "single": self.single,
            "failures": list(self.failures),
        }


# ---- 1. find the tests -------------------------------------------------------------------------


@dataclass
class _Test:
    """One wrapped test expression: where it is and its operands in the and/or/not tree."""

    node: nodes.Node
    start: int
    end: int
    line: int
    text: str
    children: list[int] = field(default_factory=list)


class _TestFinder(NodeVisitor):
    """Collects every ``if``/``elif``/conditional-expression test and its boolean operands outside
    macros, with the names the enclosing ``for`` loops bind (outermost first) at each."""

    def __init__(self, source: TemplateSource) -> None:
        self.source = source
        self.tests: list[_Test] = []
        self.roots: list[int] = []
        self.targets: dict[int, tuple[str, ...]] = {}
        self._loops: list[tuple[str, ...]] = []

    def visit_For(self, node: nodes.For) -> None:
        self.visit(node.iter)
        target = node.target
        names = (
            (target.name,)
            if isinstance(target, nodes.Name)
            else tuple(n.name for n in target.find_all(nodes.Name))
        )
        self._loops.append(names)
        self.visit(node.target)
        if node.test is not None:
            self.visit(node.test)
        for child in node.body:
            self.visit(child)
        self._loops.pop()
        for child in node.else_:
            self.visit(child)

    def visit_Macro(self, node: nodes.Macro) -> None:
        """A macro can be called for any message, and sees none of the caller's loops: the message
        a test in it is about is unknown, so none is a candidate."""

    visit_CallBlock = visit_Macro

    def visit_If(self, node: nodes.If) -> None:
        self.roots.append(self._add(node.test))
        self.visit(node.test)
        for child in itertools.chain(node.body, node.elif_, node.else_):
            self.visit(child)

    def visit_CondExpr(self, node: nodes.CondExpr) -> None:
        if node.test is not None:
            self.roots.append(self._add(node.test))
        self.generic_visit(node)

    def _add(self, node: nodes.Node) -> int:
        span = self.source.spans.get(node)
        start, end = span if span else (0, 0)
        index = len(self.tests)
        test = _Test(node, start, end, self.source.line_of(start), self.source.text[start:end])
        self.tests.append(test)
        # Outermost first: the loop over the conversation, not a scan of other messages inside it.
        self.targets[index] = tuple(name for names in self._loops for name in names)
        if isinstance(node, (nodes.And, nodes.Or)):
            test.children = [self._add(node.left), self._add(node.right)]
        elif isinstance(node, nodes.Not):
            test.children = [self._add(node.node)]
        return index


_N = TypeVar("_N", bound=nodes.Node)


def _wrap(finder: _TestFinder) -> None:
    """Replace each found test in its parent by ``RECORDER(id, test, (loop targets...))``."""
    wrapped = {id(test.node): index for index, test in enumerate(finder.tests)}

    def call(node: _N) -> _N | nodes.Call:
        index = wrapped.get(id(node))
        if index is None:
            return node
        targets = nodes.Tuple([nodes.Name(name, "load") for name in finder.targets[index]], "load")
        new = nodes.Call(nodes.Name(RECORDER, "load"), [nodes.Const(index), node, targets], [], None, None)
        new.set_lineno(node.lineno)
        return new

    # Children first, so that an operand is wrapped inside its wrapped parent.
    for test in reversed(finder.tests):
        node = test.node
        if isinstance(node, (nodes.And, nodes.Or)):
            node.left, node.right = call(node.left), call(node.right)
        elif isinstance(node, nodes.Not):
            node.node = call(node.node)
    for ast_node in finder.source.ast.find_all((nodes.If, nodes.CondExpr)):
        if isinstance(ast_node, (nodes.If, nodes.CondExpr)) and ast_node.test is not None:
            ast_node.test = call(ast_node.test)


class _Recorder:
    """The recording call: remembers (test, message index, truth value) for the current render."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.records: list[tuple[int, int | None, bool | None]] = []

    def __call__(self, index: int, value: Any, targets: Sequence[Any]) -> Any:
        position = None
        for target in targets:
            position = next((i for i, m in enumerate(self.messages) if m is target), None)
            if position is not None:
                break
        try:
            truth: bool | None = bool(value)
        except Exception:  # noqa: BLE001 - an undefined value that refuses: no record of its truth
            truth = None
        self.records.append((index, position, truth))
        return value


def _render_cases(probes: Sequence[Probe]) -> list[tuple[int, int, bool]]:
    """(probe, prefix length, add_generation_prompt) for every non-empty prefix of every probe."""
    return [
        (p, k, agp) for p, probe in enumerate(probes) for k in range(1, len(probe.messages) + 1)
        for agp in (False, True)
    ]  # fmt: skip


def _split_kwargs(probe: Any, special_tokens: Mapping[str, Any] | None) -> tuple[Any, Any, dict[str, Any]]:
    kwargs = probe.render_kwargs()
    tools = kwargs.pop("tools", None)
    documents = kwargs.pop("documents", None)
    return tools, documents, template_arguments(special_tokens, **kwargs)


def _analyse(
    template: str, probes: Sequence[Probe], special_tokens: Mapping[str, Any] | None
) -> tuple[list[Rewrite], list[str]]:
    """One round: the tests of ``template`` that depend on history, as rewrites and problems."""
    source = TemplateSource.parse(template)
    finder = _TestFinder(source)
    finder.visit(source.ast)
    if not finder.tests:
        return [], []
    _wrap(finder)
    recorder = _Recorder()
    try:
        with guard():
            compiled = environment().from_string(source.ast, globals={RECORDER: recorder})
    except jinja2.TemplateError as error:  # never expected: the instrumented copy is plain Jinja
        return [], [f"the tests could not be instrumented ({type(error).__name__}: {error})"]
    # records[(probe, k, agp)] -> {(test, message index): [values]}
    records: dict[tuple[int, int, bool], dict[tuple[int, int | None], list[bool | None]]] = {}
    roles: dict[tuple[int, int], Any] = {}
    for case in _render_cases(probes):
        p, k, agp = case
        probe = probes[p]
        tools, documents, arguments = _split_kwargs(probe, special_tokens)
        recorder.records = []
        try:
            inputs = hf_environment.prepare_inputs(probe.conversation()[:k], tools, documents, arguments)
            recorder.messages = inputs.messages
            with guard():
                for block in compiled.generate(**inputs.variables(agp)):
                    count_output(len(block))
        except RenderLimitExceeded:
            raise
        except Exception:  # noqa: BLE001 - the template rejects this prefix: nothing to compare
            continue
        by_key: dict[tuple[int, int | None], list[bool | None]] = {}
        for index, position, truth in recorder.records:
            by_key.setdefault((index, position), []).append(truth)
        records[case] = by_key
        for position, message in enumerate(inputs.messages):
            roles[(p, position)] = message.get("role") if isinstance(message, Mapping) else None

    last_values: dict[int, set[bool | None]] = {}
    differs: set[int] = set()
    other_roles: set[int] = set()
    for (p, _k, _agp), by_key in records.items():
        for index, position in by_key:
            if position is None or roles.get((p, position)) != "assistant":
                other_roles.add(index)
    for (p, k, agp), by_key in records.items():
        if agp:
            continue
        j = k - 1
        if roles.get((p, j)) != "assistant":
            continue
        for index in range(len(finder.tests)):
            at_last = by_key.get((index, j), [])
            last_values.setdefault(index, set()).update(at_last)
            for later_k in range(k, len(probes[p].messages) + 1):
                for later_agp in (False, True):
                    if (later_k, later_agp) == (k, False):
                        continue
                    later = records.get((p, later_k, later_agp))
                    values = later.get((index, j), []) if later is not None else []
                    # Whether a test runs at all is decided by the tests around it (an enclosing
                    # branch, the left operand of ``and``): only values it took in both renders count.
                    if at_last and values and values != at_last:
                        differs.add(index)

    rewrites: list[Rewrite] = []
    problems: list[str] = []

    def decide(index: int) -> None:
        test = finder.tests[index]
        if index not in differs or isinstance(test.node, nodes.Const):
            return  # a constant differs only by how often it runs (a loop over later messages)
        values = last_values.get(index, set())
        if index not in other_roles and len(values) == 1 and None not in values:
            (value,) = values
            rewrites.append(Rewrite(test.line, test.text, bool(value), test.start, test.end))
            return
        if test.children:
            for child in test.children:
                decide(child)
            return
        if index in other_roles:
            why = "is also evaluated for messages of other roles or outside the message loop"
        elif not values:
            why = "is never evaluated when its turn is the last message"
        else:
            why = "takes both values when its turn is the last message"
        problems.append(f"line {test.line}: `{test.text}` depends on later messages but {why}")

    for root in finder.roots:
        decide(root)
    return rewrites, problems


def keep_history_variant(
    template: str,
    probes: Sequence[Probe] | None = None,
    special_tokens: Mapping[str, Any] | None = None,
) -> Variant:
    """The keep-history variant of ``template`` (generation markers removed first).

    Args:
        template: the chat template T.
        probes: the conversations to learn from (default: T's probe battery).
        special_tokens: values for ``bos_token`` etc.

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.
        RenderLimitExceeded: a render went past its bound.
    """
    from templatefix.probes import probe_battery

    original = strip_generation_markers(template) if has_markers(template) else template
    probe_list = list(probes) if probes is not None else probe_battery(original)
    current = original
    rewrites: list[Rewrite] = []
    problems: list[str] = []
    for _ in range(MAX_ROUNDS):
        found, problems = _analyse(current, probe_list, special_tokens)
        if not found:
            break
        rewrites.extend(found)
        source = TemplateSource.parse(current)
        current = source.apply(Edit(r.start, r.end, "true" if r.value else "false") for r in found)
    return Variant(original, current, rewrites, problems)


# ---- 4. prove SPEC §8 --------------------------------------------------------------------------


def prove(
    original: str,
    variant: str,
    probes: Sequence[Probe],
    special_tokens: Mapping[str, Any] | None = None,
) -> Proof:
    """Check SPEC §8 (a)–(c) for ``variant`` against ``original`` on ``probes`` (both unmarked).

    Raises:
        RenderLimitExceeded: a render went past its bound.
    """
    proof = Proof()
    for probe in probes:
        _prove_probe(original, variant, probe, special_tokens, proof)
    return proof


def _prove_probe(
    original: str, variant: str, probe: Any, special_tokens: Mapping[str, Any] | None, proof: Proof
) -> None:
    messages = probe.conversation()
    kwargs = probe.render_kwargs()
    cache: dict[tuple[str, int, bool], str | None] = {}

    def rendered(which: str, k: int, agp: bool) -> str | None:
        key = (which, k, agp)
        if key not in cache:
            try:
                cache[key] = render(
                    original if which == "T" else variant,
                    messages[:k],
                    add_generation_prompt=agp,
                    special_tokens=special_tokens,
                    **kwargs,
                )
            except RenderLimitExceeded:
                raise
            except Exception:  # noqa: BLE001 - a rejected conversation renders nothing
                cache[key] = None
        return cache[key]

    n = len(messages)
    if rendered("T", n, False) is None:
        return  # the original rejects the probe: skipped, as everywhere
    proof.probes += 1
    name = probe.name
    roles = [m.get("role") if isinstance(m, Mapping) else None for m in messages]
    # (c) no earlier assistant turn: identical renders, errors included.
    for k in range(1, n + 1):
        for agp in (False, True):
            # With the generation prompt every assistant message of M[:k] is an earlier turn.
            if "assistant" in roles[: k if agp else k - 1]:
                continue
            proof.single += 1
            if rendered("T", k, agp) != rendered("V", k, agp):
                proof.fail(
                    f"{name}: (c) the first {k} message(s), add_generation_prompt={agp}, render "
                    "differently under the variant although no earlier assistant turn exists"
                )
    for j, role in enumerate(roles):
        if role != "assistant":
            continue
        full_t = rendered("T", j + 1, False)
        prompt_t = rendered("T", j, True)
        if full_t is None or prompt_t is None:
            continue
        agp = True
        prompt_v = rendered("V", j, True)
        full_v = rendered("V", j + 1, False)
        if not full_t.startswith(prompt_t):
            agp = False  # rule 2's mismatch: delimit the turn by the render without the prompt
            prompt_t = rendered("T", j, False)
            prompt_v = rendered("V", j, False)
            if prompt_t is None or not full_t.startswith(prompt_t):
                # The original rewrites an earlier message of this very conversation once this turn
                # ends it (an assistant message of the same turn, before a tool result): its G is
                # undefined. The variant's output must still be what the original writes last.
                proof.turns += 1
                proof.self_rewritten += 1
                if full_v is not None and full_v == full_t:
                    _check_later(proof, name, j, n, full_v, rendered)  # (a): the same render
                elif prompt_v is None or full_v is None or not full_v.startswith(prompt_v):
                    proof.fail(f"{name}: message {j}: (a) the variant's render of the turn extends no prompt")
                elif not full_t.endswith(full_v[len(prompt_v) :]):
                    proof.fail(
                        f"{name}: message {j}: (a) the variant does not end this turn as the original "
                        "does when it is last"
                    )
                else:
                    _check_later(proof, name, j, n, full_v, rendered)
                continue
            proof.mismatched += 1
        proof.turns += 1
        output = full_t[len(prompt_t) :]
        if prompt_v is None or full_v is None or full_v != prompt_v + output:
            proof.fail(
                f"{name}: message {j}: (a) the variant does not write this turn as the original writes it "
                "when it is last"
            )
            continue
        _check_later(proof, name, j, n, full_v, rendered)


def _check_later(proof: Proof, name: str, j: int, n: int, full_v: str, rendered: Any) -> None:
    """(b): the variant's render of every longer prefix continues its render ending at turn j."""
    for later in range(j + 2, n + 1):
        later_v = rendered("V", later, False)
        if later_v is None:
            continue
        proof.extended += 1
        if not later_v.startswith(full_v):
            proof.fail(
                f"{name}: message {j}: (b) not prefix-preserving in the variant's render of the first "
                f"{later} messages"
            )
            return


# ---- 5. the result: the variant, patched --------------------------------------------------------


@dataclass
class KeepHistoryResult(PatchResult):
    """``patch_template(..., keep_history=True)``: the keep-history variant V, patched and proven.

    ``patched`` is V with generation markers; ``report`` is the verifier's report on it (rule 1
    against V); ``diff`` is from the input template to the patched V. ``verified`` holds only when
    the patch of V is verified, SPEC §8 holds on the probes and no turn of V is rewritten.

    Attributes:
        variant: V without markers (equal to T unmarked when no test depends on history).
        rewrites: the tests rewritten (line numbers in T).
        problems: tests that depend on history but could not be rewritten (only a reason for
            ``verified`` to be false when the proof fails too).
        proof: SPEC §8 (a)–(c) on T's probes.
        rewritten_turns: turns of V the verifier still finds rewritten (must be 0).
    """

    variant: str = ""
    rewrites: list[Rewrite] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    proof: Proof = field(default_factory=Proof)
    rewritten_turns: int = 0

    @property
    def rewrites_history(self) -> bool:
        """Whether the variant differs from the template (some test was rewritten)."""
        return bool(self.rewrites)

    def describe(self) -> list[str]:
        """What the variant changes and why it can be trusted, one line each."""
        lines = []
        if self.rewrites:
            lines.append(
                f"keep-history variant: {len(self.rewrites)} test(s) rewritten to the value they have "
                "when the turn is last (for training only: later turns see history the original drops; "
                "inference keeps the original):"
            )
            lines.extend(f"  {rewrite.describe()}" for rewrite in self.rewrites)
        else:
            lines.append("keep-history variant: no test depends on later messages; it is the template")
        proven = " (the proof holds without rewriting it)" if self.proof.holds else ""
        lines.extend(f"  not rewritten{proven}: {problem}" for problem in self.problems)
        lines.append(f"  {self.proof.summary()}")
        lines.extend(f"  - {failure}" for failure in self.proof.failures)
        return lines

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data["keep_history"] = {
            "rewrites": [rewrite.to_json() for rewrite in self.rewrites],
            "problems": list(self.problems),
            "proof": self.proof.to_json(),
            "rewritten_turns": self.rewritten_turns,
            "variant_changed": self.rewrites_history,
        }
        return data


def patch_keep_history(
    template: str,
    patcher: Callable[..., PatchResult],
    *,
    policy: Policy | None = None,
    probes: Sequence[Probe] | None = None,
    special_tokens: Mapping[str, Any] | None = None,
    **policy_kwargs: Any,
) -> KeepHistoryResult:
    """Build the keep-history variant of ``template``, prove SPEC §8 and patch it.

    ``probes`` (default: T's battery) are used to find the tests and for the proof; the variant
    is then patched by ``patcher`` (``templatefix.patch_template``, which calls this function
    for ``keep_history=True``) and verified on its own battery, as any template is.

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.
        RenderLimitExceeded: a render went past its bound.
    """
    from templatefix.probes import probe_battery

    policy = policy or Policy.from_kwargs(**policy_kwargs)
    TemplateSource.parse(template)
    original = strip_generation_markers(template) if has_markers(template) else template
    probe_list = list(probes) if probes is not None else probe_battery(original)
    variant = keep_history_variant(original, probe_list, special_tokens)
    proof = prove(original, variant.template, probe_list, special_tokens)
    patch = patcher(variant.template, policy=policy, probes=probes, special_tokens=special_tokens)
    rewritten = 0
    if patch.report is not None:
        rewritten = sum(
            1 for result in patch.report.probes for turn in result.turns if turn.kind == "rewritten"
        )
    reasons = list(patch.reasons)
    if not proof.holds:
        reasons.extend(f"keep-history: not rewritten: {problem}" for problem in variant.problems)
        reasons.append(f"keep-history: no variant could be proven: {proof.summary()}")
        reasons.extend(f"keep-history: {failure}" for failure in proof.failures)
    if rewritten:
        reasons.append(
            f"keep-history: {rewritten} turn(s) of the variant are still rewritten in history: the "
            "template changes earlier turns by means other than a test of what follows"
        )
    proven = proof.holds and not rewritten
    return KeepHistoryResult(
        original=template,
        patched=patch.patched,
        verified=bool(patch.verified and proven),
        report=patch.report,
        reasons=reasons,
        diff=unified_diff(template, patch.patched),
        changed=patch.patched != template,
        policy=policy,
        flags=list(patch.flags),
        passed=bool(patch.passed and proven),
        variant=variant.template,
        rewrites=variant.rewrites,
        problems=variant.problems,
        proof=proof,
        rewritten_turns=rewritten,
    )


__all__ = [
    "KeepHistoryResult",
    "Proof",
    "Rewrite",
    "Variant",
    "keep_history_variant",
    "patch_keep_history",
    "prove",
]
