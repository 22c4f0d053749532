"""Outputs proven unreachable from the AST (``templatefix.unreachable``): values that are the same on
every path (``{% set %}`` names, namespace attributes) decide tests, and the proof never claims an
output some render writes.

Every template here writes its outputs as ``{{ 'oN' }}`` so that a render shows which it reached:
each test checks its claim against renders over many inputs, so a wrong proof fails here.
"""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from templatefix.coverage import measure
from templatefix.source import TemplateSource
from templatefix.unreachable import dead_outputs, dead_reasons

ENV = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"])
_UNSET = object()
#: Inputs every template here is rendered with: a caller's flag, a list, names a ``{% set %}``
#: may or may not override.
INPUTS = [
    {"flag": flag, "xs": xs, "x": x}
    for flag, xs, x in itertools.product(
        [True, False, None, "a", 0, _UNSET],
        [[], [1], [0, "a"], [None, 1, True]],
        [_UNSET, 1, None, "", " ", "a", " <t> ", "<t>", ["<t>"], [], {"a": 1}],
    )
]


def _dead(template: str) -> set[str]:
    """The ``oN`` outputs proven dead."""
    tree = ENV.parse(template)
    return {node.value for node in dead_outputs(tree) if isinstance(node, nodes.Const)}


def _rendered(template: str) -> set[str]:
    """The ``oN`` outputs some render over :data:`INPUTS` writes."""
    compiled = ENV.from_string(template)
    seen: set[str] = set()
    for values in INPUTS:
        try:
            text = compiled.render(**{k: v for k, v in values.items() if v is not _UNSET})
        except Exception:  # a render that fails writes nothing
            continue
        seen |= set(re.findall(r"o\d+", text))
    return seen


def _outputs(template: str) -> set[str]:
    return set(re.findall(r"'(o\d+)'", template))


def _check(template: str, dead: set[str]) -> None:
    """``dead`` are exactly the outputs proven dead, no render writes them, and every other output
    is written by some render (so the test would catch a proof claiming it)."""
    assert _dead(template) == dead
    assert _rendered(template) == _outputs(template) - dead


# --- proven dead -------------------------------------------------------------------------------


def test_a_namespace_flag_set_on_every_branch_is_known_after_the_if() -> None:
    # both branches set the flag (through an inner test on its known value): the loop tests it
    _check(
        "{% set emit = namespace(started=false) %}"
        "{% if flag %}{% if not emit.started %}{{ 'o1' }}{% set emit.started = true %}{% endif %}"
        "{% else %}{% if not emit.started %}{{ 'o2' }}{% set emit.started = true %}{% endif %}{% endif %}"
        "{% for m in xs %}{% if not emit.started %}{{ 'o3' }}{% set emit.started = true %}{% endif %}"
        "{{ 'o4' }}{% endfor %}",
        {"o3"},
    )


def test_a_constant_set_before_a_chain_decides_it() -> None:
    # the caller's ``x`` is overridden: the first test is always true, the elif never runs
    _check(
        "{% set x = 'default' %}{% if x is none or x == 'default' %}{{ 'o1' }}"
        "{% elif x == 'yaml' %}{{ 'o2' }}{% else %}{{ 'o3' }}{% endif %}",
        {"o2", "o3"},
    )


def test_a_macro_runs_with_the_namespace_of_its_call_site() -> None:
    # the first call finds the flag true; only the second call takes the "not first" branch
    template = (
        "{% set sys = namespace(first=true) %}"
        "{% macro part(n) %}{% if not sys.first %}{{ n }}{% endif %}{% set sys.first = false %}{% endmacro %}"
        "{% macro head() %}{% if not sys.first %}{{ 'o1' }}{% endif %}{% set sys.first = false %}"
        "{{ 'o2' }}{% endmacro %}"
        "{% if flag %}{{ head() }}{{ part('o3') }}{% endif %}"
    )
    _check(template, {"o1"})


def test_a_break_ends_the_iteration_and_an_empty_list_runs_no_iteration() -> None:
    _check(
        "{% set none_yet = [] %}{% for m in none_yet %}{{ 'o1' }}{% endfor %}"
        "{% for m in xs %}{{ 'o2' }}{% break %}{{ 'o3' }}{% endfor %}",
        {"o1", "o3"},
    )


