"""Coverage of a template's outputs by the probes (SPEC §4), the reads analysis and the search."""

from __future__ import annotations

import json
import statistics
from typing import Any

import pytest
from hypothesis import given, settings
from jinja2 import Environment
from support.strategies import random_probes

from templatefix.analysis.regions import instrumented_for
from templatefix.cli import main
from templatefix.conversation import Probe
from templatefix.coverage import measure, probe_features, search
from templatefix.derive import Mutator, applicable, candidates, tool_zoo
from templatefix.patch.api import patch_template
from templatefix.probes import fixed_battery, probe_battery
from templatefix.reads import MESSAGE, template_reads_of
from templatefix.render import render
from templatefix.shapes import make_probe
from templatefix.unreachable import dead_outputs
from templatefix.verify import verify

CALL_ID = (
    "{% for m in messages %}<|{{ m.role }}|>"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "{% if c.id is defined %}[id={{ c.id }}]{% else %}[no-id]{% endif %}"
    "{% if c.function.arguments is string %}{{ c.function.arguments }}"
    "{% else %}{{ c.function.arguments | tojson }}{% endif %}{% endfor %}"
    "{% else %}{{ m.content }}{% endif %}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# the probes never send this exact content, so the branch stays unreached
SECRET = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n"
    "{% if m.content | wordcount == 17 %}SECRET{% endif %}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
#: What no probe satisfies: the solver has no rule for ``wordcount`` (reported as the condition).
SECRET_NEEDS = "messages has an element and m.content | wordcount == 17"
SECRET_LINE = f'line 2: "SECRET" (needs: {SECRET_NEEDS})'


def _outputs(template: str, probes: list[Probe]) -> dict[str, str]:
    return {o.expression: o.status for o in measure(template, probes).outputs}


# --- reads ---------------------------------------------------------------------------------------


def test_reads_follow_values_through_loops_sets_macros_and_filters() -> None:
    template = (
        "{% macro show(call) %}{{ call.function.name }}{% if call.id is defined %}{{ call.id }}{% endif %}"
        "{% endmacro %}"
        "{% set last = messages | last %}{% set rest = messages[1:] %}"
        "{% for m in rest if m.role != 'system' %}"
        "{% if m.content is none %}{% elif m.content is string %}{{ m.content }}"
        "{% else %}{% for part in m.content %}{% if part.type == 'image' %}<img>{% endif %}{% endfor %}"
        "{% endif %}{% for tc in m.tool_calls or [] %}{{ show(tc) }}{% endfor %}"
        "{% if loop.previtem and loop.previtem.name is defined %}{{ m.get('tool_call_id', '') }}{% endif %}"
        "{% endfor %}{{ last.reasoning_content }}"
    )
    reads = template_reads_of(template)
    assert {"string", "none"} <= reads.use(MESSAGE + ("content",)).tests
    assert reads.part_types() == ["image"]
    assert "system" in reads.roles()
    assert reads.use(MESSAGE + ("tool_calls", "[]", "id")).tests == {"defined"}
    assert reads.use(MESSAGE + ("name",)).tests == {"defined"}
    assert set(reads.fields(MESSAGE)) >= {"content", "role", "tool_calls", "tool_call_id", "name",
                                          "reasoning_content"}  # fmt: skip


def test_variations_apply_only_to_what_the_template_reads() -> None:
    plain = {
        v.name for v in applicable(template_reads_of("{% for m in messages %}{{ m.content }}{% endfor %}"))
    }
    assert not plain & {"no_call_ids", "names", "part_image", "string_arguments"}
    rich = {v.name for v in applicable(template_reads_of(CALL_ID))}
    assert {"no_call_ids", "string_arguments", "two_arguments"} <= rich


def test_candidates_are_deterministic_with_distinct_texts() -> None:
    first = [(p.name, p.messages, p.kwargs) for p in candidates(CALL_ID)]
    assert first == [(p.name, p.messages, p.kwargs) for p in candidates(CALL_ID)]
    for name, messages, _ in first:
        texts = Probe(name, messages).texts()
        assert len(set(texts)) == len(texts), name


# --- trace coverage hooks --------------------------------------------------------------------------


NESTED = (
    "{% macro wrap(x) %}<{{ x }}>{% endmacro %}"
    "{% for m in messages %}{% set head %}[{{ m.role }}]{% endset %}{{ head }}"
    "{% for part in (m.content if m.content is not string else [m.content]) %}"
    "{{ wrap(part.text if part is mapping else part) }}{% endfor %}"
    "{{ '!' if loop.last else '' }}{% endfor %}"
)


def test_coverage_reaches_into_macros_set_blocks_and_nested_loops() -> None:
    instrumented = instrumented_for(NESTED)
    literal = [site for site in instrumented.sites.outputs if site.literal]
    assert {site.macro for site in literal} == {"wrap", None}
    traced = instrumented.cover([{"role": "user", "content": "hi"}])
    assert traced.text == "[user]<hi>!"
    assert traced.covered == {site.id for site in instrumented.sites.outputs}
    assert {(0, 0), (0, 1)} & traced.outcomes  # the conditional expressions report their side


@settings(max_examples=40, deadline=None)
@given(probe=random_probes())
def test_instrumented_render_is_byte_identical(probe: Probe) -> None:
    """Property: with every coverage hook in place, the render does not change by one byte."""
    instrumented = instrumented_for(NESTED + CALL_ID)
    for prompt in (False, True):
        expected = render(NESTED + CALL_ID, probe.messages, add_generation_prompt=prompt, **probe.kwargs)
        assert (
            instrumented.cover(probe.messages, add_generation_prompt=prompt, **probe.kwargs).text == expected
        )
        assert (
            instrumented.trace(probe.messages, add_generation_prompt=prompt, **probe.kwargs).text == expected
        )


@settings(max_examples=25, deadline=None)
@given(probe=random_probes())
def test_features_are_a_function_of_the_probe(probe: Probe) -> None:
    """Property: measuring twice (cached or not) gives the same features; more probes never less."""
    features = probe_features(CALL_ID, probe)
    assert features == probe_features(CALL_ID, Probe("copy", probe.conversation(), probe.render_kwargs()))
    alone = measure(CALL_ID, [probe])
    together = measure(CALL_ID, [probe, make_probe("tool_calls_no_id")])
    assert len(together.reached) >= len(alone.reached)


# --- the search reaches field-specific branches ------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "branches"),
    [
        (CALL_ID, ['"[id="', '"[no-id]"']),
        (CALL_ID, ["{{ c.function.arguments }}", "{{ c.function.arguments | tojson }}"]),
        (
            "{% for m in messages %}{% if m.name is defined %}({{ m.name }}){% else %}(anon){% endif %}"
            "{{ m.content }}{% endfor %}",
            ['"("', '"(anon)"'],
        ),
        (
            "{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}"
            "{% for p in m.content %}{% if p.type == 'image' %}<image>{% else %}{{ p.text }}{% endif %}"
            "{% endfor %}{% endif %}{% endfor %}",
            ['"<image>"', "{{ p.text }}"],
        ),
        (
            "{% for m in messages %}{% if m.role == 'ipython' %}<ipy>{% endif %}{{ m.content }}{% endfor %}",
            ['"<ipy>"'],
        ),
    ],
    ids=["call-id", "arguments-string", "name", "image-part", "role"],
)
def test_battery_reaches_both_sides_of_a_field_test(template: str, branches: list[str]) -> None:
    statuses = _outputs(template, probe_battery(template))
    for branch in branches:
        assert statuses[branch] == "reached", (branch, statuses)
    assert measure(template, probe_battery(template)).complete


