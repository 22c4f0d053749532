"""Which outputs of a template the probe conversations reach, and a search that reaches more.

SPEC §4: a patch is verified only if the probes reached every output of the template that writes
text while rendering a conversation. :func:`measure` renders each probe with the coverage hooks
of ``templatefix.analysis`` (its full render, and its last prompt render with
``add_generation_prompt=True``) and lists every output with its status:

- ``reached``: some probe render wrote text through it;
- ``unreached``: no probe did. This is unverified code: the patch may be wrong there;
- ``refusal``: it never writes text into a render: a ``raise_exception(...)`` call, or an output
  in a block that always calls ``raise_exception`` (the render fails there, whatever is written);
- ``uncalled-macro``: it is in a macro the template never calls;
- ``empty-conversation``: only a render of an empty ``messages`` list writes it (no turn to
  train, so no conversation reaches it);
- ``dead-branch``: it is in an ``{% if %}`` whose test is false in every render, proven from the
  AST (``templatefix.unreachable``: a flag set inside a ``for`` loop is not seen after it, a value
  set on every path before the test), with the reason.

Only ``unreached`` counts against coverage; the other classes are proven from the AST or from a
render, never assumed, and are listed too.

:func:`search` extends a probe list: it renders candidate conversations one by one (systematic
ones from ``templatefix.derive`` and, in turn, mutations of those that reached something new)
and keeps those that reach an output or a branch outcome (an ``{% if %}`` chain's branch, a
conditional expression's side) no kept probe reached, until every output is reached,
:data:`PATIENCE` candidates in a row bring nothing new, or the budget runs out:
:data:`SEARCH_CANDIDATES` candidates, :data:`SEARCH_WORK` units of work (outputs written and
tests evaluated while rendering: render time follows it within a factor of two, and unlike time
it is the same on every machine, so the search is deterministic), :data:`SEARCH_KEEP` probes
kept for branch outcomes alone. :data:`SEARCH_SECONDS` is a safety net only a machine many
times slower than usual reaches.

Example:
    >>> from templatefix.shapes import make_probe
    >>> template = ("{% for m in messages %}{% if m.name is defined %}[{{ m.name }}]{% endif %}"
    ...             "{{ m.content }}{% endfor %}")
    >>> coverage = measure(template, [make_probe("single_turn")])
    >>> [(o.line, o.expression, o.status) for o in coverage.unreached]
    [(1, '"["', 'unreached'), (1, '{{ m.name }}', 'unreached'), (1, '"]"', 'unreached')]
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from jinja2 import nodes

from templatefix import conditions
from templatefix.analysis.instrument import Instrumented
from templatefix.analysis.regions import instrumented_for
from templatefix.analysis.sites import OutputSite
from templatefix.errors import RenderError, RenderLimitExceeded
from templatefix.source import TemplateSource
from templatefix.template import ChatTemplate
from templatefix.unreachable import dead_reasons, output_nodes

if TYPE_CHECKING:
    from templatefix.conversation import Probe

OutputStatus = Literal[
    "reached", "unreached", "refusal", "uncalled-macro", "empty-conversation", "dead-branch", "unsatisfiable"
]

#: Search budget: candidates rendered, work (outputs written and tests evaluated), probes kept,
#: and a wall-clock safety net. The defaults keep patch plus full verification within the cost goal
#: (``benchmarks/bench_patch.py``).
SEARCH_CANDIDATES = 400
SEARCH_WORK = 60_000
SEARCH_KEEP = 8
#: At most this many probes kept for reaching a new output (each is verified: it costs).
SEARCH_KEEP_OUTPUTS = 24
SEARCH_SECONDS = 15.0
#: The search stops after this many candidates in a row that reach nothing new.
PATIENCE = 40

Feature = tuple[str, int, int]  # ("out", site, 0) or ("branch", site, outcome)


@dataclass(frozen=True)
class OutputCoverage:
    """One output of the template and whether the probes reached it.

    Attributes:
        line: its line in the template.
        expression: ``{{ expression }}`` as written, or the literal text (quoted, shortened).
        status: see the module docstring.
        macro: the macro it is in, if any.
    """

    line: int
    expression: str
    status: OutputStatus
    macro: str | None = None
    condition: str | None = None

    def describe(self) -> str:
        where = f" in macro {self.macro}" if self.macro else ""
        needs = f" (needs: {self.condition})" if self.condition else ""
        return f"line {self.line}{where}: {self.expression}{needs}"

    def to_json(self) -> dict[str, Any]:
        found = {"line": self.line, "expression": self.expression, "status": self.status, "macro": self.macro}
        if self.condition is not None:
            found["condition"] = self.condition
        return found


@dataclass
class Coverage:
    """Every output of a template that can write text, and which the probes reached.

    Attributes:
        outputs: one entry per output, in source order.
        branch_outcomes: branch outcomes the probes took, out of ``branch_outcomes_total``
            (informational: some outcomes no conversation can take).
    """

    outputs: list[OutputCoverage] = field(default_factory=list)
    branch_outcomes: int = 0
    branch_outcomes_total: int = 0

    @property
    def reached(self) -> list[OutputCoverage]:
        return [o for o in self.outputs if o.status == "reached"]

    @property
    def unreached(self) -> list[OutputCoverage]:
        """The outputs no probe reached: unverified code."""
        return [o for o in self.outputs if o.status == "unreached"]

    @property
    def excluded(self) -> list[OutputCoverage]:
        """Outputs that write no text into a conversation's render (see the module docstring)."""
        return [o for o in self.outputs if o.status not in ("reached", "unreached")]

    @property
    def complete(self) -> bool:
        """Whether every output that writes text was reached."""
        return not self.unreached

    @property
    def fraction(self) -> float:
        """Reached outputs over outputs that write text (1.0 when there are none)."""
        total = len(self.reached) + len(self.unreached)
        return len(self.reached) / total if total else 1.0

    def summary(self) -> str:
        total = len(self.reached) + len(self.unreached)
        return f"{len(self.reached)}/{total} outputs reached" + (
            f", {len(self.unreached)} unreached (unverified code)" if self.unreached else ""
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "fraction": round(self.fraction, 4),
            "reached": len(self.reached),
            "unreached": [o.to_json() for o in self.unreached],
            "excluded": [o.to_json() for o in self.excluded],
            "branch_outcomes": self.branch_outcomes,
            "branch_outcomes_total": self.branch_outcomes_total,
        }


