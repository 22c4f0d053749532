"""Constraint-directed reach (``templatefix.solve``): path conditions, the conversations built to
satisfy them, and the outputs proven unsatisfiable."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import Environment, nodes

from templatefix import patch_template
from templatefix.analysis.regions import instrumented_for
from templatefix.conditions import PathConditions, detected_drops_none, unsatisfiable
from templatefix.coverage import _never_writes, measure, probe_features
from templatefix.probes import fixed_battery, probe_battery, random_conversation
from templatefix.solve import reach
from templatefix.template import ChatTemplate


def _plain_battery(template: str) -> list[Any]:
    """The fixed battery without the rich tool schema, whose keys (``enum``, ``items``, a list of
    types) would reach what these tests want the solver to build."""
    return [probe for probe in fixed_battery(template) if "rich_schema" not in probe.name]


def _reached_only_by_solving(template: str) -> list[Any]:
    """The solver's probes, after checking that the fixed battery alone leaves something
    unreached and that the battery plus the solver's probes reach every output."""
    battery = _plain_battery(template)
    assert not measure(template, battery).complete
    found = reach(template, battery)
    coverage = measure(template, battery + found)
    assert coverage.complete, [o.describe() for o in coverage.unreached]
    return found


LOOP = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"


# --- path conditions ---------------------------------------------------------------------------


def test_path_condition_negates_earlier_branches_and_follows_macro_call_sites() -> None:
    tree = Environment().parse(
        "{% macro show(x) %}{% if x.a %}A{% endif %}{% endmacro %}"
        "{% if p %}P{% elif q %}{{ show(q) }}{% else %}E{% endif %}"
    )
    conditions = PathConditions(tree)
    data = {node.data: node for node in tree.find_all(nodes.TemplateData)}
    [inside] = conditions.of(data["A"])
    assert [(type(atom.node).__name__, atom.want) for atom in inside] == [
        ("Name", False), ("Name", True), ("Getattr", True),
    ]  # fmt: skip
    [otherwise] = conditions.of(data["E"])
    assert [(atom.node.name, atom.want) for atom in otherwise] == [("p", False), ("q", False)]


# --- what the solver satisfies -----------------------------------------------------------------


def test_membership_puts_the_tool_call_name_into_the_argument_list() -> None:
    template = (
        "{% for m in messages %}{% if m.tool_calls %}{% set call = m.tool_calls[0].function %}"
        "{% if builtin_tools is defined and call.name in builtin_tools %}<|python_tag|>{{ call.name }}"
        "{% else %}{{ call.name }}{% endif %}{% else %}{{ m.content }}{% endif %}{% endfor %}"
    )
    found = _reached_only_by_solving(template)
    probe = found[0]
    names = [c["function"]["name"] for m in probe.messages for c in m.get("tool_calls") or ()]
    assert set(names) & set(probe.kwargs["builtin_tools"])


def test_membership_in_a_mapped_list_of_tool_names() -> None:
    template = (
        "{% for m in messages %}{% for c in m.tool_calls or [] %}"
        "{% if c.function.name in tools | map(attribute='function.name') | list %}known:{% endif %}"
        "{{ c.function.name }}{% endfor %}{{ m.content }}{% endfor %}"
    )
    battery = _plain_battery(template)
    mismatched = [p for p in battery if "tools" in p.kwargs]
    # the standard probes offer the tools they call: reach it from probes calling unknown tools
    for probe in mismatched:
        for tool in probe.kwargs["tools"]:
            tool["function"]["name"] = "other_" + tool["function"]["name"]
    plain = [p for p in battery if "tools" not in p.kwargs] + mismatched
    assert not measure(template, plain).complete
    assert measure(template, plain + reach(template, plain)).complete


