"""Stage 3: the condition under which a shared output is assistant output.

A unit that is inside a span in some emissions and outside in others (``'<|im_start|>' + role +
'\\n' + content`` is inside only for assistant messages) needs a Jinja test, written into a role
branch, that holds on exactly its inside emissions. The test is built from what the template
itself can see at that output: its loop variables, the ``loop`` object, its own if/elif tests in
the same iteration, and the template flags.

Example:
    >>> from templatefix.source import TemplateSource
    >>> from templatefix.analysis.records import Emission
    >>> def seen(role, inside):
    ...     return Observation(inside, Emission(0, 0, 1, None, {"m": {"role": role}}), {})
    >>> find_condition([seen("user", False), seen("assistant", True)], TemplateSource.parse("x"))
    "m.role == 'assistant'"
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from jinja2 import nodes

from templatefix.analysis.instrument import Instrumented
from templatefix.analysis.records import Atom, Emission, LoopState
from templatefix.patch.observe import Ending
from templatefix.source import TemplateSource

#: Whether the policy trains the last turn only: offers "no user message later in the loop's
#: list" as a feature (``templatefix.patch.api.place_markers`` sets it).
LAST_TURN: ContextVar[bool] = ContextVar("last_turn", default=False)

#: Unique literals tried in pairs (``a and b``, ``a or b``): at most 256·255/2 = 32,640 pairs.
PAIR_LITERALS = 256
#: Unique literals tried in threes (four shapes, each operand first): C(48, 3) = 17,296 triples.
TRIPLE_LITERALS = 48
#: Unique literals tried as ``a and (b or c or d)``: 24 · C(23, 3) = 42,504 combinations.
GUARD_LITERALS = 24


@dataclass
class Observation:
    """One emission of a unit: inside a span or not, and what the template could see there."""

    inside: bool
    emission: Emission
    flags: dict[str, Any]
    ending: Ending = field(default_factory=Ending)
    text: str | None = None  # the text of the output piece the unit is cut from, when known

    @property
    def scope(self) -> dict[str, Any]:
        """The enclosing loops' targets by name."""
        return self.emission.scope

    @property
    def loop(self) -> LoopState | None:
        """The innermost loop's state (``None`` outside loops)."""
        return self.emission.loop


class Test(Protocol):
    """Whether a feature holds at an observation (loop values are bound as default arguments)."""

    def __call__(self, observation: Observation, /) -> bool: ...