def test_roles_from_a_constant_list_through_a_namespace_are_probed() -> None:
    """A template that accepts only conversations with an extra role, named in a list constant."""
    template = (
        "{% set allowed = ['SYSTEM', 'FUNCTIONS', 'USER', 'ASSISTANT'] %}"
        "{% set ns = namespace(messages=messages) %}"
        "{% if ns.messages[1]['role'] | upper != 'FUNCTIONS' %}"
        "{{ raise_exception('functions first') }}{% endif %}"
        "{% for m in ns.messages %}{% if m.role | upper not in allowed %}"
        "{{ raise_exception('role') }}{% endif %}"
        "{{ m.role | upper }}: {{ m.content }}\n{% endfor %}"
    )
    assert measure(template, fixed_battery(template)).fraction == 0.0  # the fixed shapes are all refused
    assert measure(template, probe_battery(template)).complete


def test_search_keeps_only_candidates_that_reach_something_new() -> None:
    base = [make_probe("single_turn")]
    kept = search(CALL_ID, base, candidates(CALL_ID))
    assert kept
    seen = set(probe_features(CALL_ID, base[0]) or ())
    for probe in kept:
        features = probe_features(CALL_ID, probe) or frozenset()
        assert not features <= seen, probe.name
        seen |= features


STACKED = (
    "{% for m in messages %}{% if m.role == 'tool' %}{% if m.content is string %}{{ m.content }}"
    "{% else %}{% for part in m.content %}{% if part.type == 'image' %}"
    "{% if add_vision_id %}Picture: {% endif %}<image>{% else %}{{ part.text }}{% endif %}"
    "{% endfor %}{% endif %}{% else %}{{ m.role }}: {{ m.content }}"
    "{% for call in m.tool_calls or [] %}{{ call.function.name }}{% endfor %}{% endif %}\n{% endfor %}"
)