def test_a_namespace_created_in_the_loop_is_fresh_every_iteration() -> None:
    _check(
        "{% for m in xs %}{% set it = namespace(seen=false) %}{% if it.seen %}{{ 'o1' }}{% endif %}"
        "{% set it.seen = true %}{{ 'o2' }}{% endfor %}",
        {"o1"},
    )


def test_a_recursive_macro_leaves_the_rest_of_the_proof() -> None:
    # macros are run each on its own then: a constant still decides a test outside them
    _check(
        "{% macro r(n) %}{% if n %}{{ 'o2' }}{{ r(n - 1) }}{% endif %}{% endmacro %}"
        "{% set x = 'a' %}{% if x == 'b' %}{{ 'o1' }}{% endif %}{{ r(xs|length) }}",
        {"o1"},
    )


def test_a_name_set_in_a_loop_is_not_seen_after_it_but_a_namespace_attribute_is() -> None:
    _check(
        "{% set hit = false %}{% set ns = namespace(hit=false) %}"
        "{% for m in xs %}{% set hit = true %}{% set ns.hit = true %}{% endfor %}"
        "{% if hit %}{{ 'o1' }}{% endif %}{% if ns.hit %}{{ 'o2' }}{% endif %}"
        "{% if not ns.hit %}{{ 'o3' }}{% endif %}",
        {"o1"},
    )


def test_a_name_set_in_a_loop_body_starts_every_iteration_with_its_value_from_before() -> None:
    # Jinja does not carry a body's {% set %} over to the next iteration: `first` is true at the
    # top of every iteration (the shape of a `{% if not first %}, {% endif %}` separator)
    _check(
        "{% set first = true %}{% for m in xs %}{% if not first %}{{ 'o1' }}{% endif %}"
        "{% set first = false %}{% if not first %}{{ 'o2' }}{% endif %}{% endfor %}",
        {"o1"},
    )


def test_a_string_built_around_a_piece_that_is_not_space_is_never_empty() -> None:
    # the shape of a reasoning template's history branch: ``c`` is a prefixed string, a string
    # holding a tag, or a true value that is not a string; printed and trimmed it is never empty
    _check(
        "{% set c = x|default('', true) %}"
        "{% if c is string %}{% if '<t>' not in c and '</t>' not in c %}{% set c = '<t></t>' ~ c %}"
        "{% endif %}"
        "{% else %}{% set c = c %}{% endif %}"
        "{% set c = c|default('', true)|string %}"
        "{% if '<t>' in c and '</t>' in c %}{% set c = '<t></t>' ~ c.split('</t>')[-1] %}{% endif %}"
        "{% set c = c|trim %}"
        "{% if c|length > 0 %}{{ 'o1' }}{% else %}{{ 'o2' }}{% endif %}"
        "{% if c %}{{ 'o3' }}{% endif %}{% if not c %}{{ 'o4' }}{% endif %}",
        {"o2", "o4"},
    )


def test_kinds_decide_tests_of_types_and_definedness() -> None:
    _check(
        "{% set a = 'p' ~ x %}{% set b = x|string %}{% set e = x if x is string else '' %}"
        "{% if a is string %}{{ 'o1' }}{% else %}{{ 'o2' }}{% endif %}"
        "{% if a is none %}{{ 'o3' }}{% endif %}{% if b is defined %}{{ 'o4' }}{% endif %}"
        "{% if b|length == 0 %}{{ 'o5' }}{% endif %}{% if (a or flag)|length > 0 %}{{ 'o6' }}{% endif %}"
        "{% if e is string %}{{ 'o7' }}{% else %}{{ 'o8' }}{% endif %}",
        {"o2", "o3", "o8"},
    )


def test_a_flag_set_to_different_true_values_is_true() -> None:
    _check(
        "{% set ns = namespace(mode=none) %}"
        "{% if flag %}{% set ns.mode = 'a' %}{% else %}{% set ns.mode = [1] %}{% endif %}"
        "{% if not ns.mode %}{{ 'o1' }}{% else %}{{ 'o2' }}{% endif %}",
        {"o1"},
    )