def find_condition(
    observations: list[Observation],
    source: TemplateSource,
    instrumented: Instrumented | None = None,
    atom: Atom | None = None,
    extra: Sequence[tuple[str, Test]] = (),
) -> str | None:
    """The simplest test that is true exactly on the inside observations, or ``None``.

    Building blocks (*features*), most telling first:

    1. ``x.role == 'assistant'`` for each loop variable ``x`` that has a ``role``;
    2. the template's own if/elif tests in the atom's innermost loop, as "one of the first j
       branches of this chain was taken" (``T0 or … or Tj``), nearest chain first;
    3. every other identifier key of each loop variable (``x.tool_calls``…), truthy; and
       ``x.key is false`` for keys some message sets to ``false`` (a per-message switch); each
       plain value a ``{% set %}`` in the loop's body names (``reasoning_content``), truthy;
    4. under ``turns="last"`` (:data:`LAST_TURN`), "``x`` is a message of the last turn"; then
       ``x is sameas messages[-1]`` for each loop variable;
    5. ``loop.last``, ``loop.first``, the previous/next item's role;
    6. how the conversation ends: its last message's role, for each role seen last
       (``messages[-1] is defined and messages[-1].role == 'assistant'``, the assistant's first;
       offered only where ``messages`` is the conversation: never assigned, not a parameter of a
       macro around the output), and ``add_generation_prompt``: text a template writes after its
       message loop for the turn that may come next (an end-of-sequence token, the next header)
       is the last assistant turn's only when the conversation ends with that turn, or with
       messages the template does not write;
    7. each flag: ``f``, ``f is false``, ``f is defined``, and ``f == "value"`` per value seen
       (a mapping option such as Granite's ``controls`` only as set or not);
    8. last, if/elif chains in enclosing loops, which only correlate.

    Each feature gives two *literals*, itself and its negation. Every literal is evaluated on the
    observations as a bit mask, and only the first (simplest) literal of each distinct mask is
    kept, so there are at most ``2 · features`` and at most ``2 ** len(observations)`` literals.
    The search, stopping at the first match:

    - one literal;
    - two literals joined by ``and`` / ``or``, among the first :data:`PAIR_LITERALS`;
    - three literals as ``a or b or c``, ``a and b and c``, ``x and (y or z)``,
      ``x or (y and z)``, among the first :data:`TRIPLE_LITERALS`;
    - a guard and three alternatives, ``a and (b or c or d)``, among the first
      :data:`GUARD_LITERALS`.

    So at most about 92,000 mask combinations are tried whatever the template. At the bound
    (nothing matched) the answer is ``None``: the caller refuses the patch and names the output
    (``PatchFailure``); no condition is ever guessed.

    ``extra`` features (the piece's own text, :func:`prefix_features`) go first; with them, two
    pairs of alternatives, ``(a or b) and (c or d)``, are also tried among the first
    :data:`GUARD_LITERALS`.

    Args:
        observations: the unit's emissions, inside or outside.
        source: the template (its preferred quote character is used in the test).
        instrumented: the instrumented template (its if/elif chains); optional.
        atom: the output the unit belongs to (which chains may be re-evaluated there).

    Returns:
        The Jinja test's source text, or ``None`` when no combination within the bounds fits.
    """
    target = sum(1 << i for i, o in enumerate(observations) if o.inside)
    unique = _literals([*extra, *_features(observations, source, instrumented, atom)], observations)
    for text, mask in unique:
        if mask == target:
            return text
    for (text_a, a), (text_b, b) in itertools.combinations(unique[:PAIR_LITERALS], 2):
        if a & b == target:
            return f"{_group(text_a)} and {_group(text_b)}"
        if a | b == target:
            return f"{_group(text_a)} or {_group(text_b)}"
    for (text_a, a), (text_b, b), (text_c, c) in itertools.combinations(unique[:TRIPLE_LITERALS], 3):
        if a | b | c == target:
            return f"{_group(text_a)} or {_group(text_b)} or {_group(text_c)}"
        if a & b & c == target:
            return f"{_group(text_a)} and {_group(text_b)} and {_group(text_c)}"
        for first, second, third, x, y, z in (
            (text_a, text_b, text_c, a, b, c),
            (text_b, text_a, text_c, b, a, c),
            (text_c, text_a, text_b, c, a, b),
        ):
            if x & (y | z) == target:
                return f"{_group(first)} and ({_group(second)} or {_group(third)})"
            if x | (y & z) == target:
                return f"{_group(first)} or ({_group(second)} and {_group(third)})"
    # A guard on one side, three alternatives on the other ("last turn" and "not the first call").
    small = unique[:GUARD_LITERALS]
    for index, (text_a, a) in enumerate(small):
        for (text_b, b), (text_c, c), (text_d, d) in itertools.combinations(
            small[:index] + small[index + 1 :], 3
        ):
            if a & (b | c | d) == target:
                return f"{_group(text_a)} and ({_group(text_b)} or {_group(text_c)} or {_group(text_d)})"
    if extra:
        # Two independent reasons for one edge (how the piece starts, and a flag the generation
        # prompt depends on): (a or b) and (c or d).
        pairs = list(itertools.combinations(small, 2))
        ors = [(f"{_group(ta)} or {_group(tb)}", a | b) for (ta, a), (tb, b) in pairs]
        for (text_x, x), (text_y, y) in itertools.combinations(ors, 2):
            if x & y == target:
                return f"({text_x}) and ({text_y})"
    return None


