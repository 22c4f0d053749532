"""Constraint-directed reach: conversations built from the path condition of an unreached output.

The coverage search (``templatefix.coverage.search``) changes conversations blindly and keeps
what reaches something new; an output behind several specific tests (a ``builtin_tools``
argument *and* a tool call whose name is in it) is rarely hit that way. This module starts from
the *path condition* of each output (``templatefix.conditions.PathConditions``: the tests of the
enclosing branches and loops, through macro call sites and the assignments of local flags).

:func:`reach` then turns every test into changes that make it hold (an ``Atom`` and its
:func:`_options`): membership (``x in builtin_tools``: the same value put on both sides;
``name in tools|map(attribute=...)``), equality with literals, Jinja type tests (``is string``,
``is mapping``, ``is none``, ``is defined``…), substrings (``'</think>' in content``,
``startswith``, ``split``), lengths (``messages|length > 2``), truth, and any conjunction or
disjunction of these. It applies those changes to the probes that got furthest along the same
path (the base probes sharing the longest prefix of the condition), renders each candidate with
the coverage hooks and keeps the ones that reach a target: nothing is assumed, every probe is
rendered. The render decides; the condition only proposes.

Example:
    >>> from templatefix.shapes import make_probe
    >>> template = ("{% for m in messages %}{% if m.tool_calls and m.tool_calls[0].function.name"
    ...             " in builtin_tools %}<|python_tag|>{% endif %}{{ m.content }}{% endfor %}")
    >>> found = reach(template, [make_probe("tool_calls")])
    >>> [probe.kwargs["builtin_tools"] for probe in found]
    [['lookup_alpha101']]
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from jinja2 import nodes

from templatefix.changes import synthesize
from templatefix.conditions import _DEPTH, MAX_ALTERNATIVES, Atom, Condition, _constant_names, analysis
from templatefix.conversation import Probe, WordSource
from templatefix.coverage import _never_writes, _probe_run
from templatefix.errors import RenderLimitExceeded
from templatefix.flags import STANDARD_NAMES, template_reads
from templatefix.reads import ANY_VALUE, ELEMENT, Path, template_reads_of
from templatefix.template import ChatTemplate

#: Budget of :func:`reach`: candidates rendered and work units (outputs written and tests
#: evaluated, as counted by the coverage hooks) over all targets.
SOLVE_CANDIDATES = 200
SOLVE_WORK = 25_000
#: At most this many probes kept (each is verified: it costs).
SOLVE_KEEP = 12
#: Per target condition: base probes tried, and candidates built on each.
BASES = 4
COMBINATIONS = 24
PER_CONDITION = 60

#: Which messages a change to message fields touches: all (``None``), those of one role, or one
#: message (its index).
Scope = str | int | None
Change = Callable[..., bool]  # changes the state {"messages": [...], **kwargs} within a scope


# --- solving -----------------------------------------------------------------------------------


class _Solver:
    """Turns atoms into changes of a conversation (see :func:`reach`)."""

    def __init__(self, template: ChatTemplate) -> None:
        self.instrumented, self.conditions, self.resolve = analysis(template)
        roots = tuple(sorted(template_reads(template) - STANDARD_NAMES))
        self.reads = template_reads_of(template, roots)
        self.words = WordSource(start=9100)
        #: the conversations the changes will be applied to (``_paths`` ranks by them)
        self.states: list[dict[str, Any]] = []
        self._located: dict[Path, int] = {}
        self._made: dict[Path, Any] = {}
        self.constant_names = _constant_names(self.instrumented.source.ast)
        self.macros = {macro.name: macro for macro in self.instrumented.source.ast.find_all(nodes.Macro)}

    def on(self, bases: Sequence[Probe]) -> None:
        """Rank paths by the conversations ``bases``: a path whose container they hold first."""
        self.states = [{**dict(base.kwargs), "messages": list(base.messages)} for base in bases]
        self._located = {}

    def _in_bases(self, path: Path) -> int:
        """0 when some base holds a value at ``path``, 1 when one holds its container (so a
        change there can apply), 2 otherwise."""
        found = self._located.get(path)
        if found is None:
            pairs = [pair for state in self.states for pair in _locations(state, path, None)]
            found = 0 if any(_get(*pair) is not _MISSING for pair in pairs) else 1 if pairs else 2
            self._located[path] = found
        return found

    # -- conditions with local flags expanded ------------------------------------------------
    def expanded(self, condition: Condition, depth: int = 0) -> list[Condition]:
        """``condition`` as it is, then with each local flag replaced by the conditions of an
        assignment that sets it to the wanted constant (one alternative per such assignment)."""
        results: list[Condition] = [()]
        for atom in (part for whole in condition for part in _split(whole)):
            key = _flag_key(atom.node) if atom.kind == "test" else None
            alternatives: list[Condition] = [(atom,)]
            if key is not None and depth < _DEPTH:
                setters = [
                    alternative
                    for value, conditions in self.conditions.assignments(key)
                    if isinstance(value, nodes.Const) and bool(value.value) == atom.want
                    for alternative in conditions
                ]
                if setters:  # the flag as the probe has it first (set in an earlier iteration)
                    for setter in setters[:MAX_ALTERNATIVES]:
                        alternatives += self.expanded(setter, depth + 1)
            results = [done + more for done in results for more in alternatives][:MAX_ALTERNATIVES]
        return results

    # -- options for one atom ----------------------------------------------------------------
    def options(self, atom: Atom) -> list[Change]:
        if atom.kind == "nonempty":
            return self._nonempty(atom.node)
        if atom.kind == "writes":
            return self._writes(atom.node)
        try:
            changes = self._test(atom.node, atom.want)
        except RecursionError:  # pragma: no cover - absurdly deep expressions
            return []
        loop = self.conditions.walk.loop_of.get(id(atom.node))
        if loop is not None:  # ``not loop.last``, ``loop.index0 == 1``: a longer loop
            for count in (2, 3):
                changes += [
                    _ensure(path, lambda old, n=count: _grown(old, n)) for path in self._loop_paths(loop)
                ]
        return changes

    def _loop_paths(self, node: nodes.Node) -> list[Path]:
        paths = {path[:-1] if path[-1:] == ("*items",) else path for path in self.resolve(node)}
        return sorted((path for path in paths if _settable(path)), key=self._rank)[:2]

    def _paths(self, node: nodes.Node) -> list[Path]:
        """The settable paths ``node`` reads, those the bases hold first (a schema read by a
        recursive macro resolves to many paths, most of them absent from any conversation)."""
        paths = {path for path in self.resolve(node) if _settable(path)}
        if not paths and isinstance(node, nodes.Name):
            paths = self._through_macros(node.name)
        return sorted(paths, key=self._rank)

    def _through_macros(self, name: str) -> set[Path]:
        """For a local set to a macro's output (``{% set content = render(message.content) %}``):
        what the macro is given, whose text the output carries."""
        paths: set[Path] = set()
        for value, _ in self.conditions.assignments(name):
            if isinstance(value, nodes.Call) and isinstance(value.node, nodes.Name):
                if value.node.name in self.macros:
                    for argument in [*value.args, *(kw.value for kw in value.kwargs)]:
                        paths |= {path for path in self.resolve(argument) if _settable(path)}
        return paths

    def _rank(self, path: Path) -> tuple[int, Path]:
        return (self._in_bases(path), path)

    def _writes(self, node: nodes.Node) -> list[Change]:
        """The values output ``node`` reads, made present (shaped by the template's reads): an
        output of a value the conversation lacks writes nothing, or fails (``'x' + undefined``).
        All of them at once first, then each alone."""
        changes: list[Change] = self._macro_examples(node)
        seen: set[Path] = set()
        for part in [node, *node.find_all((nodes.Name, nodes.Getattr, nodes.Getitem))]:
            if not isinstance(part, (nodes.Name, nodes.Getattr, nodes.Getitem)):
                continue
            for path in self._paths(part)[:2]:
                if path not in seen:
                    seen.add(path)
                    changes.append(
                        _ensure(path, lambda old, path=path: old if _present(old) else self._truthy(path))
                    )
        if len(changes) > 1:
            together = changes[0]
            for change in changes[1:]:
                together = _chain(together, change)
            changes.insert(0, together)
        return changes[:4]

    def _macro_examples(self, node: nodes.Node) -> list[Change]:
        """For a value ``node`` passes to a macro (``render_type(tool.returns)``) that the
        conversation lacks: a copy of a value the conversation already passes to the same
        parameter (a parameter's schema for a return schema), the surest shape it renders."""
        changes: list[Change] = []
        for call in node.find_all(nodes.Call):
            macro = self.macros.get(call.node.name) if isinstance(call.node, nodes.Name) else None
            if macro is None:
                continue
            bound = list(zip(macro.args, call.args, strict=False))
            bound += [(arg, kw.value) for kw in call.kwargs for arg in macro.args if arg.name == kw.key]
            for parameter, argument in bound:
                own = self._paths(argument)[:2]
                if not own:
                    continue
                others = sorted(set(self.resolve(nodes.Name(parameter.name, "load"))) - set(own))
                examples = [
                    value
                    for path in others
                    if _settable(path)
                    for state in self.states
                    for container, key in _locations(state, path, None)
                    if isinstance(value := _get(container, key), dict) and value
                ]
                if examples:
                    example = examples[0]
                    changes += [
                        _ensure(path, lambda old, e=example: old if _present(old) else copy.deepcopy(e))
                        for path in own
                    ]
        return changes[:2]

    def _nonempty(self, node: nodes.Node) -> list[Change]:
        paths = self._paths(node)
        return [_ensure(path, lambda old: old if _present(old) else [self.words()]) for path in paths[:2]]

    def _test(self, node: nodes.Node, want: bool) -> list[Change]:  # noqa: C901 - one case per form
        if isinstance(node, nodes.Not):
            return self._test(node.node, not want)
        if isinstance(node, (nodes.And, nodes.Or)):
            both = isinstance(node, nodes.And) == want
            left, right = self._test(node.left, want), self._test(node.right, want)
            if not both:
                return left + right
            combined = [_chain(a, b) for a, b in itertools.product(left or [_same], right or [_same])]
            return combined[:12]
        if isinstance(node, nodes.Test):
            return self._jinja_test(node, want)
        if isinstance(node, nodes.Compare) and len(node.ops) == 1:
            return self._compare(node.expr, node.ops[0].op, node.ops[0].expr, want)
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            return self._method(node, want)
        if isinstance(node, nodes.Filter) and node.name in ("length", "count") and node.node is not None:
            return self._length(node.node, "gt" if want else "eq", 0)
        paths = self._paths(node)
        if want:
            return [
                _ensure(path, lambda old, path=path: old if _present(old) else self._truthy(path))
                for path in paths[:3]
            ]
        return [_ensure(path, _falsy) for path in paths[:3]] + [_remove(path) for path in paths[:3]]

    def _truthy(self, path: Path) -> Any:
        """A true value for ``path``, shaped like the template reads it (made once per path:
        shaping a value walks every read path)."""
        made = self._made.get(path)
        if made is None:
            made = None
            if self.reads.reads(path):
                made = synthesize(path, self.reads, self.words)
            if not made:
                made = [self.words()] if path[-1:] in (("tools",), ("documents",)) else self.words()
            self._made[path] = made
        return copy.deepcopy(made)

    def _jinja_test(self, node: nodes.Test, want: bool) -> list[Change]:
        name = node.name
        if name in ("eq", "equalto", "==", "sameas") and node.args:
            return self._compare(node.node, "eq", node.args[0], want)
        if name in ("ne", "!=") and node.args:
            return self._compare(node.node, "eq", node.args[0], not want)
        if name in ("in",) and node.args:
            return self._compare(node.node, "in", node.args[0], want)
        if name == "undefined":
            name, want = "defined", not want
        paths = self._paths(node.node)
        if name == "defined":
            if want:
                return [
                    _ensure(path, lambda old, path=path: self._truthy(path) if old is _MISSING else old)
                    for path in paths
                ]
            return [_remove(path) for path in paths]
        typed = _TYPED.get(name)
        if typed is None:
            return []
        value, other = typed
        made = value if want else other
        makers: list[Callable[[Any], Any]] = [lambda old: _typed(made, old, self.words)]
        if made == "list":  # a list of parts (content), or of the value it held (a type name)
            makers.append(lambda old: [old] if isinstance(old, (str, int, float)) else _MISSING)
        changes = [_ensure(path, make) for path in paths for make in makers]
        return changes[:4]

    def _folded(self, node: nodes.Node) -> nodes.Node:
        """``node``, or the constant it always holds (a name the template sets to one constant)."""
        if isinstance(node, nodes.Name) and node.name in self.constant_names:
            return nodes.Const(self.constant_names[node.name], lineno=node.lineno)
        return node

    def _compare(self, left: nodes.Node, op: str, right: nodes.Node, want: bool) -> list[Change]:
        left, right = self._folded(left), self._folded(right)
        if op == "ne":
            op, want = "eq", not want
        if op == "notin":
            op, want = "in", not want
        if op == "eq":
            constant, side = (right, left) if isinstance(right, nodes.Const) else (left, right)
            if isinstance(constant, nodes.Const):
                if isinstance(side, nodes.Filter) and side.name in ("length", "count") and side.node:
                    return self._length(side.node, "eq" if want else "gt", constant.value)
                value = constant.value if want else _other(constant.value, self.words)
                return [_set(path, value) for path in self._paths(side)[:4]]
            if want:  # two values from the conversation: copy one onto the other
                return _copy_between(self.resolve, left, right)
            return []
        if op in ("gt", "gteq", "lt", "lteq") and isinstance(right, nodes.Const):
            if isinstance(left, nodes.Filter) and left.name in ("length", "count") and left.node:
                bound = right.value if isinstance(right.value, int) else 0
                wanted = {"gt": bound + 1, "gteq": bound, "lt": bound - 1, "lteq": bound}[op]
                if not want:
                    wanted = {"gt": bound, "gteq": bound - 1, "lt": bound, "lteq": bound + 1}[op]
                return self._length(left.node, "eq", max(wanted, 0))
            return []
        if op != "in":
            return []
        if isinstance(left, nodes.Const) and isinstance(left.value, str):
            text = left.value
            paths = self._paths(right)
            if want:
                return [
                    _ensure(path, lambda old, t=text: _containing(old, t, self.words)) for path in paths[:4]
                ]
            return [_ensure(path, lambda old, t=text: _without(old, t)) for path in paths[:4]]
        constants = _constants(right)
        if constants:
            values = constants if want else [_other(constants[0], self.words)]
            return [_set(path, values[0]) for path in self._paths(left)[:4]]
        if want:  # membership between two values: the same value on both sides
            return _membership(self.resolve, left, right)
        return []

    def _method(self, node: nodes.Call, want: bool) -> list[Change]:
        method = node.node.attr  # type: ignore[attr-defined]
        argument = self._folded(node.args[0]) if node.args else None
        if method == "get" and isinstance(argument, nodes.Const) and isinstance(argument.value, str):
            # ``schema.get('enum')``: the key read through ``get``, true or false
            paths = [path + (argument.value,) for path in self._paths(node.node.node)][:3]  # type: ignore[attr-defined]
            if want:
                return [
                    _ensure(path, lambda old, path=path: old if _present(old) else self._truthy(path))
                    for path in paths
                ]
            return [_remove(path) for path in paths]
        if method not in ("startswith", "endswith") or not isinstance(argument, nodes.Const):
            return []
        if not isinstance(argument.value, str):
            return []
        text = argument.value
        paths = self._paths(node.node.node)  # type: ignore[attr-defined]
        if not want:
            return [_ensure(path, lambda old, t=text: _without(old, t)) for path in paths[:4]]
        if method == "startswith":
            return [_ensure(path, lambda old, t=text: t + _text(old, self.words)) for path in paths[:4]]
        return [_ensure(path, lambda old, t=text: _text(old, self.words) + t) for path in paths[:4]]

    def _length(self, node: nodes.Node, op: str, count: Any) -> list[Change]:
        if not isinstance(count, int) or count > 8:
            return []
        wanted = count + 1 if op == "gt" else count
        return [
            _ensure(path, lambda old, n=wanted: _resized(old, n, self.words))
            for path in self._paths(node)[:3]
        ]


_MISSING = object()


def _present(value: Any) -> bool:
    """Whether ``value`` is there and true."""
    return value is not _MISSING and bool(value)


#: Jinja type tests: a value that passes, and one that does not.
_TYPED: dict[str, tuple[str, str]] = {
    "string": ("string", "list"),
    "mapping": ("mapping", "string"),
    "iterable": ("list", "number"),
    "sequence": ("list", "number"),
    "number": ("number", "string"),
    "integer": ("number", "string"),
    "float": ("float", "string"),
    "boolean": ("true", "string"),
    "true": ("true", "false"),
    "false": ("false", "true"),
    "none": ("none", "string"),
}


def _typed(kind: str, old: Any, words: WordSource) -> Any:
    text = old if isinstance(old, str) and old else words()
    if kind == "string":
        if isinstance(old, list):
            return (
                "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in old) or text
            )
        return text
    if kind == "list":
        if isinstance(old, list):
            return old
        return [{"type": "text", "text": text}]
    if kind == "mapping":
        return old if isinstance(old, dict) else {words(): text}
    return {"number": 3, "float": 1.5, "true": True, "false": False, "none": None}[kind]


def _text(old: Any, words: WordSource) -> str:
    return old if isinstance(old, str) else words()


def _containing(old: Any, text: str, words: WordSource) -> Any:
    if isinstance(old, dict):
        return old if text in old else {**old, text: words()}
    if isinstance(old, list):
        return old if text in old else [*old, text]
    if isinstance(old, str) and text in old:
        return old
    opener = "<" + text[2:] if text.startswith("</") else ""
    return f"{opener}{words()}{text}{_text(old, words)}"


def _without(old: Any, text: str) -> Any:
    if isinstance(old, dict):
        return {key: value for key, value in old.items() if key != text}
    if isinstance(old, list):
        return [item for item in old if item != text]
    if isinstance(old, str):
        return old.replace(text, "")
    return old


def _falsy(old: Any) -> Any:
    if isinstance(old, list):
        return []
    if isinstance(old, dict):
        return {}
    if isinstance(old, bool):
        return False
    return ""


def _other(value: Any, words: WordSource) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    return words()


def _resized(old: Any, count: int, words: WordSource) -> Any:
    if isinstance(old, dict):  # a mapping keeps its kind: its first entries, or copies of them
        return _grown(old, count) if len(old) < count else dict(list(old.items())[:count])
    items = list(old) if isinstance(old, list) else []
    if not items:
        items = [words()]
    while len(items) < count:
        items.append(copy.deepcopy(items[len(items) % max(1, len(items) - 1)]))
    return items[:count]


def _grown(old: Any, count: int) -> Any:
    """``old`` (a list or mapping) with at least ``count`` entries, copies of its own; a single
    value, a list of ``count`` copies of it."""
    if isinstance(old, list) and old:
        items = list(old)
        while len(items) < count:
            items.append(copy.deepcopy(items[-1]))
        return items
    if isinstance(old, dict) and old:
        grown = dict(old)
        last = next(reversed(old.values()))
        while len(grown) < count:
            grown[f"{next(reversed(old))}_{len(grown)}"] = copy.deepcopy(last)
        return grown
    if isinstance(old, (str, int, float)) and not isinstance(old, bool):  # a type name: a list of it
        return [old] * count
    return old


def _constants(node: nodes.Node) -> list[Any]:
    if isinstance(node, nodes.Const) and isinstance(node.value, (list, tuple)):
        return list(node.value)
    if isinstance(node, (nodes.List, nodes.Tuple)):
        return [item.value for item in node.items if isinstance(item, nodes.Const)]
    return []


def _split(atom: Atom) -> list[Atom]:
    """``a and b`` wanted true, ``a or b`` wanted false, ``not a``: the parts, each with the
    value it must have."""
    node, want = atom.node, atom.want
    if atom.kind != "test":
        return [atom]
    if isinstance(node, nodes.Not):
        return _split(Atom(node.node, not want))
    if isinstance(node, nodes.And) and want or isinstance(node, nodes.Or) and not want:
        return _split(Atom(node.left, want)) + _split(Atom(node.right, want))
    return [atom]


def _flag_key(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
        return f"{node.node.name}.{node.attr}"
    return None


def _settable(path: Path) -> bool:
    return bool(path) and not any(step.startswith(("@", "*i")) for step in path)


# --- changes on a state {"messages": [...], **kwargs} ------------------------------------------


def _locations(state: dict[str, Any], path: Path, scope: Scope) -> list[tuple[Any, Any]]:
    """Where ``path`` lives in ``state``: (container, key) pairs; the last key may be missing.
    ``scope``: only under messages of that role."""
    current: list[Any] = [state]
    for index, step in enumerate(path):
        last = index == len(path) - 1
        found: list[Any] = []
        pairs: list[tuple[Any, Any]] = []
        for value in current:
            if step == ELEMENT:
                if isinstance(value, list):
                    items = list(enumerate(value))
                    if index == 1 and path[0] == "messages" and isinstance(scope, int):
                        items = items[scope : scope + 1]
                    elif index == 1 and path[0] == "messages" and scope is not None:
                        items = [(i, m) for i, m in items if isinstance(m, dict) and m.get("role") == scope]
                    pairs += [(value, i) for i, _ in items]
                    found += [item for _, item in items]
            elif step == ANY_VALUE:
                if isinstance(value, dict):
                    pairs += [(value, key) for key in value]
                    found += list(value.values())
            elif isinstance(value, dict):
                if step in value:
                    pairs.append((value, step))
                    found.append(value[step])
                elif last:
                    pairs.append((value, step))
        if last:
            return pairs
        current = found
    return []


def _get(container: Any, key: Any) -> Any:
    try:
        return container[key]
    except (KeyError, IndexError, TypeError):
        return _MISSING


@dataclass(frozen=True)
class _Edit:
    path: Path
    make: Callable[[Any], Any] | None  # None: remove

    def __call__(self, state: dict[str, Any], scope: Scope = None) -> bool:
        changed = False
        for container, key in _locations(state, self.path, scope):
            old = _get(container, key)
            if self.make is None:
                if isinstance(container, dict) and old is not _MISSING:
                    del container[key]
                    changed = True
                continue
            new = self.make(old)
            if new is _MISSING:
                continue
            if old is _MISSING or new != old or type(new) is not type(old):
                container[key] = new
                changed = True
        return changed


class _Make(Protocol):
    """The new value at a path from the old one (``_MISSING`` in, or out: absent)."""

    def __call__(self, old: Any, /) -> Any: ...


def _ensure(path: Path, make: _Make) -> Change:
    return _Edit(path, make)


def _set(path: Path, value: Any) -> Change:
    return _Edit(path, lambda old: copy.deepcopy(value))


def _remove(path: Path) -> Change:
    return _Edit(path, None)


def _same(state: dict[str, Any], scope: Scope = None) -> bool:
    return False


def _chain(first: Callable[..., bool], second: Callable[..., bool]) -> Callable[..., bool]:
    def change(state: dict[str, Any], scope: Scope = None) -> bool:
        return bool(first(state, scope) | second(state, scope))

    return change


def _values_of(
    resolve: Callable[[nodes.Node], set[Path]], node: nodes.Node, state: dict[str, Any]
) -> list[Any]:
    """The values ``node`` may have in ``state`` (``map(attribute=...)`` followed)."""
    if isinstance(node, nodes.Filter) and node.name == "map" and node.node is not None:
        attribute = next((k.value for k in node.kwargs if k.key == "attribute"), None)
        if isinstance(attribute, nodes.Const) and isinstance(attribute.value, str):
            values = []
            for collection in _values_of(resolve, node.node, state):
                for item in collection if isinstance(collection, list) else []:
                    for key in attribute.value.split("."):
                        item = item.get(key, _MISSING) if isinstance(item, dict) else _MISSING
                    if item is not _MISSING:
                        values.append(item)
            return [values]
        return []
    if isinstance(node, nodes.Filter) and node.name in ("list", "unique", "sort") and node.node is not None:
        return _values_of(resolve, node.node, state)
    values = []
    for path in sorted(resolve(node)):
        if _settable(path):
            for container, key in _locations(state, path, None):
                value = _get(container, key)
                if value is not _MISSING:
                    values.append(value)
    return values


def _membership(
    resolve: Callable[[nodes.Node], set[Path]], left: nodes.Node, right: nodes.Node
) -> list[Change]:
    """``left in right``: the value of ``left`` added to ``right``, or ``left`` set to an element
    of ``right``."""
    right_paths = sorted(path for path in resolve(right) if _settable(path))
    left_paths = sorted(path for path in resolve(left) if _settable(path))

    def add_left_to_right(state: dict[str, Any], scope: Scope = None) -> bool:
        values = [v for v in _values_of(resolve, left, state) if isinstance(v, (str, int, float))]
        if not values or not right_paths:
            return False
        changed = False
        for path in right_paths[:2]:

            def make(old: Any, values: list[Any] = values) -> Any:
                if isinstance(old, dict):
                    return {**old, **{str(v): v for v in values}}
                if isinstance(old, str):  # a value made up for ``is defined``: a list of both
                    return [old, *values]
                items = list(old) if isinstance(old, list) else []
                return items + [v for v in dict.fromkeys(values) if v not in items]

            changed |= _Edit(path, make)(state, None)
        return changed

    def set_left_from_right(state: dict[str, Any], scope: Scope = None) -> bool:
        pools = _values_of(resolve, right, state)
        element = next(
            (
                item
                for pool in pools
                if isinstance(pool, (list, dict))
                for item in pool
                if isinstance(item, str)
            ),
            None,
        )
        if element is None:
            return False
        return any(_set(path, element)(state, scope) for path in left_paths[:2])

    return [add_left_to_right, set_left_from_right]


def _copy_between(
    resolve: Callable[[nodes.Node], set[Path]], left: nodes.Node, right: nodes.Node
) -> list[Change]:
    """``left == right``, both from the conversation: one copied onto the other."""
    changes: list[Change] = []
    for source, target in ((right, left), (left, right)):
        target_paths = sorted(path for path in resolve(target) if _settable(path))

        def change(
            state: dict[str, Any],
            scope: Scope = None,
            source: nodes.Node = source,
            paths: list[Path] = target_paths,
        ) -> bool:
            values = [v for v in _values_of(resolve, source, state) if isinstance(v, (str, int, float, bool))]
            if not values:
                return False
            return any(_set(path, values[0])(state, scope) for path in paths[:2])

        changes.append(change)
    return changes


# --- the search --------------------------------------------------------------------------------


def reach(
    template: ChatTemplate | str,
    probes: Sequence[Probe],
    *,
    candidates: int = SOLVE_CANDIDATES,
    work: int = SOLVE_WORK,
) -> list[Probe]:
    """Probes built from the path conditions of the outputs ``probes`` do not reach.

    For each unreached output (those the coverage measure counts: not refusals, uncalled macros,
    dead branches), each alternative of its path condition (local flags expanded to the
    conditions that set them) is turned into changes, one list of options per atom (plus "leave
    it"); combinations with the fewest changes come first. They are applied to the base probes
    that reach the output sharing the longest prefix of the condition, for every message role
    the probe has as the scope of message-level changes and for all messages. A candidate is
    kept when its render reaches an output no kept probe reached. Stops when everything is
    reached or the budget (``candidates`` renders, ``work`` units) runs out. Deterministic.

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.
    """
    template = ChatTemplate.of(template)
    solver = _Solver(template)
    instrumented = solver.instrumented
    not_text = set(_never_writes(template, instrumented))
    wanted = {site.id for site in instrumented.sites.outputs} - not_text
    reached_by: dict[int, list[Probe]] = {}
    for probe in probes:
        try:
            features = _probe_run(template, probe)[0]
        except RenderLimitExceeded:
            continue
        for kind, site, _ in features or ():
            if kind == "out":
                reached_by.setdefault(site, []).append(probe)
    kept: list[Probe] = []
    budget = _Budget(candidates, work)
    tried: set[tuple[tuple[int, bool, str], ...]] = set()
    failed: set[tuple[tuple[int, bool, str], ...]] = set()
    targets = [site for site in instrumented.sites.outputs if site.id in wanted - reached_by.keys()]
    if not targets:
        return []
    # the shortest conditions first: they are the cheapest to satisfy, and open the way deeper
    shortest = {site.id: min(map(len, solver.conditions.of(site.node)), default=0) for site in targets}
    targets.sort(key=lambda site: (shortest[site.id], site.id))
    for site in targets:
        if site.id in reached_by or budget.spent or len(kept) >= SOLVE_KEEP:
            continue
        for condition in solver.conditions.of(site.node):
            # a condition nothing satisfied is not tried again; one that was satisfied is tried
            # again for an output that reads values (they are part of what is solved), not for
            # the literals beside it
            key = tuple(atom.key for atom in condition)
            reads_values = not isinstance(site.node, (nodes.TemplateData, nodes.Const))
            if key in failed or (key in tried and not reads_values):
                continue
            tried.add(key)
            found = _solve_one(template, solver, site.id, condition, reached_by, budget)
            if found is None:
                failed.add(key)
            if found is not None and any(probe.name == found.name for probe in [*probes, *kept]):
                found = None  # a name already taken (a base's name carries its own reach)
            if found is not None:
                kept.append(found)
                features = _probe_run(template, found)[0] or frozenset()
                for kind, other, _ in features:
                    if kind == "out":
                        reached_by.setdefault(other, []).append(found)
                break
    return kept


class _Budget:
    def __init__(self, candidates: int, work: int) -> None:
        self.candidates, self.work = candidates, work
        self.attempts = 8 * candidates

    @property
    def spent(self) -> bool:
        return self.candidates <= 0 or self.work <= 0 or self.attempts <= 0


def _solve_one(
    template: ChatTemplate,
    solver: _Solver,
    target: int,
    condition: Condition,
    reached_by: dict[int, list[Probe]],
    budget: _Budget,
) -> Probe | None:
    bases = _bases(solver, condition, reached_by)
    solver.on(bases)
    fields = _message_fields(solver, condition)
    seen: set[str] = set()
    alternatives = []
    for expanded in solver.expanded(condition):
        expanded = (*expanded, Atom(solver.instrumented.sites.outputs[target].node, True, "writes"))
        options = [[_same, *solver.options(atom)] for atom in expanded]
        if any(len(choices) > 1 for choices in options):
            # a test wanted false is mostly false already: change it last
            penalties = [0 if atom.want else 2 for atom in expanded]
            alternatives.append((options, penalties))
    if not alternatives:
        return None
    # each alternative (a flag as it is, or set by one of its assignments) gets its share
    share = max(PER_CONDITION // len(alternatives), PER_CONDITION // 4)
    for options, penalties in alternatives:
        allowed, attempts = share, 4 * share  # attempts: conversations built, most seen or unchanged
        for base in bases:
            for count, combination in enumerate(_combinations(options, penalties)):
                if count >= COMBINATIONS or budget.spent or attempts <= 0 or allowed <= 0:
                    break
                for scope in _scopes(base, fields):
                    solver.words = WordSource(start=9100)  # the same change makes the same values
                    budget.attempts -= 1
                    attempts -= 1
                    candidate = _apply(base, combination, scope, target)
                    if candidate is None:
                        continue
                    identity = json.dumps([candidate.messages, candidate.kwargs], sort_keys=True, default=str)
                    if identity in seen:
                        continue
                    seen.add(identity)
                    budget.candidates -= 1
                    allowed -= 1
                    try:
                        features, cost = _probe_run(template, candidate)
                    except RenderLimitExceeded:
                        budget.work -= 1000
                        continue
                    except (ValueError, TypeError):  # inputs transformers itself refuses
                        continue
                    budget.work -= cost
                    if features is not None and ("out", target, 0) in features:
                        return candidate
                    if budget.spent or attempts <= 0 or allowed <= 0:
                        break
    return None


def _bases(solver: _Solver, condition: Condition, reached_by: dict[int, list[Probe]]) -> list[Probe]:
    """The probes that reach an output whose condition shares the longest prefix with
    ``condition`` (furthest along the same path), at most :data:`BASES` of them."""
    keys = [atom.key for atom in condition]
    scored: list[tuple[int, int, Probe]] = []
    sites = solver.instrumented.sites.outputs
    for site_id, probes in reached_by.items():
        other = solver.conditions.of(sites[site_id].node)
        if not other:
            continue
        shared = 0
        for mine, theirs in zip(keys, (atom.key for atom in other[0]), strict=False):
            if mine != theirs:
                break
            shared += 1
        for order, probe in enumerate(probes[:BASES]):
            scored.append((-shared, order, probe))
    scored.sort(key=lambda item: (item[0], item[1]))
    bases: list[Probe] = []
    names: set[str] = set()
    for _, _, probe in scored:
        if probe.name not in names:
            names.add(probe.name)
            bases.append(probe)
        if len(bases) >= BASES:
            break
    return bases


def _combinations(options: list[list[Change]], penalties: Sequence[int] = ()) -> Iterator[tuple[Change, ...]]:
    """Every choice of one option per atom (index 0 of each list is "leave it"): first every
    test made to hold at once, then the choices with the fewest changes, the earliest options and
    the fewest changes to tests wanted false (``penalties``: one per atom) first."""
    slots = len(options)
    penalty = list(penalties) or [0] * slots
    everything = tuple(choices[1] if len(choices) > 1 else choices[0] for choices in options)
    yield everything  # the direct way
    for changed in range(1, slots + 1):
        level = []
        for chosen in itertools.combinations(range(slots), changed):
            ranges = [range(1, len(options[i])) for i in chosen]
            for picks in itertools.islice(itertools.product(*ranges), 64):
                cost = sum(pick + penalty[slot] for slot, pick in zip(chosen, picks, strict=True))
                level.append((cost, chosen, picks))
            if len(level) > 512:
                break
        level.sort(key=lambda item: (item[0], item[1], item[2]))
        for _, chosen, picks in level:
            combination = [options[i][0] for i in range(slots)]
            for slot, pick in zip(chosen, picks, strict=True):
                combination[slot] = options[slot][pick]
            yield tuple(combination)


def _scopes(probe: Probe, fields: frozenset[str]) -> list[Scope]:
    """One message first (the three holding most of the fields the condition reads, later ones
    first), then one role's messages, then all of them."""
    messages = [m for m in probe.messages if isinstance(m, dict)]
    ranked = sorted(range(len(messages)), key=lambda i: (-len(fields & messages[i].keys()), -i))
    roles = list(dict.fromkeys(m.get("role") for m in messages if isinstance(m.get("role"), str)))
    return [*ranked[:3], *roles, None]


def _message_fields(solver: _Solver, condition: Condition) -> frozenset[str]:
    """The message fields the tests of ``condition`` read."""
    found: set[str] = set()
    for atom in condition:
        for compare in atom.node.find_all(nodes.Compare):  # ``'tool_calls' in message``
            if isinstance(compare.expr, nodes.Const) and isinstance(compare.expr.value, str):
                if compare.ops and compare.ops[0].op in ("in", "notin"):
                    if ("messages", ELEMENT) in solver.resolve(compare.ops[0].expr):
                        found.add(compare.expr.value)
        for node in atom.node.find_all((nodes.Getattr, nodes.Getitem)):
            for path in solver.resolve(node):
                if path[:2] == ("messages", ELEMENT) and len(path) > 2:
                    found.add(path[2])
    return frozenset(found)


def _apply(base: Probe, combination: Sequence[Change], scope: Scope, target: int) -> Probe | None:
    state: dict[str, Any] = json.loads(json.dumps({**dict(base.kwargs), "messages": list(base.messages)}))
    changed = False
    for change in combination:
        try:
            changed |= bool(change(state, scope))
        except (KeyError, TypeError, AttributeError, IndexError, ValueError):
            return None
    if not changed:
        return None
    messages = state.pop("messages", None)
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None
    for key in ("tools", "documents"):  # what apply_chat_template accepts: lists of mappings
        value = state.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            return None
    try:
        json.dumps([messages, state])
    except (TypeError, ValueError):
        return None
    where = "" if scope is None else f"@message {scope}" if isinstance(scope, int) else f"@{scope}"
    label = f"{base.name}+reach(output {target}{where})"  # one probe kept per target: unique
    return Probe(label, tuple(messages), state)
