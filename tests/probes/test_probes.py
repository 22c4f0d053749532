"""Probe conversations: flag discovery, text uniqueness, battery shape, random conversations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from support.strategies import conversations, random_probes, tools_for

from templatefix.conversation import Probe
from templatefix.coverage import SEARCH_KEEP, SEARCH_KEEP_OUTPUTS
from templatefix.errors import TemplateSyntaxError
from templatefix.flags import find_flags, template_reads
from templatefix.probes import (
    MAX_BATTERY,
    MAX_FLAG_PROBES,
    RANDOM_SEEDS,
    accepts,
    fixed_battery,
    probe_battery,
    random_conversation,
)
from templatefix.render import render
from templatefix.shapes import FLAG_SHAPES, SHAPES, make_probe
from templatefix.solve import SOLVE_KEEP

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "templates"
CHATML = (REFERENCE_DIR / "chatml.jinja").read_text(encoding="utf-8")
GEMMA = (REFERENCE_DIR / "gemma.jinja").read_text(encoding="utf-8")


# --- find_flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}",
        "{% if not enable_thinking %}x{% endif %}",
        "{% set enable_thinking = enable_thinking | default(true) %}{% if enable_thinking %}x{% endif %}",
        "{% if enable_thinking is not defined %}{% set enable_thinking = true %}{% endif %}"
        "{{ 'a' if enable_thinking }}",
    ],
)
def test_boolean_switch_is_found_with_both_values(template: str) -> None:
    assert find_flags(template) == {"enable_thinking": (True, False)}


def test_string_options_get_the_constants_they_are_compared_with() -> None:
    template = "{% if effort == 'high' %}h{% elif 'low' == effort %}l{% elif effort in ['max'] %}m{% endif %}"
    assert find_flags(template) == {"effort": ("high", "low", "max")}


@pytest.mark.parametrize(
    "template",
    [
        "{% for m in messages %}{% set content = m.content %}{% endfor %}"
        "{% if content %}{{ content }}{% endif %}",
        "{% for t in custom_tools %}{{ t }}{% endfor %}{% if custom_tools %}x{% endif %}",
        "{% if extra is defined %}{{ extra.name }}{% endif %}",
        "{% if model_identity is not defined %}{% set model_identity = 'You are a bot' %}{% endif %}"
        "{{ model_identity }}",
        "{% if custom_tools is defined %}{% set tools = custom_tools %}{% endif %}",
        "{% if add_generation_prompt %}{{ bos_token }}{% endif %}{{ raise_exception('x') if not messages }}",
        "{% if continue_final_message %}x{% endif %}",
    ],
    ids=["local", "iterated", "attribute", "free-text", "copied-data", "standard", "transformers-option"],
)
def test_locals_data_and_standard_names_are_not_flags(template: str) -> None:
    assert find_flags(template) == {}


def test_find_flags_reports_invalid_jinja() -> None:
    with pytest.raises(TemplateSyntaxError):
        find_flags("{% if %}")


def test_reference_chatml_reads_enable_thinking() -> None:
    assert find_flags(CHATML) == {"enable_thinking": (True, False)}


def test_qwen3_corpus_templates_read_enable_thinking(corpus_templates: list[tuple[str, str]]) -> None:
    qwen3 = [(name, text) for name, text in corpus_templates if name.startswith("qwen/Qwen3")]
    thinking = [(name, text) for name, text in qwen3 if "enable_thinking" in text]
    assert thinking, "the corpus should hold Qwen3 templates that read enable_thinking"
    for name, text in thinking:
        flags = find_flags(text)
        assert flags.get("enable_thinking", ())[:2] == (True, False), name


def test_found_flag_changes_the_qwen3_prompt(corpus_templates: list[tuple[str, str]]) -> None:
    """``enable_thinking`` found in Qwen3 must actually change its generation prompt."""
    name, text = next((n, t) for n, t in corpus_templates if n == "qwen/Qwen3-0.6B.jinja")
    messages = make_probe("single_turn").conversation()[:1]
    prompts = {
        value: render(text, messages, add_generation_prompt=True, enable_thinking=value)
        for value in find_flags(text)["enable_thinking"]
    }
    assert prompts[True] != prompts[False], name


# --- probes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_probe_texts_are_distinct_words(shape: str) -> None:
    texts = make_probe(shape).texts()
    assert texts, shape
    assert len(set(texts)) == len(texts)
    for text in texts:
        assert text and text == text.strip() and text.isalnum(), text
        assert not [other for other in texts if other != text and text in other], text


def test_make_probe_rejects_unknown_shape() -> None:
    with pytest.raises(ValueError, match="unknown probe shape"):
        make_probe("nonsense")


def test_probe_copies_protect_the_probe() -> None:
    probe = make_probe("tool_calls")
    probe.conversation()[0]["content"] = "changed"
    probe.render_kwargs()["tools"].clear()
    assert probe.messages[0]["content"] != "changed"
    assert probe.kwargs["tools"]
    assert hash(probe) == hash(make_probe("tool_calls"))
    assert probe == make_probe("tool_calls")


def test_tool_probes_are_well_formed() -> None:
    for shape in ("tool_calls", "tool_calls_multi", "reasoning_tool_calls", "tool_calls_string_arguments"):
        probe = make_probe(shape)
        _assert_tool_results_answer_calls(probe.conversation())
        declared = {tool["function"]["name"] for tool in probe.kwargs["tools"]}
        called = {c["function"]["name"] for m in probe.messages for c in m.get("tool_calls") or ()}
        assert called and called <= declared, shape


def test_accepts_tells_rejection_from_rendering() -> None:
    assert accepts(CHATML, make_probe("tool_calls"))
    assert not accepts(GEMMA, make_probe("tool_calls"))  # roles must alternate
    assert not accepts("{{ messages[0].content.nope() }}", make_probe("single_turn"))


# --- battery -------------------------------------------------------------------------------------


def test_battery_of_a_flagless_template_is_the_base_shapes() -> None:
    battery = probe_battery("{% for m in messages %}{{ m.content }}{% endfor %}")
    randoms = [f"random-{seed}" for seed in RANDOM_SEEDS]
    assert [probe.name for probe in battery] == [s for s in SHAPES if s != "documents"] + randoms


def test_random_conversations_are_reproducible_and_varied() -> None:
    probes = [random_conversation(seed) for seed in RANDOM_SEEDS]
    assert probes == [random_conversation(seed) for seed in RANDOM_SEEDS]
    messages = [m for p in probes for m in p.messages]
    assert any(len(m.get("tool_calls") or []) == 2 for m in messages)
    assert any(m.get("reasoning_content") and m.get("tool_calls") for m in messages)
    assert all(p.texts() and len(set(p.texts())) == len(p.texts()) for p in probes)


def test_battery_adds_documents_only_when_read() -> None:
    assert "documents" in [p.name for p in probe_battery("{{ documents }}{{ messages }}")]
    assert "documents" not in [p.name for p in probe_battery("{{ messages }}")]


def test_battery_repeats_flag_shapes_under_every_value() -> None:
    """``enable_thinking=False`` changes every shape's prompt (an empty thinking block); ``True``
    renders like the flag not passed, so it is left out."""
    battery = fixed_battery(CHATML)
    flagged = [p for p in battery if p.kwargs.get("enable_thinking") is not None]
    assert {(p.name.split("[")[0], p.kwargs["enable_thinking"]) for p in flagged} == {
        (shape, False) for shape in FLAG_SHAPES
    }


def test_battery_keeps_a_flag_value_that_only_changes_the_prompt() -> None:
    template = (
        "{% for m in messages %}{{ m.content }};{% endfor %}"
        "{% if add_generation_prompt %}{% if fast %}F{% else %}S{% endif %}{% endif %}"
    )
    names = {probe.name for probe in fixed_battery(template)}
    assert {f"{shape}[fast=True]" for shape in FLAG_SHAPES} <= names


def _switches(count: int) -> str:
    return "".join(f"{{% if flag{i} %}}x{{% endif %}}" for i in range(count))


def _switched_turns(count: int) -> str:
    """Every assistant turn with tool calls writes a marker per switch that is on."""
    switches = "".join(f"{{% if flag{i} %}}s{i}{{% endif %}}" for i in range(count))
    return (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
        f"{{% if m.tool_calls %}}{switches}"
        "{% for c in m.tool_calls %}{{ c.function.name }}{% endfor %}"
        "{% endif %}</{{ m.role }}>{% endfor %}"
    )


def test_battery_combines_every_flag_value_with_every_tool_call_shape() -> None:
    """More flag values than the base battery's cap leaves room for: each value that changes what a
    call turn writes is still combined with every flag shape that has a call."""
    count = 12
    battery = fixed_battery(_switched_turns(count))
    names = {probe.name for probe in battery}
    call_shapes = [s for s in FLAG_SHAPES if any(m.get("tool_calls") for m in make_probe(s).messages)]
    assert {"tool_calls", "tool_calls_parallel", "tool_calls_multi", "reasoning_tool_calls"} <= set(
        call_shapes
    )
    for shape in call_shapes:
        for i in range(count):
            assert f"{shape}[flag{i}=True]" in names
            # ``False`` renders like the switch not passed: nothing to check that the shape does not
            assert f"{shape}[flag{i}=False]" not in names
    # shapes without calls are the same under every value here
    assert not any(name.startswith("system_multi_turn[") for name in names)


def test_battery_keeps_every_flag_value_the_base_cap_would_cut() -> None:
    fitting = (MAX_BATTERY - (len(SHAPES) - 1) - len(RANDOM_SEEDS)) // 2  # two values per switch
    battery = fixed_battery(_switches(fitting + 5))
    probed = {(key, value) for p in battery for key, value in p.kwargs.items() if key.startswith("flag")}
    # ``flagN=False`` renders like no flag: only the values that change the render are probed
    assert probed == {(f"flag{i}", True) for i in range(fitting + 5)}
    base = len(SHAPES) - 1 + len(RANDOM_SEEDS)
    assert len(fixed_battery(_switches(200))) == base + MAX_FLAG_PROBES


def test_corpus_batteries_stay_within_bounds(corpus_templates: list[tuple[str, str]]) -> None:
    base = len(SHAPES) - 1 + len(RANDOM_SEEDS)
    for index, (name, text) in enumerate(corpus_templates):
        fixed = fixed_battery(text)
        assert base <= len(fixed) <= MAX_BATTERY + MAX_FLAG_PROBES, name
        # the search is the costly part: every tenth template
        battery = probe_battery(text) if index % 10 == 0 else fixed
        bound = MAX_BATTERY + MAX_FLAG_PROBES + SEARCH_KEEP + SEARCH_KEEP_OUTPUTS + SOLVE_KEEP
        assert len(fixed) <= len(battery) <= bound, name
        assert len({probe.name for probe in battery}) == len(battery), name
        reads_documents = "documents" in template_reads(text)
        assert reads_documents == any(probe.name == "documents" for probe in battery), name


# --- random conversations ------------------------------------------------------------------------


def _assert_tool_results_answer_calls(messages: list[dict[str, Any]]) -> None:
    pending: list[str] = []
    for message in messages:
        if message["role"] == "tool":
            assert pending and message["tool_call_id"] == pending.pop(0)
        else:
            assert not pending, "tool calls left unanswered"
            pending = [call["id"] for call in message.get("tool_calls") or ()]


@settings(max_examples=60, deadline=None)
@given(messages=conversations())
def test_random_conversations_are_valid(messages: list[dict[str, Any]]) -> None:
    roles = [m["role"] for m in messages]
    assert roles[-1] == "assistant"
    assert "system" not in roles[1:]
    assert all(a != b or a == "tool" for a, b in zip(roles, roles[1:], strict=False)), roles
    _assert_tool_results_answer_calls(messages)
    texts = Probe("random", tuple(messages)).texts()
    assert len(set(texts)) == len(texts)


@settings(max_examples=60, deadline=None)
@given(probe=random_probes())
def test_reference_chatml_renders_random_conversations(probe: Probe) -> None:
    text = render(CHATML, probe.conversation(), **probe.render_kwargs())
    for message in probe.messages:
        if message["role"] != "assistant":
            content = message["content"]
            for word in [content] if isinstance(content, str) else [part["text"] for part in content]:
                assert word in text
    assert (tools_for(probe.conversation()) is None) == ("tools" not in probe.kwargs)


def test_probe_reasoning_reaches_a_template_reading_either_name() -> None:
    """On every supported transformers, a probe's reasoning is seen as ``thinking`` and as
    ``reasoning_content`` (5.x aliases them itself; on 4.x the probe gives both)."""
    from templatefix.conversation import Probe
    from templatefix.render import render

    probe = Probe("p", ({"role": "assistant", "content": "c", "reasoning_content": "r1"},), {})
    template = "{{ messages[0].thinking }}|{{ messages[0].reasoning_content }}"
    assert render(template, probe.conversation()) == "r1|r1"