def prefix_features(
    observations: Sequence[Observation],
    sliced: Callable[[int], str],
    lengths: Sequence[int],
    constants: Sequence[str],
) -> list[tuple[str, Test]]:
    """Tests on how the piece's own text starts: ``expression[:k] == 'prefix'``.

    ``sliced(k)`` is the piece's expression sliced to its first ``k`` characters, as the writer
    writes it.

    For each slice bound ``k`` and each text the piece starts with there. A span edge at a fixed
    offset inside a piece often depends on which text the template built it from (a
    ``{% set %}`` that prefixes ``<think></think>`` only to some contents) and the generation
    prompt. Offered only when every observation knows its text, and only for prefixes that are
    text of the template's own (``constants``: a piece of one of its string literals or literal
    text), so the test names no message's words.
    """
    if not lengths or any(o.text is None for o in observations):
        return []
    features: list[tuple[str, Test]] = []
    for length in sorted(set(lengths)):
        if length <= 0:
            continue
        prefixes = sorted({o.text[:length] for o in observations if o.text and len(o.text) >= length})
        for prefix in prefixes:
            if not prefix or not any(prefix in constant for constant in constants):
                continue
            literal = json.dumps(prefix, ensure_ascii=False)
            features.append(
                (
                    f"{sliced(length)} == {literal}",
                    lambda o, n=length, p=prefix: o.text is not None and o.text[:n] == p,
                )
            )
    return features[:8]


def _literals(features: list[tuple[str, Test]], observations: list[Observation]) -> list[tuple[str, int]]:
    """Each feature and its negation as ``(text, mask)``, the first text of each mask only."""
    full = (1 << len(observations)) - 1
    literals: list[tuple[str, int]] = []
    for text, test in features:
        mask = sum(1 << i for i, o in enumerate(observations) if test(o))
        literals.append((text, mask))
        literals.append((f"not {text}" if " " not in text else f"not ({text})", full & ~mask))
    seen_masks: set[int] = set()
    unique = []
    for text, mask in literals:
        if mask not in seen_masks:
            seen_masks.add(mask)
            unique.append((text, mask))
    return unique