# --- measuring ---------------------------------------------------------------------------------


def _instrumented(template: ChatTemplate) -> Instrumented:
    return instrumented_for(template)


def probe_features(
    template: ChatTemplate | str, probe: Any, special_tokens: Mapping[str, Any] | None = None
) -> frozenset[Feature] | None:
    """What ``probe`` reaches in ``template``: outputs that wrote text, branch outcomes taken.

    Renders the full conversation and, when it has an assistant turn after the first message,
    the prompt before its last assistant turn with ``add_generation_prompt=True``. ``None`` when
    the template rejects the conversation. Cached.

    Raises:
        RenderLimitExceeded: a render hit a bound.
    """
    return _probe_run(ChatTemplate.of(template), probe, special_tokens)[0]


#: What each probe reached, by template text and probe (least recently used first).
_FEATURES: OrderedDict[tuple[str, str], tuple[frozenset[Feature] | None, int]] = OrderedDict()
_FEATURES_SIZE = 4096


def _probe_run(
    template: ChatTemplate, probe: Any, special_tokens: Mapping[str, Any] | None = None
) -> tuple[frozenset[Feature] | None, int]:
    """The probe's features and the work its renders took (outputs written and tests evaluated:
    the cost of measuring it, proportional to its render time within a factor of two). Cached."""
    key = json.dumps(
        [list(probe.messages), dict(probe.kwargs), dict(special_tokens or {})], sort_keys=True, default=str
    )
    cache_key = (template.text, key)
    found = _FEATURES.get(cache_key)
    if found is None:
        found = _features(template, key)
        _FEATURES[cache_key] = found
        while len(_FEATURES) > _FEATURES_SIZE:
            _FEATURES.popitem(last=False)
    _FEATURES.move_to_end(cache_key)
    return found


def _features(template: ChatTemplate, key: str) -> tuple[frozenset[Feature] | None, int]:
    messages, kwargs, special_tokens = json.loads(key)
    instrumented = _instrumented(template)
    renders = [(messages, False)]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=0)
    if last > 0:
        renders.append((messages[:last], True))
    features: set[Feature] = set()
    work = 0
    for conversation, prompt in renders:
        try:
            traced = instrumented.cover(
                conversation, add_generation_prompt=prompt, special_tokens=special_tokens or None, **kwargs
            )
        except RenderLimitExceeded:
            raise
        except RenderError:
            return None, work
        work += traced.events
        features.update(("out", site, 0) for site in traced.covered)
        features.update(("branch", site, outcome) for site, outcome in traced.outcomes)
    return frozenset(features), work