def test_equality_with_a_literal() -> None:
    template = (
        "{% for m in messages %}{% for c in m.tool_calls or [] %}{% if c.function.name == 'python' %}"
        "<|python|>{% endif %}{{ c.function.name }}{% endfor %}{{ m.content }}{% endfor %}"
    )
    found = _reached_only_by_solving(template)
    assert any(
        c["function"]["name"] == "python" for m in found[0].messages for c in m.get("tool_calls") or ()
    )


@pytest.mark.parametrize(
    ("test", "kind"),
    [("is mapping", dict), ("is number", int), ("is none", type(None))],
)
def test_type_tests_on_a_nested_value(test: str, kind: type) -> None:
    template = (
        "{% for m in messages %}{% for c in m.tool_calls or [] %}{% if c.function.arguments " + test + " %}"
        "[typed]{% endif %}{% endfor %}{{ m.content }}{% endfor %}"
    )
    if kind is dict:  # the standard probes pass arguments as mappings: test the other side
        template = template.replace("is mapping", "is not mapping")
    found = reach(template, _plain_battery(template))
    assert measure(template, _plain_battery(template) + found).complete


def test_defined_option_and_string_tests() -> None:
    template = (
        "{% if knob is defined %}[knob]{% endif %}"
        "{% for m in messages %}{% if m.role == 'assistant' and '</think>' in m.content %}"
        "{{ m.content.split('</think>')[-1] }}{% elif m.content.startswith('/cmd') %}[cmd]{{ m.content }}"
        "{% else %}{{ m.content }}{% endif %}{% endfor %}"
    )
    _reached_only_by_solving(template)


def test_lengths_positions_and_loop_index() -> None:
    template = (
        "{% if messages | length > 6 %}[long]{% endif %}"
        "{% if messages[0].role == 'developer' %}[dev]{% endif %}"
        "{% for m in messages %}{% for c in m.tool_calls or [] %}{% if loop.index0 == 2 %}[third]{% endif %}"
        "{{ c.function.name }}{% endfor %}{{ m.content }}{% endfor %}"
    )
    _reached_only_by_solving(template)


def test_namespace_flag_and_conjunction() -> None:
    template = (
        "{% set ns = namespace(seen_image=false) %}"
        "{% for m in messages %}{% if m.content is not string %}{% for part in m.content %}"
        "{% if part.type == 'image' %}{% set ns.seen_image = true %}{% endif %}{% endfor %}{% endif %}"
        "{% endfor %}{% if ns.seen_image and add_vision is defined %}[vision]{% endif %}" + LOOP
    )
    _reached_only_by_solving(template)


def test_llama_3_1_builtin_tool_branch_from_its_own_shape() -> None:
    """The shape of Llama 3.1's built-in tool branch: a ``builtin_tools`` argument and a tool call
    whose name is in it, with arguments printed one by one (``not loop.last``)."""
    template = (
        "{% for message in messages %}{% if 'tool_calls' in message %}"
        "{% set tool_call = message.tool_calls[0].function %}"
        "{% if builtin_tools is defined and tool_call.name in builtin_tools %}"
        "<|python_tag|>{{ tool_call.name + '.call(' }}{% for k, v in tool_call.arguments | items %}"
        "{{ k + '=\"' + v + '\"' }}{% if not loop.last %}, {% endif %}{% endfor %}){% else %}"
        "{{ tool_call.arguments | tojson }}{% endif %}{% else %}{{ message.content }}{% endif %}{% endfor %}"
    )
    found = _reached_only_by_solving(template)
    assert all(isinstance(p.kwargs.get("builtin_tools", []), list) for p in found)


def test_the_report_names_the_condition_nothing_satisfied() -> None:
    template = "{% for m in messages %}{% if m.content | wordcount == 17 %}[seventeen]{% endif %}" + LOOP[23:]
    coverage = measure(template, probe_battery(template))
    [output] = coverage.unreached
    assert output.condition == "messages has an element and m.content | wordcount == 17"
    assert "(needs: messages has an element and m.content | wordcount == 17)" in output.describe()