def test_a_macro_call_that_writes_nothing_where_it_is_called() -> None:
    # the flush writes only after a tool output was seen: the first call, before any, writes nothing
    _check(
        "{% set ns = namespace(open=false) %}"
        "{% macro flush() %}{% if ns.open %}{{ 'o1' }}{% set ns.open = false %}{% endif %}{% endmacro %}"
        "{{ flush() }}{% for m in xs %}{% if m %}{% set ns.open = true %}{% else %}{{ flush() }}{% endif %}"
        "{% endfor %}{{ flush() }}",
        set(),
    )
    tree = ENV.parse(
        "{% set ns = namespace(open=false) %}"
        "{% macro flush() %}{% if ns.open %}{{ 'o1' }}{% set ns.open = false %}{% endif %}{% endmacro %}"
        "{{ flush() }}{% for m in xs %}{% if m %}{% set ns.open = true %}{% else %}{{ flush() }}{% endif %}"
        "{% endfor %}{{ flush() }}"
    )
    calls = [child for output in tree.find_all(nodes.Output) for child in output.nodes]
    calls = [child for child in calls if isinstance(child, nodes.Call)]
    reasons = dead_reasons(tree)
    # the first call is silent; the later ones may write
    assert [id(call) in reasons for call in calls] == [True, False, False]
    assert reasons[id(calls[0])] == "the macro flush writes nothing when called here"


def test_an_output_evaluating_tojson_of_a_generator_is_only_in_failed_renders() -> None:
    _check(
        "{% if flag %}{{ 'o1' }}{{ xs | map('string') | tojson }}{{ 'o2' }}{% endif %}{{ 'o3' }}"
        "{% if x %}{{ 'o4' }}{% set y = xs | map('string') | list | tojson %}{{ y }}{% endif %}",
        {"o1", "o2"},
    )
    # a successful render never takes the failing branch: ``flag`` is false after it
    _check(
        "{% if flag %}{{ xs | map('string') | tojson }}{% endif %}{% if flag %}{{ 'o1' }}{% endif %}",
        {"o1"},
    )