def test_mutations_stack_changes_to_reach_a_nested_output() -> None:
    """Only mutations (no systematic candidates): a tool message with list content holding an image,
    under a flag, is three changes away from the tool-call shape."""
    base = [make_probe("tool_calls")]
    kept = search(STACKED, base, [], mutate=Mutator(STACKED), max_candidates=400, patience=400)
    assert measure(STACKED, [*base, *kept]).complete
    deepest = [probe for probe in kept if "Picture" in render(STACKED, list(probe.messages), **probe.kwargs)]
    assert deepest and all(name in deepest[0].name for name in ("part_image", "add_vision_id"))


def test_mutations_are_deterministic() -> None:
    runs = [
        [p.name for p in search(STACKED, [make_probe("tool_calls")], [], mutate=Mutator(STACKED))]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_tool_zoo_reaches_schema_branches_one_draw_at_a_time() -> None:
    template = (
        "{% macro t(s) %}{% if s.type == 'array' %}{% if s['items'] %}{{ t(s['items']) }}[]{% else %}any[]"
        "{% endif %}{% elif s.oneOf %}{% for v in s.oneOf %}{{ t(v) }}|{% endfor %}{% elif s.enum %}enum"
        "{% else %}{{ s.type }}{% endif %}{% if s.nullable %}?{% endif %}{% endmacro %}"
        "{% for tool in tools or [] %}"
        "{% for k, v in (tool.function.parameters or {}).get('properties', {}).items() %}"
        "{{ k }}:{{ t(v) }};{% endfor %}{% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    zoo = tool_zoo(template)
    assert zoo is not None and zoo.kwargs["tools"]
    assert measure(template, [zoo]).complete


# --- coverage in the result --------------------------------------------------------------------------


def test_unreached_output_is_named_and_the_patch_is_not_called_verified() -> None:
    result = patch_template(SECRET)
    assert result.passed and not result.verified
    assert result.status == "unverified-code"
    assert result.unverified_code == [SECRET_LINE]
    coverage = result.to_json()["report"]["coverage"]
    assert coverage["unreached"] == [
        {"line": 2, "expression": '"SECRET"', "status": "unreached", "macro": None, "condition": SECRET_NEEDS}
    ]
    assert "UNVERIFIED CODE" in result.report.summary()


def test_check_cli_exits_4_and_names_unverified_code(tmp_path: Any, capsys: Any) -> None:
    patched = tmp_path / "patched.jinja"
    patched.write_text(patch_template(SECRET).patched, encoding="utf-8")
    original = tmp_path / "original.jinja"
    original.write_text(SECRET, encoding="utf-8")
    code = main(["check", str(patched), "--original", str(original), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 4
    assert payload["status"] == ["unverified-code"] and payload["verified"] is False
    assert payload["templates"][0]["unverified_code"] == [SECRET_LINE]


def test_patch_cli_names_unverified_code_writes_it_only_when_forced(tmp_path: Any, capsys: Any) -> None:
    source = tmp_path / "t.jinja"
    source.write_text(SECRET, encoding="utf-8")
    out = tmp_path / "out.jinja"
    code = main(["patch", str(source), "-o", str(out), "--no-engines"])
    printed = capsys.readouterr().out
    assert code == 4 and not out.exists()
    assert "unverified code" in printed and '"SECRET"' in printed
    assert main(["patch", str(source), "-o", str(out), "--no-engines", "--force"]) == 4
    assert out.read_text(encoding="utf-8") == patch_template(SECRET).patched


def test_full_coverage_is_verified() -> None:
    template = SECRET.replace("{% if m.content | wordcount == 17 %}SECRET{% endif %}", "")
    result = patch_template(template)
    assert result.verified and result.status == "exact" and result.unverified_code == []
    assert verify(result.patched, template).status == "verified"


def test_outputs_no_conversation_writes_are_classified_not_hidden() -> None:
    template = (
        "{% macro unused() %}NEVER{% endmacro %}"
        "{% if not messages %}EMPTY{% endif %}"
        "{% for m in messages %}{% if m.role not in ['user', 'assistant', 'system', 'tool'] %}"
        "{{ raise_exception('bad role ' + m.role) }}{{ 'after refusal' }}{% endif %}"
        "<{{ m.role }}>{{ m.content }}{% endfor %}"
    )
    statuses = _outputs(template, fixed_battery(template))
    assert statuses['"NEVER"'] == "uncalled-macro"
    assert statuses['"EMPTY"'] == "empty-conversation"
    assert statuses["{{ raise_exception('bad role ' + m.role) }}"] == "refusal"
    assert statuses["{{ 'after refusal' }}"] == "refusal"
    assert measure(template, fixed_battery(template)).complete


# --- the corpus --------------------------------------------------------------------------------------


@pytest.mark.corpus
def test_corpus_coverage(corpus_templates: list[tuple[str, str]]) -> None:
    """The probes' coverage over a sample of the corpus (every fifth template): printed, with floors.

    ``benchmarks/coverage_report.py`` gives the numbers for the whole corpus.
    """
    fractions: dict[str, float] = {}
    for name, text in corpus_templates[::5]:
        fractions[name] = measure(text, probe_battery(text)).fraction
    full = sum(1 for value in fractions.values() if value >= 1.0)
    mean = statistics.mean(fractions.values())
    print(f"\ncoverage over {len(fractions)} corpus templates: {full} at full coverage, mean {mean:.1%}")
    for name, value in sorted(fractions.items(), key=lambda item: item[1])[:10]:
        print(f"  {value:6.1%}  {name}")
    assert full >= len(fractions) // 2
    assert mean >= 0.8


@pytest.mark.corpus
def test_qwen3_6_thinking_off_after_a_reasoning_turn_is_probed(corpus_dir: Any) -> None:
    """Issue #10: with ``enable_thinking=False``, a final turn without reasoning after a turn with
    reasoning. The battery holds that conversation, so the patch is judged (and placed) on it."""
    text = (corpus_dir / "templates" / "qwen" / "Qwen3.6.jinja").read_text(encoding="utf-8")
    names = [probe.name for probe in probe_battery(text)]
    assert "reasoning_some_turns[enable_thinking=False]" in names
    probe = make_probe("reasoning_some_turns", {"enable_thinking": False}, name="thinking-off")
    result = patch_template(text)
    assert verify(result.patched, text, probes=[probe]).passed, result.reasons


# --- outputs proven unreachable (templatefix.unreachable) ----------------------------------------


def _dead(template: str) -> list[str]:
    tree = Environment().parse(template)
    return [getattr(node, "data", None) or getattr(node, "value", None) for node in dead_outputs(tree)]


def test_a_flag_set_in_a_loop_is_not_seen_after_it() -> None:
    template = (
        "{% macro m(xs) %}{% if xs %}{% set hit = false %}{% for x in xs %}{% if x %}{% set hit = true %}"
        "{% endif %}{% endfor %}{% if hit and xs|length > 1 %}{{ 'any' }}{% else %}{{ 'some' }}{% endif %}"
        "{% endif %}{% endmacro %}{{ m(messages) }}"
    )
    assert _dead(template) == ["any"]
    # and the proof agrees with Jinja: no input reaches "any"
    assert "any" not in render(template, [{"role": "user", "content": "x"}] * 3)


def test_a_flag_that_may_come_from_outside_or_be_true_is_not_dead() -> None:
    assert _dead("{% if hit %}a{% endif %}") == []  # a template argument
    assert _dead("{% set hit = false %}{% set hit = true %}{% if hit %}a{% endif %}") == []
    assert _dead("{% if m %}{% set hit = false %}{% endif %}{% if hit %}a{% endif %}") == []  # not surely set
    assert _dead("{% set hit = false %}{% for hit in xs %}{% if hit %}a{% endif %}{% endfor %}") == []
    assert _dead("{% set hit = false %}{% if hit or x %}a{% endif %}") == []


def test_gpt_oss_schema_branch_is_dead_not_unreached(corpus_dir: Any) -> None:
    path = corpus_dir / "templates" / "gpt-oss" / "openai-gpt-oss-20b.2025-08-08.jinja"
    coverage = measure(path.read_text(encoding="utf-8"), [])
    dead = [o for o in coverage.outputs if o.status == "dead-branch"]
    assert [(o.macro, o.expression) for o in dead] == [("render_typescript_type", '{{ "any" }}')]


#: A call turn's calls are written only where its content holds the separator the template splits
#: it on (MiniCPM 5 writes each call in place of a ``<tool_sep>`` of the content).
SPLIT_CALLS = (
    "{% for m in messages %}{{ m.role }}: "
    "{% if m.role == 'assistant' and m.tool_calls %}"
    "{% set pieces = m.content.split('<sep>') if m.content is string else [] %}{{ pieces[0] }}"
    "{% for i in range(1, pieces|length) %}{{ '<call>' ~ m.tool_calls[0].function.name ~ '</call>' }}"
    "{{ pieces[i] }}{% endfor %}"
    "{% else %}{{ m.content }}{% endif %}\n{% endfor %}"
)


def test_a_split_separator_is_a_text_the_content_is_searched_for() -> None:
    reads = template_reads_of(SPLIT_CALLS)
    assert "<sep>" in reads.use(MESSAGE + ("content",)).contains


def test_the_search_reaches_calls_written_in_place_of_a_separator() -> None:
    """The content holding ``<sep>`` must be a call turn's: the search offers the text on the
    tool-call shape too."""
    assert not measure(SPLIT_CALLS, fixed_battery(SPLIT_CALLS)).complete
    assert measure(SPLIT_CALLS, probe_battery(SPLIT_CALLS)).complete


def test_patience_waits_for_the_first_candidates() -> None:
    """A useful candidate behind more useless ones than the patience: found only when the search
    must render the first ones."""
    base = [make_probe("single_turn")]
    useful = next(
        p for p in candidates(CALL_ID) if not probe_features(CALL_ID, p) <= probe_features(CALL_ID, base[0])
    )
    useless = [Probe(f"plain{i}", base[0].messages, {}) for i in range(10)]
    stream = [*useless, useful]
    assert search(CALL_ID, base, stream, patience=3) == []
    assert [p.name for p in search(CALL_ID, base, stream, patience=3, first=len(stream))] == [useful.name]


#: Tool definitions printed in a way that always fails (``tojson`` of a generator): only a
#: conversation with calls and no ``tools`` argument renders the tool messages.
CALLS_WITHOUT_TOOLS = (
    "{% if tools %}{{ tools | map(attribute='function') | tojson }}{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}[result]{{ m.content }}"
    "{% else %}{{ m.role }}: {{ m.content }}{% endif %}\n{% endfor %}"
)


def test_calls_without_a_tools_argument_reach_the_tool_messages() -> None:
    coverage = measure(CALLS_WITHOUT_TOOLS, probe_battery(CALLS_WITHOUT_TOOLS))
    assert coverage.complete, [(o.line, o.expression, o.status) for o in coverage.unreached]
    statuses = {o.expression: o.status for o in coverage.outputs}
    assert statuses['"[result]"'] == "reached"
    assert statuses["{{ tools | map(attribute='function') | tojson }}"] == "dead-branch"


#: A switch in a user's message (``/no_think``) changes what the generation prompt writes.
SWITCH_IN_USER_TEXT = (
    "{%- set ns = namespace(think=true) -%}"
    "{%- for m in messages -%}{%- set content = m['content'] -%}"
    "{%- if m['role'] == 'user' or m['role'] == 'system' -%}{%- if '/think' in content -%}"
    "{%- set ns.think = true -%}{%- elif '/no_think' in content -%}{%- set ns.think = false -%}"
    "{%- endif -%}{%- endif -%}{%- endfor -%}"
    "{%- for m in messages -%}<|{{ m.role }}|>{{ m.content }}<|end|>{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- if not ns.think -%}{{ '<think></think>' }}"
    "{%- endif -%}{%- endif -%}"
)


def test_a_text_looked_for_in_users_messages_is_put_there() -> None:
    """``'/no_think' in content`` under a user or system role: the candidates put the text into
    users' and the system's messages too, not only into the assistant's (the search does not
    depend on the solver to find it)."""

    def holding(role: str) -> list[Probe]:
        return [
            p for p in candidates(SWITCH_IN_USER_TEXT)
            if any(m["role"] == role and "/no_think" in str(m.get("content")) for m in p.messages)
        ]

    assert holding("user") and holding("system") and holding("assistant")
    coverage = measure(SWITCH_IN_USER_TEXT, probe_battery(SWITCH_IN_USER_TEXT))
    assert coverage.complete, [(o.line, o.expression, o.status) for o in coverage.unreached]