# --- unsatisfiable outputs ---------------------------------------------------------------------


def _statuses(template: str) -> dict[str, str]:
    return {o.expression: o.status for o in measure(template, probe_battery(template)).outputs}


def test_message_field_tested_none_is_unsatisfiable_when_transformers_drops_none() -> None:
    """transformers 5.x drops None-valued message keys: ``content is none`` never holds there.
    Releases that keep them (4.x) can write the output, and it must not be called unsatisfiable."""
    template = (
        "{% for m in messages %}{% if m.role == 'assistant' and m['content'] is none %}[calls only]"
        "{% else %}{{ m.content }}{% endif %}{% endfor %}"
    )
    statuses = _statuses(template)
    instrumented = instrumented_for(template)
    site = next(s for s in instrumented.sites.outputs if s.literal and s.node.data == "[calls only]")
    if detected_drops_none():
        assert statuses['"[calls only]"'] == "unsatisfiable"
        assert "drops message keys whose value is None" in (unsatisfiable(template, site.id) or "")
    else:
        assert statuses['"[calls only]"'] != "unsatisfiable"
        assert unsatisfiable(template, site.id) is None


def test_a_local_set_from_a_message_field_tested_none_is_unsatisfiable() -> None:
    template = (
        "{% for m in messages %}{% set content = m['content'] %}{% if '</think>' in content %}"
        "{% set content = content.split('</think>')[-1] %}{% endif %}"
        "{% if content is none %}[x]{% else %}{{ content }}{% endif %}{% endfor %}"
    )
    assert _statuses(template)['"[x]"'] == "unsatisfiable"


def test_a_field_looped_over_earlier_on_every_message_is_iterable() -> None:
    template = (
        "{% for m in messages %}{% for part in m.content %}{% endfor %}{% endfor %}"
        "{% for m in messages %}{% if m.content is iterable %}{{ m.content | tojson }}"
        "{% else %}{{ m.content }}{% endif %}{% endfor %}"
    )
    assert _statuses(template)["{{ m.content }}"] == "unsatisfiable"
    looped_later = template.replace("{% for part in m.content %}", "{% for part in m.content or [] %}")
    assert _statuses(looped_later)["{{ m.content }}"] != "unsatisfiable"


@pytest.mark.parametrize(
    "template",
    [
        # a local that may come from the caller
        "{% for m in messages %}{% if content is none %}[x]{% endif %}{% set content = m.content %}"
        "{{ content }}{% endfor %}",
        # ``get`` gives none for a missing key
        "{% for m in messages %}{% if m.get('content') is none %}[x]{% endif %}{{ m.content }}{% endfor %}",
        # ``m`` is not always a message
        "{% set m = {'content': none} %}{% if m.content is none %}[x]{% endif %}" + LOOP,
        # a nested field keeps its None
        "{% for m in messages %}{% for c in m.tool_calls or [] %}{% if c.id is none %}[x]{% endif %}"
        "{% endfor %}{{ m.content }}{% endfor %}",
        # ``messages`` rebound to another list
        "{% set messages = [{'role': 'user', 'content': none}] %}{% for m in messages %}"
        "{% if m.content is none %}[x]{% endif %}{% endfor %}",
    ],
)
def test_none_tests_that_can_hold_are_not_called_unsatisfiable(template: str) -> None:
    assert _statuses(template).get('"[x]"') != "unsatisfiable"


def test_contradictory_tests_are_unsatisfiable_with_the_reason() -> None:
    # (``{% if tools %}{% if not tools %}`` is proven dead already by the value analysis, which
    # narrows ``tools`` to a true value on the branch; it does not narrow comparisons)
    template = (
        "{% if tools|length > 1 %}{% if not tools|length > 1 %}[never]{% endif %}[tools]{% endif %}" + LOOP
    )
    statuses = _statuses(template)
    assert statuses['"[never]"'] == "unsatisfiable" and statuses['"[tools]"'] == "reached"
    coverage = measure(template, probe_battery(template))
    [never] = [o for o in coverage.outputs if o.status == "unsatisfiable"]
    assert "wanted true and false" in (never.condition or "")