# --- look alike, but reachable: no proof may claim these -----------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        # set on one branch only
        "{% set ns = namespace(f=false) %}{% if flag %}{% set ns.f = true %}{% endif %}"
        "{% if ns.f %}{{ 'o1' }}{% else %}{{ 'o2' }}{% endif %}",
        # set in a loop that may run zero times
        "{% set ns = namespace(f=false) %}{% for m in xs %}{% set ns.f = true %}{% endfor %}"
        "{% if not ns.f %}{{ 'o1' }}{% else %}{{ 'o2' }}{% endif %}",
        # a later iteration sees what an earlier one set
        "{% set ns = namespace(seen=false) %}{% for m in xs %}{% if ns.seen %}{{ 'o1' }}{% endif %}"
        "{% set ns.seen = true %}{% endfor %}",
        # continue and break carry the state they leave with
        "{% set ns = namespace(f=false) %}{% for m in xs %}{% if m %}{% set ns.f = true %}{% continue %}"
        "{% endif %}{% endfor %}{% if ns.f %}{{ 'o1' }}{% endif %}",
        "{% set ns = namespace(f=false) %}{% for m in xs %}{% set ns.f = true %}{% break %}{% endfor %}"
        "{% if ns.f %}{{ 'o1' }}{% endif %}",
        # set earlier in the same iteration, or by the caller before a loop that sets it
        "{% set first = true %}{% for m in xs %}{% set first = false %}{% if not first %}{{ 'o1' }}"
        "{% endif %}{% endfor %}",
        "{% for m in xs %}{% if x %}{{ 'o1' }}{% endif %}{% set x = true %}{% endfor %}",
        # the caller's value is read before the template sets the name
        "{% if x %}{{ 'o1' }}{% endif %}{% set x = false %}",
        # a loop variable or a with-target shadows the name
        "{% set x = false %}{% for x in xs %}{% if x %}{{ 'o1' }}{% endif %}{% endfor %}",
        "{% set x = false %}{% with x = flag %}{% if x %}{{ 'o1' }}{% endif %}{% endwith %}",
        # the namespace is passed to a macro: an alias changes it
        "{% macro m(n) %}{% set n.f = true %}{% endmacro %}{% set ns = namespace(f=false) %}"
        "{% if flag %}{{ m(ns) }}{% endif %}{% if ns.f %}{{ 'o1' }}{% endif %}",
        # a macro is called in one side of a conditional expression only
        "{% set ns = namespace(f=false) %}{% macro m() %}{% set ns.f = true %}{% endmacro %}"
        "{{ m() if flag else '' }}{% if ns.f %}{{ 'o1' }}{% endif %}{% if not ns.f %}{{ 'o2' }}{% endif %}",
        # a macro is called through a name: the namespace it writes is not followed
        "{% set ns = namespace(f=false) %}{% macro m() %}{% set ns.f = true %}{% endmacro %}"
        "{% set call = m %}{% if flag %}{{ call() }}{% endif %}{% if ns.f %}{{ 'o1' }}{% endif %}",
        # a macro called from a {% call %} block writes the namespace
        "{% set ns = namespace(f=false) %}{% macro m() %}{% set ns.f = true %}{{ caller() }}{% endmacro %}"
        "{% if flag %}{% call m() %}{{ 'o2' }}{% endcall %}{% endif %}{% if ns.f %}{{ 'o1' }}{% endif %}",
        # a recursive macro writes the namespace
        "{% set ns = namespace(f=false) %}{% macro r(n) %}{% if n %}{% set ns.f = true %}{{ r(n - 1) }}"
        "{% endif %}{% endmacro %}{{ r(xs|length) }}{% if ns.f %}{{ 'o1' }}{% endif %}",
        # a macro writes the namespace at its second call only
        "{% set ns = namespace(n=0, f=false) %}"
        "{% macro m() %}{% if ns.n == 1 %}{% set ns.f = true %}{% endif %}{% set ns.n = 1 %}{% endmacro %}"
        "{% for v in xs %}{{ m() }}{% endfor %}{% if ns.f %}{{ 'o1' }}{% endif %}",
        # the value is a loop filter's: the flag is set only for items that pass
        "{% set ns = namespace(f=false) %}{% for m in xs if m %}{% set ns.f = true %}{% endfor %}"
        "{% if ns.f %}{{ 'o1' }}{% else %}{{ 'o2' }}{% endif %}",
        # the for loop's else runs when no item did
        "{% set ns = namespace(f=true) %}{% for m in xs %}{% else %}{% set ns.f = false %}{% endfor %}"
        "{% if not ns.f %}{{ 'o1' }}{% else %}{{ 'o2' }}{% endif %}",
        # a string without the prefix may be empty; so may one holding only whitespace, trimmed
        "{% set c = x|default('', true)|string|trim %}"
        "{% if c|length > 0 %}{{ 'o1' }}{% else %}{{ 'o2' }}{% endif %}",
        "{% set c = ' ' ~ x %}{% set c = c|trim %}"
        "{% if c|length > 0 %}{{ 'o1' }}{% else %}{{ 'o2' }}{% endif %}",
        # a piece of whitespace in it says it is not empty, but trimming may empty it
        "{% set c = x|string %}{% if ' ' in c %}{% set c = c|trim %}"
        "{% if c %}{{ 'o1' }}{% else %}{{ 'o2' }}{% endif %}{% endif %}",
        # the tag test on the other branch of an ``or`` says nothing of ``c`` here
        "{% set c = x|string %}{% if '<t>' in c or flag %}{% if c|length > 0 %}{{ 'o1' }}{% else %}"
        "{{ 'o2' }}{% endif %}{% endif %}",
        # undefined prints as nothing; a false value is not replaced by ``default`` without ``true``
        "{% set c = x|default('') %}{% if c|string|length > 0 %}{{ 'o1' }}{% else %}{{ 'o2' }}{% endif %}",
        # the name is set again after its test: the test says nothing of the new value
        "{% set c = x|string %}{% if '<t>' in c %}{% set c = c.split('<t>')[0] %}"
        "{% if c %}{{ 'o1' }}{% else %}{{ 'o2' }}{% endif %}{% endif %}",
        # tojson of a list, of a generator made a list, or of a generator only on one side
        "{{ 'o1' }}{{ xs | list | tojson }}{{ (xs | map('string') | tojson) if not xs else '' }}{{ 'o2' }}",
        "{% if flag %}{{ 'o1' }}{{ flag and xs | select | list | tojson }}{% endif %}",
        # a macro that writes at some call sites: each of those calls writes
        "{% macro m(v) %}{% if v %}{{ 'o1' }}{% endif %}{% endmacro %}{{ m(false) }}{{ m(flag) }}",
        # ``+`` with a number on one side
        "{% set c = (flag + 1) if flag is number else '' %}"
        "{% if c %}{{ 'o1' }}{% else %}{{ 'o2' }}{% endif %}",
    ],
)
def test_reachable_outputs_are_not_claimed(template: str) -> None:
    _check(template, set())