def measure(
    template: ChatTemplate | str, probes: Iterable[Any], special_tokens: Mapping[str, Any] | None = None
) -> Coverage:
    """The coverage of ``template``'s outputs by ``probes`` (see the module docstring).

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.
        RenderLimitExceeded: a render hit a bound.
    """
    template = ChatTemplate.of(template)
    instrumented = _instrumented(template)
    source = instrumented.source
    features: set[Feature] = set()
    for probe in probes:
        features |= probe_features(template, probe, special_tokens) or frozenset()
    covered = {site for kind, site, _ in features if kind == "out"}
    not_text = _never_writes(template, instrumented)
    uncovered = [
        site.id for site in instrumented.sites.outputs if site.id not in covered and site.id not in not_text
    ]
    empty = _reached_by_empty_conversation(instrumented, special_tokens) if uncovered else set()
    outputs = []
    for site in instrumented.sites.outputs:
        if site.id in covered:
            status: OutputStatus = "reached"
        elif site.id in not_text:
            status = not_text[site.id]
            if status == "unsatisfiable":
                condition = unsatisfiable(template, site.id)
            elif status == "dead-branch":
                condition = dead_reasons(source.ast).get(id(site.node))
        elif site.id in empty:
            status = "empty-conversation"
        else:
            status = "unreached"
        if status == "unreached":
            condition = _condition(template, site.id)
        elif status not in ("unsatisfiable", "dead-branch"):
            condition = None
        outputs.append(OutputCoverage(site.line, _expression(source, site), status, site.macro, condition))
    total = sum(branch.count + 1 for branch in instrumented.sites.branches)
    taken = sum(1 for kind, _, _ in features if kind == "branch")
    return Coverage(outputs, taken, total)


def unsatisfiable(template: ChatTemplate, site_id: int) -> str | None:
    """Why no render writes output ``site_id`` (``templatefix.conditions.unsatisfiable``), or ``None``."""
    return conditions.unsatisfiable(template, site_id)


def _condition(template: ChatTemplate, site_id: int) -> str | None:
    """The path condition no probe satisfied (``templatefix.conditions.explain``)."""
    return conditions.explain(template, site_id) or None


def _reached_by_empty_conversation(
    instrumented: Instrumented, special_tokens: Mapping[str, Any] | None
) -> set[int]:
    reached: set[int] = set()
    for prompt in (False, True):
        try:
            traced = instrumented.cover([], add_generation_prompt=prompt, special_tokens=special_tokens)
            reached |= traced.covered
        except RenderLimitExceeded:
            raise
        except RenderError:
            continue
    return reached


def _never_writes(template: ChatTemplate, instrumented: Instrumented) -> dict[int, OutputStatus]:
    """Outputs that cannot write text into a render: refusals, and outputs in uncalled macros.

    ``instrumented`` is ``template``'s instrumented form; its tree is the one read here.
    """
    tree = instrumented.source.ast
    sites = instrumented.sites
    result: dict[int, OutputStatus] = {}
    called = {node.node.name for node in tree.find_all(nodes.Call) if isinstance(node.node, nodes.Name)}
    called |= {node.name for node in tree.find_all(nodes.Name) if node.ctx == "load"}  # passed around
    for site in sites.outputs:
        if site.raises:
            result[site.id] = "refusal"
        elif site.macro is not None and site.macro not in called:
            result[site.id] = "uncalled-macro"
        elif _is_empty_constant(site.node):
            result[site.id] = "refusal"
    for node in dead_reasons(tree):
        site_id = sites.output_ids.get(node)
        if site_id is not None and site_id not in result:
            result[site_id] = "dead-branch"
    for body in _bodies(tree):
        if any(_refuses(statement) for statement in body):
            for child in output_nodes(body):
                site_id = sites.output_ids.get(id(child))
                if site_id is not None:
                    result[site_id] = "refusal"
    for site in sites.outputs:
        if site.id not in result and unsatisfiable(template, site.id):
            result[site.id] = "unsatisfiable"
    return result


def _guard_names(instrumented: Instrumented) -> dict[int, frozenset[str]]:
    """For each output, the names read by the ``if`` tests and conditions enclosing it."""
    found: dict[int, frozenset[str]] = {}

    def visit(node: nodes.Node, names: frozenset[str]) -> None:
        if isinstance(node, (nodes.If, nodes.CondExpr)):
            tested = names | {name.name for name in node.test.find_all(nodes.Name)}
            if isinstance(node.test, nodes.Name):
                tested |= {node.test.name}
            for child in node.iter_child_nodes():
                visit(child, names if child is node.test else tested)
            return
        site = instrumented.sites.output_ids.get(id(node))
        if site is not None:
            found[site] = names
        for child in node.iter_child_nodes():
            visit(child, names)

    visit(instrumented.source.ast, frozenset())
    return found


