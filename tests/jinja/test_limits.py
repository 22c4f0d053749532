"""Every render runs in jinja2's immutable sandbox and is bounded in time and output size.

A hostile or broken template must end in a one-line ``RenderLimitExceeded`` (or a sandbox
``RenderError``) quickly and without allocating gigabytes, never hang or crash the process.
"""

from __future__ import annotations

import resource
import time

import pytest

from templatefix.errors import RenderError, RenderLimitExceeded, TemplatefixError
from templatefix.jinja.bounds import OUTPUT_ENV, SECONDS_ENV, Limits, configured, current
from templatefix.jinja.guard import guard, render_template
from templatefix.render import compile_template, environment, render, render_with_spans

CHAT = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"

# name -> (template, words the message must contain)
PATHOLOGICAL = {
    "string times huge int": ("{{ 'a' * 10**10 }}", "expression would build"),
    "list times huge int": ("{{ ([1] * 10**10) | length }}", "expression would build"),
    "huge power": ("{{ 7 ** (10**9) }}", "power"),
    "nested range loops": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "longer than",
    ),
    "nested loops over a prepared range, no calls inside": (
        "{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% for k in r %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        "longer than",
    ),
    "deep macro recursion": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion"),
    "exponential macro tree": (
        "{% macro f(n) %}{% if n < 60 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}{{ f(0) }}",
        "longer than",
    ),
    "doubling with ~": (
        "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s | length }}",
        "concatenation would build",
    ),
    "doubling with +": (
        "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}{{ ns.s | length }}",
        "expression would build",
    ),
    "huge output from loops": (
        "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxxxxxxxx{% endfor %}{% endfor %}",
        "output reached",
    ),
    "center filter": ("{{ 'a' | center(10**10) }}", "center filter"),
    "indent filter": ("{{ ('a\\n' * 1000) | indent(10**8) }}", "indent filter"),
    "str.ljust": ("{{ 'a'.ljust(10**10) }}", "str.ljust"),
    "str.format width": ("{{ '{:>10000000000}'.format('a') }}", "format width"),
    "str.format dynamic width": ("{{ '{:>{}}'.format('a', 10**10) }}", "format width"),
    "percent width": ("{{ '%10000000000s' % 'a' }}", "format width"),
    "percent precision": ("{{ '%.10000000000f' % 1.0 }}", "format width"),
    "format filter": ("{{ '%10000000000s' | format('a') }}", "format width"),
    "repeated replace": (
        "{% set ns = namespace(s='aaaaaaaaaa') %}{% for i in range(20) %}"
        "{% set ns.s = ns.s.replace('a', 'aaaaaaaaaa') %}{% endfor %}{{ ns.s | length }}",
        "replace would build",
    ),
    "repeated join": (
        "{% set ns = namespace(s=['aaaaaaaaaa']) %}{% for i in range(40) %}"
        "{% set ns.s = [ns.s | join, ns.s | join] %}{% endfor %}",
        "join filter",
    ),
}


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_template_stops_with_a_clear_error(name: str) -> None:
    template, words = PATHOLOGICAL[name]
    rss_before = _max_rss_mb()
    start = time.monotonic()
    with configured(max_seconds=1.0, max_output_chars=1_000_000):
        with pytest.raises(RenderLimitExceeded) as caught:
            render(template, [{"role": "user", "content": "hi"}])
    elapsed = time.monotonic() - start
    message = str(caught.value)
    assert words in message
    assert "\n" not in message
    assert "TEMPLATEFIX_MAX_" in message or "recursion" in message  # says which knob to turn
    assert elapsed < 5, f"{name} took {elapsed:.1f}s"
    # ru_maxrss is a high-water mark: a blow-up to gigabytes would show here.
    assert _max_rss_mb() - rss_before < 500


def test_limits_are_configurable_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    template = "{{ 'a' * 50 }}"
    assert render(template, []) == "a" * 50
    monkeypatch.setenv(OUTPUT_ENV, "10")
    with pytest.raises(RenderLimitExceeded, match="limit of 10 "):
        render(template, [])
    monkeypatch.setenv(SECONDS_ENV, "0.2")
    assert current() == Limits(max_seconds=0.2, max_output_chars=10)
    monkeypatch.setenv(SECONDS_ENV, "soon")
    with pytest.raises(RenderLimitExceeded, match="not a number"):
        current()


def test_configured_overrides_the_environment_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OUTPUT_ENV, "10")
    with configured(max_output_chars=1000):
        assert render("{{ 'a' * 50 }}", []) == "a" * 50
    with pytest.raises(RenderLimitExceeded):
        render("{{ 'a' * 50 }}", [])


def test_output_limit_counts_what_is_yielded() -> None:
    template = "{% for i in range(30) %}0123456789{% endfor %}"
    with configured(max_output_chars=300):
        assert len(render(template, [])) == 300
    with configured(max_output_chars=299), pytest.raises(RenderLimitExceeded, match="output reached"):
        render(template, [])