def test_loop_over_a_list_set_empty_is_dead() -> None:
    template = "{% set tools = [] %}{% for t in tools %}[{{ t.name }}]{% endfor %}" + LOOP
    statuses = _statuses(template)
    assert statuses["{{ t.name }}"] == "dead-branch"


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10_000))
def test_an_unsatisfiable_output_is_never_written(seed: int) -> None:
    """Soundness on random conversations: what is proven unsatisfiable no render writes."""
    template = (
        "{% for m in messages %}{% if m.role == 'assistant' and m.content is none %}[none]"
        "{% elif m.tool_calls is defined and m.tool_calls[0].function.name in (builtin or []) %}[builtin]"
        "{% endif %}{{ m.content }}{% endfor %}"
    )
    parsed = ChatTemplate.parse(template)
    instrumented = instrumented_for(parsed)
    proven = {k for k, v in _never_writes(parsed, instrumented).items() if v == "unsatisfiable"}
    assert bool(proven) == detected_drops_none()  # `content is none` holds where None keys are kept
    features = probe_features(parsed, random_conversation(seed)) or frozenset()
    assert not proven & {site for kind, site, _ in features if kind == "out"}


# --- the corpus --------------------------------------------------------------------------------


@pytest.mark.corpus
def test_llama_3_1_official_template_is_verified_with_full_coverage(corpus_dir: Any) -> None:
    text = (corpus_dir / "templates" / "llama" / "Llama-3.1-8B-Instruct.jinja").read_text(encoding="utf-8")
    result = patch_template(text)
    assert result.verified and result.status in ("exact", "flagged"), result.reasons
    coverage = result.report.coverage
    assert coverage.complete and not coverage.unreached
    battery = probe_battery(text)
    assert any(
        call["function"]["name"] in (probe.kwargs.get("builtin_tools") or [])
        for probe in battery
        for message in probe.messages
        for call in message.get("tool_calls") or ()
    )


@pytest.mark.corpus
def test_no_corpus_output_proven_unsatisfiable_is_reached(corpus_templates: list[tuple[str, str]]) -> None:
    """Every output :func:`unsatisfiable` proves unreachable stays unwritten by the fixed battery
    and random conversations, over the whole corpus."""
    checked = 0
    for name, text in corpus_templates:
        parsed = ChatTemplate.parse(text)
        instrumented = instrumented_for(parsed)
        statuses = _never_writes(parsed, instrumented)
        proven = {site for site, status in statuses.items() if status == "unsatisfiable"}
        if not proven:
            continue
        checked += 1
        for probe in fixed_battery(text) + [random_conversation(seed) for seed in range(40)]:
            features = probe_features(parsed, probe) or frozenset()
            assert not proven & {site for kind, site, _ in features if kind == "out"}, (name, probe.name)
    # where transformers keeps None-valued keys (4.56), 'is none' on a message field is reachable
    assert checked >= (5 if detected_drops_none() else 4)


# --- tool schemas, message fields and locals the template reads --------------------------------

#: A recursive schema macro with three recursive call sites (items, additionalProperties, the
#: members of a type list) besides the template's own call.
SCHEMA_MACRO = (
    "{% macro ty(spec) %}{% if spec.type == 'string' %}str"
    "{% elif spec.type == 'array' %}list[{{ ty(spec['items']) }}]"
    "{% elif spec.type == 'object' %}dict{% if spec.additionalProperties is defined %}"
    "[{{ ty(spec.additionalProperties) }}]{% endif %}"
    "{% elif spec.type is string %}{{ spec.type }}"
    "{% else %}{% for t in spec.type %}{{ ty({'type': t}) }}{% endfor %}{% endif %}{% endmacro %}"
)