def _is_empty_constant(node: nodes.Node) -> bool:
    literal = isinstance(node, nodes.TemplateData)
    return isinstance(node, nodes.Const) and node.value in ("", None) and not literal


def _refuses(statement: nodes.Node) -> bool:
    """A statement that always calls ``raise_exception``: ``{{ raise_exception(...) }}``."""
    return isinstance(statement, nodes.Output) and any(
        isinstance(child, nodes.Call)
        and isinstance(child.node, nodes.Name)
        and child.node.name == "raise_exception"
        for child in statement.nodes
    )


def _bodies(node: nodes.Node) -> Iterable[list[nodes.Node]]:
    """Every statement list in the tree (template body, if/for/macro bodies, else branches)."""
    for name in ("body", "else_"):
        body = getattr(node, name, None)
        if isinstance(body, list):
            yield body
    for child in node.iter_child_nodes():
        yield from _bodies(child)


def _expression(source: TemplateSource, site: OutputSite) -> str:
    """How an output reads in the template: ``{{ expr }}`` or the quoted literal text."""
    if site.literal:
        text = cast(nodes.TemplateData, site.node).data  # a literal site is template text
        return json.dumps(text if len(text) <= 60 else text[:28] + "…" + text[-28:], ensure_ascii=False)
    span = source.spans.get(site.node)
    if span is None:
        return "{{ … }}"
    text = " ".join(source.text[span[0] : span[1]].split())
    return "{{ " + (text if len(text) <= 80 else text[:38] + "…" + text[-38:]) + " }}"


# --- searching ---------------------------------------------------------------------------------


def output_sites(template: ChatTemplate | str) -> int:
    """How many outputs ``template`` has (all of them, text-writing or not)."""
    return len(instrumented_for(template).sites.outputs)


def search(
    template: ChatTemplate | str,
    probes: Sequence[Probe],
    candidates: Iterable[Any],
    *,
    mutate: Callable[[Sequence[Any], random.Random, frozenset[str]], Any | None] | None = None,
    seed: int = 0,
    max_candidates: int = SEARCH_CANDIDATES,
    work: int = SEARCH_WORK,
    keep: int = SEARCH_KEEP,
    keep_outputs: int = SEARCH_KEEP_OUTPUTS,
    patience: int = PATIENCE,
    seconds: float = SEARCH_SECONDS,
    first: int = 0,
) -> list[Any]:
    """The candidates that reach an output or branch outcome ``probes`` and earlier keeps do not.

    With ``mutate``, every other candidate is a mutation of a probe that reached something new
    (``mutate`` picks among the latest three such candidates half the time, else among all of
    them and ``probes``; while the template has accepted nothing, among the latest rejected
    ones, since it may need several changes at once): changes stack on what already got deeper
    into the template. Candidates that reach only new branch outcomes are returned up to ``keep``
    of them, but all are mutated further; those that reach a new output are returned, up to
    ``keep_outputs`` of them. Candidates the template rejects, or whose render hits a bound
    (``templatefix.jinja``), are skipped. Stops when every output is reached, after
    ``patience`` candidates in a row with nothing new (not before the first ``first`` candidates
    of ``candidates`` are rendered), or when a budget runs out. Deterministic for a given ``seed``.

    Raises:
        RenderLimitExceeded: a render of one of ``probes`` hit a bound.
    """
    template = ChatTemplate.of(template)
    instrumented = _instrumented(template)
    not_text = set(_never_writes(template, instrumented))
    wanted = {site.id for site in instrumented.sites.outputs} - not_text
    seen: set[Feature] = set()
    for probe in probes:
        seen |= probe_features(template, probe) or frozenset()
    guards = _guard_names(instrumented)
    started = time.perf_counter()  # the budget is for the candidates; ``probes`` are measured anyway
    rng = random.Random(seed)
    stream: Iterator[Any] | None = iter(candidates)
    kept: list[Any] = []  # what the search returns
    parents: list[Any] = []  # every candidate that reached something new: mutated further
    rejected: list[Any] = []
    dry = spent = branch_only = output_keeps = streamed = 0
    for count in itertools.count():
        reached = {site for kind, site, _ in seen if kind == "out"}
        if (
            wanted <= reached
            or count >= max_candidates
            or (dry >= patience and (stream is None or streamed >= first))
        ):
            break
        if output_keeps >= keep_outputs:
            break
        if spent > work or time.perf_counter() - started > seconds:
            break
        candidate = None
        if mutate is not None and (stream is None or count % 2):
            pool = parents[-3:] if parents and rng.random() < 0.5 else [*probes, *parents]
            if not seen:  # the template accepted nothing yet: it may need several changes at once
                pool = rejected[-3:] or list(probes)
            # the names tested on the way to what is still unreached (``add_vision_id``…)
            names = frozenset().union(*(guards.get(site, frozenset()) for site in wanted - reached))
            candidate = mutate(pool, rng, names) if pool else None
            if candidate is None:
                dry += 1
                continue
        elif stream is not None:
            candidate = next(stream, None)
            streamed += 1
            if candidate is None:
                stream = None
                if mutate is None:
                    break
                continue
        else:
            break
        try:
            features, cost = _probe_run(template, candidate)
        except RenderLimitExceeded:
            continue  # a derived conversation that runs into a bound is dropped, never the patch
        spent += cost
        if features is None:
            rejected.append(candidate)
            continue  # rejected: costs little, and says nothing about what is left to reach
        if features <= seen:
            dry += 1
            continue
        new_output = any(kind == "out" for kind, _, _ in features - seen)
        seen |= features
        parents.append(candidate)
        if new_output or branch_only < keep:
            kept.append(candidate)
            branch_only += not new_output
            output_keeps += new_output
        dry = 0
    return kept