def test_time_limit_is_enforced_and_the_next_render_is_unaffected() -> None:
    slow = "{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}"
    start = time.monotonic()
    with configured(max_seconds=0.3), pytest.raises(RenderLimitExceeded, match="longer than 0.3 s"):
        render(slow, [])
    assert time.monotonic() - start < 3
    # No exception from the watchdog may leak into later work.
    for _ in range(50):
        assert render(CHAT, [{"role": "user", "content": "x"}]) == "<user>x</s>"
    time.sleep(0.05)


def test_nested_guards_keep_the_outer_deadline() -> None:
    template = environment().from_string(
        "{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}"
    )
    start = time.monotonic()
    with pytest.raises(RenderLimitExceeded, match="0.2 s"):
        with guard(Limits(max_seconds=0.2)):
            with guard(Limits(max_seconds=60)):
                template.render()
    assert time.monotonic() - start < 3


def test_guard_covers_templates_compiled_from_the_shared_environment() -> None:
    """What analysis.instrument does: compile from ``environment()`` and render inside ``guard()``."""
    template = environment().from_string("{{ 'ab' * n }}")
    assert template.render(n=3) == "ababab"  # no guard: plain rendering
    with guard(Limits(max_output_chars=5)), pytest.raises(RenderLimitExceeded):
        template.render(n=3)


def test_hooks_change_no_text_and_spans() -> None:
    """Intercepted operators, ``~`` and filters render as jinja2's plain sandbox would."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = (
        "{% set ns = namespace(s='') %}{% for m in messages %}{% set ns.s = ns.s ~ m.role ~ '|' %}"
        "{{ '%-6s' % m.role }}{{ m.content * 2 }}{{ 2 ** 3 }}{{ (m.content + '!') | center(9) }}"
        "{{ '{:>4}'.format(loop.index) }}{{ ' x'.join(['a', 'b']) }}{{ m.content | replace('h', 'H') }}"
        "{% generation %}{{ m.content ~ 7 }}{% endgeneration %}{% endfor %}{{ ns.s | indent(2) }}"
    )
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    plain.globals["namespace"] = environment().globals["namespace"]
    expected = plain.from_string(template.replace("{% generation %}", "").replace("{% endgeneration %}", ""))
    text, spans = render_with_spans(template, messages)
    assert text == expected.render(messages=messages)
    assert [text[a:b] for a, b in spans] == ["hi7", "ho7"]


def test_constant_folding_does_not_allocate_at_compile_time() -> None:
    # jinja2 folds constant expressions while compiling; intercepted operators and bounded filters
    # must keep it from building the value then.
    rss_before = _max_rss_mb()
    compile_template("{{ 'a' * 10**10 }}{{ 'b' | center(10**10) }}")
    assert _max_rss_mb() - rss_before < 500


@pytest.mark.parametrize(
    "template, words",
    [
        ("{{ ''.__class__.__mro__ }}", "unsafe"),
        ("{{ messages.__class__.__base__.__subclasses__() }}", "unsafe"),
        ("{% set _ = messages.append({'role': 'x'}) %}", "unsafe"),
        ("{% set _ = messages[0].update({'role': 'x'}) %}", "unsafe"),
        ("{{ raise_exception.__globals__.os }}", "unsafe"),
        ("{{ strftime_now.__globals__['__builtins__'] }}", "unsafe"),
    ],
)
def test_sandbox_escapes_are_refused_clearly(template: str, words: str) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(RenderError) as caught:
        render(template, messages)
    assert words in str(caught.value)
    assert isinstance(caught.value, TemplatefixError)
    assert messages == [{"role": "user", "content": "hi"}]  # inputs untouched


def test_namespace_with_underscore_names_leaks_nothing() -> None:
    """transformers 5 refuses underscore names on a namespace; 4.x stores them, but reading one
    back is still an unsafe attribute, so nothing leaks either way."""
    template = "{% set ns = namespace(__class__=1) %}[{{ ns.__class__ }}]"
    try:
        text = render(template, [])
    except RenderError as error:
        assert "underscore" in str(error)
    else:
        assert text == "[]"


@pytest.mark.parametrize(
    "expression",
    ["raise_exception.__globals__", "strftime_now.__code__", "messages.__class__", "''.__class__"],
)
def test_unsafe_attributes_render_as_nothing(expression: str) -> None:
    """Printing an unsafe attribute gives an empty undefined, never the object."""
    assert render("[{{ " + expression + " }}]", []) == "[]"


def test_limits_reject_nonsense_values() -> None:
    with pytest.raises(ValueError):
        Limits(max_seconds=0)
    with pytest.raises(ValueError):
        Limits(max_output_chars=-1)


def test_render_template_is_render_with_bounds() -> None:
    template = environment().from_string("{% for m in messages %}{{ m }}-{% endfor %}{{ 'z' * n }}")
    variables = {"messages": ["a", "b"], "n": 3}
    assert render_template(template, **variables) == template.render(**variables)
    with configured(max_output_chars=4), pytest.raises(RenderLimitExceeded, match="output reached"):
        render_template(template, messages=["a", "b", "c"], n=0)