def _features(
    observations: list[Observation],
    source: TemplateSource,
    instrumented: Instrumented | None,
    atom: Atom | None,
) -> list[tuple[str, Test]]:
    """The building blocks, in the order of :func:`find_condition`'s docstring."""
    quote = _preferred_quote(source)
    features: list[tuple[str, Test]] = []
    names: dict[str, set[str]] = {}
    false_keys: dict[str, set[str]] = {}
    for observation in observations:
        for name, value in observation.scope.items():
            if isinstance(value, dict):
                names.setdefault(name, set()).update(
                    k for k in value if isinstance(k, str) and k.isidentifier()
                )
                false_keys.setdefault(name, set()).update(
                    k for k, v in value.items() if v is False and isinstance(k, str) and k.isidentifier()
                )
    for name, keys in sorted(names.items()):
        if "role" in keys:
            features.append(
                (
                    f"{name}.role == {quote}assistant{quote}",
                    lambda o, n=name: _get(o.scope, n, "role") == "assistant",
                )
            )
    local_branches: list[tuple[str, Test]] = []
    remote_branches: list[tuple[str, Test]] = []
    if instrumented is not None:
        # The template's own tests in this iteration say best what it does.
        local_branches, remote_branches = _branch_features(observations, instrumented, atom)
        features.extend(local_branches)
    for name, keys in sorted(names.items()):
        for key in sorted(keys - {"role"}):
            features.append((f"{name}.{key}", lambda o, n=name, k=key: bool(_get(o.scope, n, k))))
    for name, keys in sorted(false_keys.items()):
        # a field set to false in some messages (a per-message switch such as "train": false)
        for key in sorted(keys):
            features.append((f"{name}.{key} is false", lambda o, n=name, k=key: _get(o.scope, n, k) is False))
    for name in sorted({n for o in observations for n in o.emission.assigned}):
        features.append((name, lambda o, n=name: o.emission.assigned.get(n, False)))
    if LAST_TURN.get():
        # before "the last message": where the probes cannot tell the two apart (an output only
        # a turn's single message reached), the policy's own "last turn" is the one meant
        with_role = sorted(name for name, keys in names.items() if "role" in keys)
        features.extend(_last_turn_features(observations, with_role, source, atom, quote))
    for name in sorted(names):
        features.append((f"{name} is sameas messages[-1]", lambda o, n=name: n in o.emission.final))
    if any(o.loop is not None for o in observations):
        features.append(("loop.last", lambda o: o.loop is not None and o.loop.last))
        features.append(("loop.first", lambda o: o.loop is not None and o.loop.first))
        for side, key in (("previtem", "previous_role"), ("nextitem", "next_role")):
            roles = sorted({r for o in observations if o.loop is not None and (r := getattr(o.loop, key))})
            for role in roles:
                features.append(
                    (
                        f"(loop.{side} is defined and loop.{side}.role == {quote}{role}{quote})",
                        lambda o, k=key, r=role: o.loop is not None and getattr(o.loop, k) == r,
                    )
                )
    features.extend(_ending_features(observations, source, atom, quote))
    flag_values: dict[str, set[Any]] = {}
    # A flag the template assigns itself (a default: `{% set f = f if f is defined else true %}`)
    # is read as the output sees it, not as the probe passed it.
    reassigned = instrumented.reassigned if instrumented is not None else frozenset()
    for observation in observations:
        for key, value in observation.flags.items():
            if key.isidentifier() and isinstance(value, (bool, str, int)):
                flag_values.setdefault(key, set()).add(value)
            elif key.isidentifier() and key not in ("tools", "documents") and isinstance(value, (dict, list)):
                flag_values.setdefault(key, set())  # a data option (Granite's `controls`): set or not
    for observation in observations:
        for key, value in observation.emission.options.items():
            if key in flag_values and isinstance(value, (bool, str, int)):
                flag_values[key].add(value)
    for flag, seen in sorted(flag_values.items()):
        # Templates test flags as `f`, `f is false` (defined and false) or `f == value`.
        if flag in reassigned:
            options = lambda o: o.emission.options  # noqa: E731 - the values the output sees
        else:
            options = lambda o: o.flags  # noqa: E731 - the values the probe passed
        features.append((flag, lambda o, f=flag, get=options: bool(get(o).get(f))))
        features.append((f"{flag} is false", lambda o, f=flag, get=options: get(o).get(f, None) is False))
        features.append((f"{flag} is defined", lambda o, f=flag, get=options: f in get(o)))
        for value in sorted(v for v in seen if isinstance(v, str)):
            literal = json.dumps(value)
            features.append(
                (f"{flag} == {literal}", lambda o, f=flag, v=value, get=options: get(o).get(f) == v)
            )
    features.extend(remote_branches)
    return features


def _last_turn_features(
    observations: list[Observation], names: list[str], source: TemplateSource, atom: Atom | None, quote: str
) -> list[tuple[str, Test]]:
    """"``x`` is a message of the last turn": no user message comes after it in ``messages`` (the
    conversation). Jinja cannot ask for a message's position, so the test counts the roles after
    the last user message and looks ``x`` up by identity among that many final messages."""
    if not _messages_is_conversation(source, atom):
        return []
    features: list[tuple[str, Test]] = []
    q = quote
    tail = (
        f"((({q},{q} ~ messages | map(attribute={q}role{q}) | join({q},{q}) ~ {q},{q})"
        f".split({q},user,{q}) | last).split({q},{q}) | select | list | length)"
    )
    for name in names:
        text = f"(messages[messages | length - {tail}:] | select({q}sameas{q}, {name}) | list | length > 0)"
        features.append((text, lambda o, n=name: n in o.emission.last_turn))
    return features


def _ending_features(
    observations: list[Observation], source: TemplateSource, atom: Atom | None, quote: str
) -> list[tuple[str, Test]]:
    """How the conversation ends (feature 6 of :func:`find_condition`), when the observations
    differ in it: the last message's role, the generation prompt.

    A template that assigns ``messages`` itself (``{% set messages = messages[1:] %}``) is asked
    about the list it sees at the output: each emission records that list's last role."""
    features: list[tuple[str, Test]] = []
    if all(o.emission.rebound for o in observations) and not _messages_is_parameter(source, atom):
        last_role: Callable[[Observation], str | None] = lambda o: o.emission.last_role  # noqa: E731
    elif _messages_is_conversation(source, atom):
        last_role = lambda o: o.ending.last_role  # noqa: E731
    else:
        last_role = lambda o: None  # noqa: E731 - not known here: offer no ending feature
    roles = {last_role(o) for o in observations}
    if len(roles) > 1:
        # `is defined` first: an empty conversation has no last message, and reading `.role` of
        # an undefined value would raise where the original renders. The assistant's role first.
        for role in sorted((r for r in roles if r is not None), key=lambda r: (r != "assistant", r)):
            text = f"messages[-1] is defined and messages[-1].role == {quote}{role}{quote}"
            features.append((text, lambda o, r=role: last_role(o) == r))
    if len({o.ending.add_generation_prompt for o in observations}) > 1:
        features.append(("add_generation_prompt", lambda o: o.ending.add_generation_prompt))
    return features