def _reached_after_solving(template: str, expressions: set[str]) -> list[Any]:
    """The solver's probes, after checking that the outputs written as ``expressions`` are
    unreached by the fixed battery and reached with the solver's probes."""
    battery = _plain_battery(template)
    before = {o.expression for o in measure(template, battery).unreached}
    assert expressions <= before
    found = reach(template, battery)
    after = {o.expression for o in measure(template, battery + found).unreached}
    assert not expressions & after, after
    return found


def test_a_recursive_macro_is_reached_through_the_templates_own_call() -> None:
    # three recursive call sites come before the template's own call: the alternatives of the
    # path condition must not all be chains of the macro calling itself
    template = (
        SCHEMA_MACRO + "{% for tool in tools or [] %}{% set f = tool.function %}"
        "{% for name, p in f.parameters.properties | items %}{{ name }}: {{ ty(p) }}{% endfor %}{% endfor %}"
        + LOOP
    )
    found = _reached_after_solving(template, {'"list["', '"dict"'})
    kinds = {
        str(p.get("type"))
        for probe in found
        for tool in probe.kwargs.get("tools", [])
        for p in tool["function"]["parameters"]["properties"].values()
    }
    assert "array" in kinds


def test_empty_properties_stay_a_mapping() -> None:
    template = (
        "{% for tool in tools or [] %}{{ tool.function.name }}:"
        "{% for name, p in tool.function.parameters.properties | items %}{{ name }}{% endfor %}"
        "{% if tool.function.parameters.properties | length == 0 %}{{ '{}' }}{% endif %}{% endfor %}" + LOOP
    )
    found = _reached_only_by_solving(template)
    assert any(
        tool["function"]["parameters"]["properties"] == {}
        for probe in found
        for tool in probe.kwargs.get("tools", [])
    )


def test_a_message_field_read_only_by_the_output_is_made_present() -> None:
    template = (
        "{% for m in messages %}{% if m.role == 'assistant' and m.tool_calls %}"
        "<plan>{{ m.tool_plan }}</plan>{% for c in m.tool_calls %}{{ c.function.name }}{% endfor %}"
        "{% endif %}{{ m.content }}{% endfor %}"
    )
    found = _reached_only_by_solving(template)
    assert any(m.get("tool_plan") for probe in found for m in probe.messages)


def test_a_name_set_to_a_constant_stands_for_it() -> None:
    template = (
        "{% for m in messages %}{% set tag = 'CONTINUE ' %}{% if m.role == 'assistant' and "
        "m.content.endswith(tag) %}{{ m.content[:-9] }}[cont]{% else %}{{ m.content }}{% endif %}{% endfor %}"
    )
    found = _reached_only_by_solving(template)
    assert any(str(m.get("content", "")).endswith("CONTINUE ") for probe in found for m in probe.messages)


def test_a_local_set_to_a_macros_output_is_changed_through_its_argument() -> None:
    template = (
        "{% macro text(c) %}{% if c is string %}{{ c }}{% else %}{{ c | map(attribute='text') | join }}"
        "{% endif %}{% endmacro %}"
        "{% for m in messages %}{% set content = text(m.content) %}"
        "{% if content.startswith('/cmd') %}[command]{% endif %}{{ content }}{% endfor %}"
    )
    _reached_only_by_solving(template)


def test_a_key_read_through_get() -> None:
    template = (
        "{% for tool in tools or [] %}{% for name, p in tool.function.parameters.properties | items %}"
        "{{ name }}{% if p.get('enum') %}: {{ p.enum | join('|') }}{% endif %}{% endfor %}{% endfor %}" + LOOP
    )
    found = _reached_only_by_solving(template)
    assert any(
        p.get("enum")
        for probe in found
        for tool in probe.kwargs.get("tools", [])
        for p in tool["function"]["parameters"]["properties"].values()
    )