#: :func:`flag_cover`'s budget: probes kept, and candidates rendered.
FLAG_COVER_KEEP = 16
FLAG_COVER_TRIES = 48


def flag_cover(
    template: ChatTemplate | str,
    probes: Sequence[Probe],
    flags: Mapping[str, Sequence[Any]],
    *,
    keep: int = FLAG_COVER_KEEP,
    tries: int = FLAG_COVER_TRIES,
) -> list[Probe]:
    """Probes that reach an output under a flag value no probe reached it under.

    A flag value can change which part of an output is the answer (``<think></think>`` is the
    generation prompt's with thinking off and the answer's with it on), so each output is worth
    seeing under every value of every flag, not only reached once. A probe that passes no flag
    is offered with one flag value where some output it reaches was not yet reached under that
    value: one flag at a time, as the fixed battery's flag shapes (combinations of flags, such as
    two switches that contradict each other, are not what users train on). Offers go rarest
    output first (the fewest probes reach it), then in battery order; each is rendered and kept
    when it reaches an output under a value nothing reached it under yet. A flag left out counts
    as a value of its own. At most ``keep`` probes are kept and ``tries`` rendered; deterministic.

    Raises:
        RenderLimitExceeded: a render of one of ``probes`` hit a bound.
    """
    from templatefix.conversation import Probe

    template = ChatTemplate.of(template)
    if not flags:
        return []
    absent = object()

    def pairs(probe: Probe, outputs: set[int]) -> set[tuple[int, str, str]]:
        return {(site, flag, repr(probe.kwargs.get(flag, absent))) for flag in flags for site in outputs}

    def outputs_of(features: frozenset[Feature] | None) -> set[int]:
        return {site for kind, site, _ in features or () if kind == "out"}

    seen: set[tuple[int, str, str]] = set()
    reaching: list[tuple[Probe, set[int]]] = []
    reached_by: dict[int, int] = {}
    for probe in probes:
        outputs = outputs_of(probe_features(template, probe))
        if outputs:
            reaching.append((probe, outputs))
            seen |= pairs(probe, outputs)
            for site in outputs:
                reached_by[site] = reached_by.get(site, 0) + 1
    # the rarest outputs first: an output few probes reach is where a flag value is least likely
    # to have been seen (an output every probe writes, such as a user header, is seen anyway)
    offers: list[tuple[int, int, Probe, set[int], str, Any]] = []
    for order, (probe, outputs) in enumerate(reaching):
        if any(flag in probe.kwargs for flag in flags):
            continue  # one flag at a time: a value joins a probe that passes none
        for flag, values in flags.items():
            for value in values:
                missing = [site for site in outputs if (site, flag, repr(value)) not in seen]
                if missing:
                    rarest = min(reached_by[site] for site in missing)
                    offers.append((rarest, order, probe, outputs, flag, value))
    offers.sort(key=lambda offer: offer[:2])
    kept: list[Probe] = []
    for _, _, probe, outputs, flag, value in offers:
        if len(kept) >= keep or tries <= 0:
            break
        if all((site, flag, repr(value)) in seen for site in outputs):
            continue  # an earlier keep saw them
        name = f"{probe.name}[{flag}={value!r}]"
        candidate = Probe(name, probe.messages, {**probe.kwargs, flag: value})
        tries -= 1
        try:
            reached = outputs_of(_probe_run(template, candidate)[0])
        except RenderLimitExceeded:
            continue
        new = pairs(candidate, reached) - seen
        if new:
            seen |= new
            kept.append(candidate)
    return kept