def _messages_is_conversation(source: TemplateSource, atom: Atom | None) -> bool:
    """Whether ``messages`` at ``atom`` is the conversation the template was given: the template
    never assigns that name, and no macro around the atom takes a parameter of that name."""
    for name in source.ast.find_all(nodes.Name):
        if name.name == "messages" and name.ctx == "store":
            return False
    return not _messages_is_parameter(source, atom)


def _messages_is_parameter(source: TemplateSource, atom: Atom | None) -> bool:
    """Whether a macro around ``atom`` takes a parameter named ``messages``."""
    if atom is None:
        return False
    for macro in source.ast.find_all((nodes.Macro, nodes.CallBlock)):
        if not isinstance(macro, (nodes.Macro, nodes.CallBlock)):
            continue
        if any(arg.name == "messages" for arg in macro.args) and any(
            output is atom.output for output in macro.find_all(nodes.Output)
        ):
            return True
    return False


def _branch_features(
    observations: list[Observation], instrumented: Instrumented, atom: Atom | None
) -> tuple[list[tuple[str, Test]], list[tuple[str, Test]]]:
    """ "One of branches 0..j of if-chain k was taken", written as the chain's own tests.

    Returns (chains inside the atom's innermost loop, nearest first; all other chains).
    """
    local: list[tuple[str, Test]] = []
    remote: list[tuple[str, Test]] = []
    common: set[int] | None = None
    for observation in observations:
        keys = set(observation.emission.branches)
        common = keys if common is None else common & keys
    source = instrumented.source
    innermost = atom.loops[-1] if atom is not None and atom.loops else None
    atom_loops = atom.loops if atom is not None else []
    for chain_id in sorted(common or (), reverse=True):
        chain = instrumented.ifs[chain_id]
        # The test is re-evaluated where the atom is: its names must mean the same there. So the
        # chain must be in the atom's loop or one enclosing it, and may only use `loop` if it is
        # the same loop.
        enclosing = len(chain.loops) <= len(atom_loops) and all(
            a is b for a, b in zip(chain.loops, atom_loops, strict=False)
        )
        uses_loop = any(n.name == "loop" for test in chain.tests for n in test.find_all(nodes.Name))
        if not enclosing or (uses_loop and len(chain.loops) != len(atom_loops)):
            continue
        near = innermost is not None and bool(chain.loops) and chain.loops[-1] is innermost
        texts = []
        for j, test in enumerate(chain.tests):
            start, end = source.spans[test]
            texts.append(_group(" ".join(source.text[start:end].split())))
            text = " or ".join(texts)
            feature: tuple[str, Test] = (text, lambda o, k=chain_id, j=j: o.emission.branches[k] <= j)
            (local if near else remote).append(feature)
    return local, remote


def _group(text: str) -> str:
    if text.startswith("(") and text.endswith(")") and text.count("(") == 1:
        return text
    return f"({text})" if " or " in text or " and " in text or " if " in text else text


def _get(scope: dict[str, Any], name: str, key: str) -> Any:
    value = scope.get(name)
    return value.get(key) if isinstance(value, dict) else None


def _preferred_quote(source: TemplateSource) -> str:
    double = sum(1 for t in source.tokens if t.kind == "string" and t.text.startswith('"'))
    single = sum(1 for t in source.tokens if t.kind == "string" and t.text.startswith("'"))
    return '"' if double > single else "'"
