"""A span edge inside a piece the template built with ``{% set %}``, and flags the template defaults.

Nemotron 3 builds ``content`` as ``'<think>\\n' ~ reasoning ~ '\\n</think>\\n' ~ answer`` or
``'<think></think>' ~ answer`` (or leaves it as written), and its generation prompt ends with
``<think>\\n`` or ``<think></think>`` depending on ``enable_thinking``, which the template itself
defaults to true. The span starts at a fixed offset inside ``content`` that depends on both: the
patch tells the cases apart by how the piece's own text starts (``content[:8] == '<think>\\n'``)
and by the flag as the template reads it.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from independent.conversations import conversations
from independent.judge import judge, judge_seeds_under_flag

import templatefix
from templatefix.analysis.records import Emission
from templatefix.analysis.regions import instrumented_for
from templatefix.patch.conditions import Observation, _features, prefix_features
from templatefix.render import render

BUILT = (
    "{%- set enable_thinking = enable_thinking if enable_thinking is defined else true %}\n"
    "{%- for m in messages %}\n"
    "    {%- if m.role == 'assistant' %}\n"
    "        {%- if m.reasoning_content is defined and m.reasoning_content %}\n"
    "            {%- set content = '<think>\\n' ~ m.reasoning_content ~ '\\n</think>\\n' ~ m.content %}\n"
    "        {%- else %}\n"
    "            {%- set content = m.content %}\n"
    "            {%- if '<think>' not in content %}\n"
    "                {%- set content = '<think></think>' ~ content %}\n"
    "            {%- endif %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_start|>assistant\\n' ~ (content | trim) ~ '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>' ~ m.role ~ '\\n' ~ m.content ~ '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {%- if enable_thinking %}\n"
    "        {{- '<|im_start|>assistant\\n<think>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>assistant\\n<think></think>' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
)


def test_built_piece_is_patched_and_verified() -> None:
    result = templatefix.patch_template(BUILT)
    assert result.verified, result.reasons
    # the conditions read the piece's own start, and the flag as the template defaults it
    assert "[:8] == " in result.patched
    assert "enable_thinking" in result.patched


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversation=conversations())
def test_built_piece_patch_passes_the_independent_judge(conversation: object) -> None:
    patched = templatefix.patch_template(BUILT).patched
    verdict = judge(BUILT, patched, conversation)
    assert verdict.ok, [str(f) for f in verdict.failures]


def test_built_piece_patch_judged_on_seeded_conversations() -> None:
    patched = templatefix.patch_template(BUILT).patched
    assert judge_seeds_under_flag(BUILT, patched, 10, "enable_thinking") > 0


def test_trace_records_a_defaulted_flag_as_the_template_reads_it() -> None:
    template = "{% if effort is not defined %}{% set effort = 'off' %}{% endif %}{{ messages[0].content }}"
    instrumented = instrumented_for(template)
    assert "effort" in instrumented.reassigned
    messages = [{"role": "user", "content": "hi"}]
    assert render(template, messages) == "hi"
    (unset,) = instrumented.trace(messages).emissions
    (given_value,) = instrumented.trace(messages, effort="high").emissions
    assert unset.options == {"effort": "off"}
    assert given_value.options == {"effort": "high"}


def test_flag_features_read_a_defaulted_flag_as_the_template_does() -> None:
    template = "{% if effort is not defined %}{% set effort = 'off' %}{% endif %}{{ messages[0].content }}"
    instrumented = instrumented_for(template)
    unset = Observation(True, Emission(0, 0, 1, None, {}, options={"effort": "off"}), {})
    passed = Observation(False, Emission(0, 0, 1, None, {}, options={"effort": "high"}), {"effort": "high"})
    features = dict(_features([unset, passed], instrumented.source, instrumented, None))
    assert features["effort is defined"](unset)  # the template defines it, though no probe passed it
    assert features['effort == "off"'](unset)
    assert not features['effort == "off"'](passed)


def test_prefix_features_name_only_template_text() -> None:
    def seen(text: str) -> Observation:
        return Observation(True, Emission(0, 0, len(text), None, {}), {}, text=text)

    observations = [seen("<think></think>alpha"), seen("<think>\nbeta"), seen("gamma delta")]
    features = prefix_features(observations, lambda n: f"x[:{n}]", [7, 8], ["<think></think>", "<think>\n"])
    texts = [text for text, _ in features]
    assert 'x[:8] == "<think>\\n"' in texts
    assert 'x[:7] == "<think>"' in texts
    assert not any("gamma" in text for text in texts)  # a message's own words are never named
    test = dict(features)['x[:8] == "<think>\\n"']
    assert [test(o) for o in observations] == [False, True, False]
    unknown = [Observation(True, Emission(0, 0, 1, None, {}), {})]
    assert prefix_features(unknown, lambda n: "x", [7], ["<think>"]) == []


#: The same piece written in the tool-call branch (``(content | trim) ~ '\n'`` before the calls):
#: under each flag value only one probe writes a reply there, so the edge after
#: ``<think></think>`` is cut in one text alone; other texts of the piece start the same way.
BUILT_TOOLS = BUILT.replace(
    "        {{- '<|im_start|>assistant\\n' ~ (content | trim) ~ '<|im_end|>\\n' }}\n",
    "        {%- if m.tool_calls %}\n"
    "            {{- '<|im_start|>assistant\\n' }}\n"
    "            {%- if content | trim | length > 0 %}{{- (content | trim) ~ '\\n' }}{%- endif %}\n"
    "            {%- for c in m.tool_calls %}{{- '<tool_call>' ~ c.function.name ~ '</tool_call>\\n' }}"
    "{%- endfor %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- else %}\n"
    "            {{- '<|im_start|>assistant\\n' ~ (content | trim) ~ '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n",
)


def test_an_edge_cut_in_one_text_after_markup_other_texts_share_is_a_slice_bound() -> None:
    assert BUILT_TOOLS != BUILT
    result = templatefix.patch_template(BUILT_TOOLS)
    assert result.verified, result.reasons
    assert judge_seeds_under_flag(BUILT_TOOLS, result.patched, 12, "enable_thinking") > 0


def test_a_single_cut_needs_shared_markup_not_a_shared_first_letter() -> None:
    from templatefix.patch.label import slice_anchors
    from templatefix.patch.observe import CutText, PartRecord

    texts = {"<think></think>alpha1", "<think></think>", "bravo2 x", "bravo3 y"}
    shared_markup = PartRecord([], set(texts), [CutText(frozenset({15}), "<think></think>alpha1")])
    assert slice_anchors(shared_markup) == [15]
    # 'b' starts two texts, but a cut after it is inside a word: not a fixed anchor
    first_letter = PartRecord([], set(texts), [CutText(frozenset({1}), "bravo2 x")])
    assert slice_anchors(first_letter) is None
    # text no other piece starts with
    alone = PartRecord([], set(texts), [CutText(frozenset({7}), "bravo2 x")])
    assert slice_anchors(alone) is None
