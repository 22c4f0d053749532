"""Instrumented rendering reports exactly what the plain render produces."""

from __future__ import annotations

from templatefix.analysis.regions import instrumented_for, message_regions
from templatefix.errors import RenderError
from templatefix.probes import fixed_battery
from templatefix.render import render


def test_instrumented_render_is_identical_on_the_corpus(corpus_templates: list[tuple[str, str]]) -> None:
    checked = 0
    for name, text in corpus_templates:
        instrumented = instrumented_for(text)
        for probe in fixed_battery(text)[:4]:
            try:
                expected = render(text, probe.messages, **dict(probe.kwargs))
            except RenderError:
                continue
            traced = instrumented.trace(probe.messages, **dict(probe.kwargs))
            assert traced.text == expected, (name, probe.name)
            covered = instrumented.cover(probe.messages, **dict(probe.kwargs))
            assert covered.text == expected, (name, probe.name)
            assert covered.covered == traced.covered and covered.outcomes == traced.outcomes, name
            # the emissions tile the text exactly, in order
            assert "".join(traced.text[e.start : e.end] for e in traced.emissions) == traced.text, name
            for emission in traced.emissions:
                if emission.part_ranges:
                    assert emission.part_ranges[-1][1] == emission.end - emission.start
            checked += 1
    assert checked > 500


def test_parts_are_reported_only_when_they_join_to_the_whole() -> None:
    traced = instrumented_for("{{ 'n=' ~ n }}{{ n + 1 }}{{ 'a' + s + 'b' }}").trace([], n=1, s="x")
    assert traced.text == "n=12axb"
    by_atom = {e.atom: e for e in traced.emissions}
    assert by_atom[0].part_ranges == [(0, 2), (2, 3)]
    assert by_atom[1].part_ranges is None  # 1 + 1 is arithmetic, not text
    assert by_atom[2].part_ranges == [(0, 1), (1, 2), (2, 3)]


def test_outputs_inside_macros_are_not_atoms() -> None:
    template = (
        "{% macro m(x) %}<{{ x }}>{% endmacro %}{% for msg in messages %}{{ m(msg.content) }}{% endfor %}"
    )
    instrumented = instrumented_for(template)
    traced = instrumented.trace([{"role": "user", "content": "a"}])
    assert traced.text == "<a>"
    assert [e.atom for e in traced.emissions] == [a.id for a in instrumented.atoms]
    assert len(instrumented.atoms) == 1


def test_message_regions_follow_loop_iterations() -> None:
    template = "{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}END"
    text, regions = message_regions(
        template, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    )
    assert text == "user:hi;assistant:yo;END"
    assert [text[slice(*r)] for r in regions] == ["user:hi;", "assistant:yo;"]


def test_if_branches_taken_are_recorded() -> None:
    template = "{% for m in messages %}{% if m.role == 'user' %}U{% elif m.content %}A{% endif %}"
    template += "{{ '.' }}{% endfor %}"
    instrumented = instrumented_for(template)
    traced = instrumented.trace([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    dots = [e for e in traced.emissions if traced.text[e.start : e.end] == "."]
    assert [e.branches[0] for e in dots] == [0, 1]


def test_each_output_sees_the_truth_of_the_loop_body_names_lists_and_mappings_too() -> None:
    """A ``{% set %}`` name holding a list of content parts is true when non-empty: a condition
    built on ``not content`` must see that (Nemotron 3's content-parts turns were taken as empty)."""
    template = (
        "{% for m in messages %}{% set content = m.content %}{% set empty = [] %}"
        "{% set n = 0 %}{% set s = '' %}{{ m.role }}{% endfor %}"
    )
    traced = instrumented_for(template).trace(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": {}}]
    )
    first, second = traced.emissions
    assert first.assigned == {"content": True, "empty": False, "n": False, "s": False}
    assert second.assigned["content"] is False