# --- the property: nothing proven dead is ever written ---------------------------------------------


def _tag(statement: str) -> str:
    return "{% " + statement + " %}"


class _Random:
    """A random template over names, a namespace, ifs, loops (break, continue, filters), macros
    that write the namespace (called in conditional expressions too), set blocks, with, filter
    and call blocks."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.count = 0

    def output(self) -> str:
        self.count += 1
        return "{{ 'o" + str(self.count) + "' }}"

    def value(self) -> str:
        return self.rng.choice(
            ["true", "false", "none", "0", "1", "'a'", "''", "' '", "[]", "flag", "x", "ns.a", "not ns.b"]
            + ["x == 1", "'<t>' ~ x", "x|string", "x|default('', true)", "x|trim", "ns.a ~ ''"]
            + ["x|default('', true)|string|trim", "x + 'a'", "x if x is string else ns.b", "x or 'b'"]
            + ["x.split('<t>')[-1] if x is string else x"]
        )

    def test(self, depth: int = 0, in_loop: bool = False) -> str:
        atoms = ["x", "ns.a", "ns.b", "flag", "x == 1", "x is none", "x is defined", "ns.a == 'a'"]
        atoms += ["x is string", "ns.b != 1", "true", "false"] + (["m", "loop.first"] if in_loop else [])
        atoms += ["'<t>' in x", "'<t>' not in x", "' ' in ns.a", "x|length > 0", "ns.a|length == 0"]
        atoms += ["x|trim|length > 0", "ns.b is string", "x|string|length >= 1"]
        roll = self.rng.random()
        if depth < 2 and roll < 0.2:
            return "not " + self.test(depth + 1, in_loop)
        if depth < 2 and roll < 0.45:
            word = self.rng.choice(["and", "or"])
            return f"({self.test(depth + 1, in_loop)} {word} {self.test(depth + 1, in_loop)})"
        return self.rng.choice(atoms)

    def block(self, depth: int, in_loop: bool, in_macro: bool, count: int | None = None) -> str:
        count = count if count is not None else self.rng.randint(1, 4)
        return "".join(self.statement(depth, in_loop, in_macro) for _ in range(count))

    def statement(self, depth: int, in_loop: bool, in_macro: bool) -> str:
        roll = self.rng.random()
        if roll < 0.25 or depth >= 3 and roll > 0.55:
            return self.output()
        if roll < 0.40:
            return _tag(f"set x = {self.value()}")
        if roll < 0.55:
            return _tag(f"set ns.{self.rng.choice('ab')} = {self.value()}")
        inner = depth + 1
        if roll < 0.72:
            text = _tag(f"if {self.test(0, in_loop)}") + self.block(inner, in_loop, in_macro)
            if self.rng.random() < 0.4:
                text += _tag(f"elif {self.test(0, in_loop)}") + self.block(inner, in_loop, in_macro)
            if self.rng.random() < 0.5:
                text += _tag("else") + self.block(inner, in_loop, in_macro)
            return text + _tag("endif")
        if roll < 0.84:
            iterable = self.rng.choice(["xs", "xs", "[]", "flag"])
            condition = f" if {self.test(0, True)}" if self.rng.random() < 0.2 else ""
            text = _tag(f"for m in {iterable}{condition}") + self.block(inner, True, in_macro)
            if self.rng.random() < 0.2:
                text += _tag("else") + self.block(inner, in_loop, in_macro)
            return text + _tag("endfor")
        if in_loop and roll < 0.88:
            return _tag(self.rng.choice(["break", "continue"]))
        if not in_macro and roll < 0.93:
            call = self.rng.choice(["m1", "m2"]) + "()"
            word = self.rng.choice(["and", "or"])
            return self.rng.choice(
                [
                    "{{ " + call + " }}",
                    "{{ " + f"{call} if {self.test(0, in_loop)} else ''" + " }}",
                    _tag(f"if {self.test(0, in_loop)} {word} {call}") + self.output() + _tag("endif"),
                ]
            )
        body = self.block(inner, in_loop, in_macro)
        return self.rng.choice(
            [
                _tag("set z") + body + _tag("endset") + "{{ z }}",
                _tag(f"with x = {self.value()}") + body + _tag("endwith"),
                _tag("filter trim") + body + _tag("endfilter"),
            ]
        )

    def template(self, with_call_block: bool) -> str:
        first = self.rng.choice(["false", "true", "none", "'a'"])
        head = _tag(f"set ns = namespace(a={first}, b={self.rng.choice(['1', '0', 'none'])})")
        macros = "".join(
            _tag(f"macro {name}()")
            + self.block(1, False, True)
            + ("{{ caller() }}" if with_call_block and name == "m1" else "")
            + _tag("endmacro")
            for name in ("m1", "m2")
        )
        body = self.block(0, False, False, self.rng.randint(2, 6))
        if with_call_block:
            body += _tag("call m1()") + self.block(2, False, True) + _tag("endcall")
        return head + macros + body


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), with_call_block=st.booleans())
def test_no_output_proven_dead_is_written(seed: int, with_call_block: bool) -> None:
    template = _Random(random.Random(seed)).template(with_call_block)
    dead = _dead(template)
    assert not dead & _rendered(template), template


def _bracket_calls(template: str) -> str:
    """Each bare ``{{ m1() }}``/``{{ m2() }}`` between ``[cK`` and ``cK]`` markers (K counts them)."""
    count = itertools.count()

    def bracket(match: re.Match[str]) -> str:
        k = next(count)
        return "{{ '[c" + str(k) + "' }}" + match.group(0) + "{{ 'c" + str(k) + "]' }}"

    return re.sub(r"\{\{ m[12]\(\) \}\}", bracket, template)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_no_macro_call_proven_silent_writes(seed: int) -> None:
    """A call claimed to write nothing writes nothing between its markers in any render."""
    template = _bracket_calls(_Random(random.Random(seed)).template(False))
    tree = ENV.parse(template)
    reasons = dead_reasons(tree)
    calls = [
        child
        for output in tree.find_all(nodes.Output)
        for child in output.nodes
        if isinstance(child, nodes.Call) and isinstance(child.node, nodes.Name)
    ]
    calls.sort(key=lambda call: call.lineno)
    silent = {k for k, call in enumerate(calls) if "writes nothing" in reasons.get(id(call), "")}
    compiled = ENV.from_string(template)
    for values in INPUTS:
        try:
            text = compiled.render(**{k: v for k, v in values.items() if v is not _UNSET})
        except Exception:  # a render that fails writes nothing
            continue
        for k in silent:
            for written in re.findall(r"\[c" + str(k) + r"(.*?)c" + str(k) + r"\]", text):
                assert written == "", (k, template)


# --- corpus templates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "line", "reason"),
    [
        # emit.started is set true by both branches of the tools test before the message loop
        ("rnj-1.gguf.jinja", 78, "'not emit.started' is false in every render (emit.started is true"),
        # tool_output_format is set to "default" before the chain that tests it
        ("unsloth-Apriel-1.5.jinja", 23, "is true in every render (tool_output_format is 'default'"),
        # render_system_message is called once, first: sys_ns.is_first_block is still true there
        ("Solar-Open-100B.jinja", 21, "'not sys_ns.is_first_block' is false in every render"),
    ],
)
def test_corpus_outputs_behind_a_value_set_on_every_path_are_dead(
    corpus_dir: Path, name: str, line: int, reason: str
) -> None:
    text = next(corpus_dir.glob(f"templates/**/{name}")).read_text(encoding="utf-8")
    coverage = measure(text, [])
    dead = [o for o in coverage.outputs if o.status == "dead-branch"]
    assert [o.line for o in dead] == [line]
    assert dead[0].condition is not None and reason in dead[0].condition
    # the proof is the flow analysis's, not the older scope rule's
    tree = TemplateSource.parse(text).ast
    assert all("every render" in why for why in dead_reasons(tree).values())
