"""SPEC rule 1 covers errors: where the original raises, the patched template raises the same
exception type; where the original renders, the patched template renders the same text.

- The writer: splitting ``a + b`` into two outputs keeps what ``+`` raises (``'' + x`` and
  ``x + ''`` guards), and refuses a split it cannot keep exact.
- The verifier: a probe the original rejects is checked (error parity on every render the
  oracle makes), and a patch that turns an error into text fails.
- The engines table: a different exception type is a difference.
- A property test over small ``{{ a + b + c }}`` templates with operands of random types.
- The corpus: every verified patch raises where its original raises, with the same type.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2 import nodes

from templatefix.analysis.regions import instrumented_for
from templatefix.conversation import Probe
from templatefix.engines import compare
from templatefix.engines.backends import RenderContext, Rendered, Transformers
from templatefix.errors import PatchFailure, RenderError
from templatefix.patch.api import patch_template
from templatefix.patch.label import Unit
from templatefix.patch.writer import write
from templatefix.render import render
from templatefix.shapes import error_probes
from templatefix.verify import error_parity, render_points, verify

LOOP = "{% for m in messages %}"
TAIL = "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
#: Qwen1.5's shape: the header and the content are one `+` chain; the end-of-turn is another output.
QWEN15 = LOOP + "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}{{ '<|im_end|>\n' }}" + TAIL
#: Qwen3's shape: `content` comes from a {% set %}, undefined when the message has no content.
QWEN3 = (
    LOOP
    + "{%- set content = m.content %}{{ '<|im_start|>' + m.role + '\n' + content + '<|im_end|>\n' }}"
    + TAIL
)
#: `~` converts with str(): an undefined content renders '' in the original and must in the patch.
TILDE = LOOP + "{{ '<|im_start|>' ~ m.role ~ '\n' ~ m.content ~ '<|im_end|>\n' }}" + TAIL
#: Neither side of the `+` at the span edge is known to be a string.
UNKNOWN_SIDES = (
    # `h` renders a header, but nothing proves it a str: its `else` side is the raw field
    LOOP + "{% set h = '<|' ~ m.role ~ '|>\n' if m.role else m.role %}{{ h + m.content }}{{ '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def outcome(template: str, messages: list[dict[str, Any]], prompt: bool = False) -> tuple[str, str]:
    """("text", render) or ("raises", exception type)."""
    try:
        return "text", render(template, messages, add_generation_prompt=prompt)
    except RenderError as error:
        return "raises", str(error.exception_type)


def conversation(content: Any = "hello there", drop: bool = False) -> list[dict[str, Any]]:
    assistant: dict[str, Any] = {"role": "assistant", "content": content}
    if drop:
        del assistant["content"]
    return [{"role": "user", "content": "hi"}, assistant]


@functools.cache
def patched(template: str) -> Any:
    return patch_template(template)


# -- the writer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "content", "drop", "raised"),
    [
        (QWEN15, [{"type": "text", "text": "hello"}], False, "TypeError"),
        (QWEN15, None, True, "UndefinedError"),
        (QWEN3, [{"type": "text", "text": "hello"}], False, "TypeError"),
        (QWEN3, None, True, "UndefinedError"),
    ],
    ids=["qwen15-parts", "qwen15-no-content", "qwen3-parts", "qwen3-no-content"],
)
def test_split_chain_raises_where_the_original_raises(
    template: str, content: Any, drop: bool, raised: str
) -> None:
    result = patched(template)
    assert result.verified, result.reasons
    assert "{% generation %}" in result.patched and result.patched != template
    messages = conversation(content, drop)
    assert outcome(template, messages) == ("raises", raised)
    assert outcome(result.patched, messages) == ("raises", raised)
    ordinary = conversation()
    assert outcome(result.patched, ordinary) == outcome(template, ordinary)


def test_guards_are_where_the_proof_needs_them() -> None:
    assert "'' + m['content']" in patched(QWEN15).patched  # the header is a str: '' + x behaves alike
    # `content + '<|im_end|>'` in one run already raises as `'…\n' + content` does: no guard
    assert "{{ content + '<|im_end|>' }}" in patched(QWEN3).patched


def test_tilde_chain_needs_no_guard_and_still_renders_undefined_as_empty() -> None:
    result = patched(TILDE)
    assert result.verified, result.reasons
    assert "''" not in result.patched
    messages = conversation(drop=True)
    assert outcome(TILDE, messages) == outcome(result.patched, messages)
    assert outcome(TILDE, messages)[0] == "text"


def test_a_variable_set_to_text_just_before_is_a_string_side() -> None:
    """AI21 Jamba's shape: ``{% set prefix = … %}`` with a str, then ``prefix + content``: the
    split keeps every error (``'' + content``) and the patch is verified."""
    template = (
        LOOP + "{% set h = '<|' ~ m.role ~ '|>\n' %}{{ h + m.content }}{{ '<|end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    result = patch_template(template)
    assert result.verified, result.reasons
    assert "'' + m.content" in result.patched
    for messages in (conversation(), conversation(drop=True), conversation([{"type": "text", "text": "x"}])):
        assert outcome(template, messages) == outcome(result.patched, messages)


def test_a_split_that_cannot_keep_errors_is_refused_with_the_reason() -> None:
    result = patch_template(UNKNOWN_SIDES)
    assert not result.verified
    assert any("neither side of its '+' is known to be a string" in reason for reason in result.reasons)
    assert "{% generation %}" not in result.patched


# -- the verifier ------------------------------------------------------------------------------

#: What the writer used to produce for QWEN15: `m['content']` moved out of the `+` chain.
UNGUARDED = (
    LOOP + "{{ '<|im_start|>' + m['role'] + '\n' }}{% if m.role == 'assistant' %}{% generation %}"
    "{{ m['content'] }}{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}{{ m['content'] }}"
    "{{ '<|im_end|>\n' }}{% endif %}" + TAIL
)


def test_verifier_fails_a_patch_that_renders_where_the_original_raises() -> None:
    report = verify(UNGUARDED, QWEN15)
    assert not report.verified
    failed = {probe.name: probe for probe in report.probes if probe.status == "failed"}
    assert {"assistant_content_parts", "call_without_content"} <= set(failed)
    problem = failed["assistant_content_parts"].render_problems[0]
    assert "the original raises" in problem and "TypeError" in problem
    assert "patched template renders" in problem


def test_verifier_passes_the_guarded_patch_and_says_the_error_was_checked() -> None:
    report = verify(patched(QWEN15).patched, QWEN15)
    assert report.verified
    rejected = [probe for probe in report.probes if probe.name == "assistant_content_parts"]
    assert rejected[0].status == "skipped"
    assert rejected[0].reason.endswith("the patched template raises the same")


def test_error_parity_names_a_different_exception_type() -> None:
    probe = Probe("p", tuple(conversation([{"type": "text", "text": "x"}])))
    wrong = LOOP + "{{ raise_exception('no') if m.content is not string else '' }}" + TAIL
    assert error_parity(QWEN15, QWEN15, probe) == []
    problems = error_parity(wrong, QWEN15, probe)
    assert any("raises TypeError but the patched template raises TemplateError" in p for p in problems)


def test_render_points_are_the_oracle_renders() -> None:
    probe = Probe("p", tuple(conversation() + conversation()))
    assert render_points(probe) == [(1, True), (2, False), (3, True), (4, False)]


def test_error_probes_make_the_usual_concatenation_raise() -> None:
    for probe in error_probes():
        assert outcome(QWEN15, list(probe.messages))[0] == "raises", probe.name


# -- the engines table --------------------------------------------------------------------------


def test_engines_table_reports_a_different_exception_type() -> None:
    context = RenderContext("p", conversation(), False, None, None, {}, {})
    before = [Rendered(text="x"), Rendered(error="TypeError: a", error_type="TypeError")]
    same = [Rendered(text="x"), Rendered(error="TypeError: b", error_type="TypeError")]
    other = [Rendered(text="x"), Rendered(error="UndefinedError: c", error_type="UndefinedError")]
    assert compare(Transformers(), before, same, [context, context], None).status == "identical"
    result = compare(Transformers(), before, other, [context, context], None)
    assert result.status == "differs" and "raises TypeError" in result.detail


# -- the writer alone: labels given by hand, every split checked --------------------------------


def written(template: str, labels: list[Any]) -> str:
    """``template``'s one output atom written with ``labels`` per operand (``(label, cut, label)``
    cuts a string literal at ``cut``)."""
    instrumented = instrumented_for(template)
    atom = instrumented.atoms[-1]
    units = []
    for part, label in enumerate(labels):
        if isinstance(label, tuple):
            first, cut, second = label
            units += [Unit(atom.id, part, 0, cut, label=first), Unit(atom.id, part, cut, None, label=second)]
        else:
            units.append(Unit(atom.id, part, label=label))
    return write(instrumented.source, instrumented, units)


def test_operand_before_a_literal_gets_a_trailing_guard() -> None:
    template = LOOP + "{{ m.content + '<|end|>' }}{% endfor %}"
    result = written(template, ["in", "out"])
    assert "{{ m.content + '' }}" in result
    for content in ("x", [{"type": "text", "text": "x"}], None, 3):
        messages = [{"role": "assistant", "content": content}]
        assert outcome(result, messages) == outcome(template, messages)
    assert outcome(result, [{"role": "assistant"}]) == ("raises", "UndefinedError")


def test_a_literal_cut_in_two_needs_no_guard() -> None:
    template = LOOP + "{{ '<|a|>' + m.content + '<|end|>\n' }}{% endfor %}"
    result = written(template, ["in", "in", ("in", 7, "out")])
    assert "{{ '<|a|>' + m.content + '<|end|>' }}" in result  # the chain itself is whole: no guard


def test_a_value_cut_after_a_string_operand_is_sliced_through_a_guard() -> None:
    """``'<|a|>' + m.content + '<|end|>'`` cut one character into the content (a generation prompt
    ending with ``\n`` takes a reply's first ``\n``): the slices are of ``'' + m.content``, which
    raises as the original's ``+`` does for a value that is not a str."""
    template = LOOP + "{{ '<|a|>' + m.content + '<|end|>' }}{% endfor %}"
    result = written(template, ["out", ("out", 1, "in"), "in"])
    assert "('' + m.content)[:1]" in result and "('' + m.content)[1:]" in result
    for content in ("\nx", "x", "", [{"type": "text", "text": "x"}], None, 3, {"k": "v"}):
        messages = [{"role": "assistant", "content": content}]
        assert outcome(result, messages) == outcome(template, messages), content
    assert outcome(result, [{"role": "assistant"}]) == outcome(template, [{"role": "assistant"}])
    # with no string beside it, `+` may add numbers or lists: refused
    with pytest.raises(PatchFailure, match="not a string literal"):
        written(LOOP + "{{ m.content + m.extra }}{% endfor %}", [("out", 1, "in"), "in"])


def test_right_nested_plus_is_refused() -> None:
    template = LOOP + "{{ '<|a|>' + (m.content + m.extra) }}{% endfor %}"
    with pytest.raises(PatchFailure, match="line 1: .* right side of its '\\+' is not one operand"):
        written(template, ["out", "in", "in"])


def test_markup_operand_is_refused() -> None:
    template = LOOP + "{{ '<|a|>' + (m.content | safe) }}{% endfor %}"
    with pytest.raises(PatchFailure, match="Markup"):
        written(template, ["out", "in"])


def test_markup_through_a_set_is_refused() -> None:
    template = LOOP + "{% set c = m.content | e %}{{ '<|a|>' + c }}{% endfor %}"
    with pytest.raises(PatchFailure, match="Markup"):
        written(template, ["out", "in"])


# -- property: small `+`/`~` chains, random labels, operands of random types ---------------------

OPERANDS = (
    "'<|a|>\\n'", "m.content", "m.extra", "m.content | trim", "m.content.strip()", "eos_token", "'!'",
    "(m.extra | safe)",
)
VALUES = st.one_of(
    st.sampled_from(["", "hi", " x \n"]),
    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.just("p")}), max_size=2),
    st.integers(-2, 2),
    st.none(),
    st.booleans(),
    st.just({"k": "v"}),
)


@st.composite
def chains(draw: st.DrawFn) -> tuple[str, list[Any], list[dict[str, Any]]]:
    operands = draw(st.lists(st.sampled_from(OPERANDS), min_size=2, max_size=4))
    operators = [draw(st.sampled_from(["+", "+", "~"])) for _ in operands[1:]]
    text = operands[0]
    for operator, operand in zip(operators, operands[1:], strict=True):
        shape = draw(st.integers(0, 5))
        if shape == 0:  # now and then a parenthesised left side
            text = f"({text})"
        elif shape == 1:  # or a parenthesised right side: a + (b ~ c)
            operand = f"({operand} {draw(st.sampled_from(['+', '~']))} {draw(st.sampled_from(OPERANDS))})"
        text = f"{text} {operator} {operand}"
    template = LOOP + "{{ " + text + " }}{% endfor %}"
    atom = instrumented_for(template).atoms[-1]
    labels: list[Any] = []
    for part in atom.parts:
        if isinstance(part, nodes.Const) and len(part.value) > 1 and draw(st.booleans()):
            labels.append(("in", draw(st.integers(1, len(part.value) - 1)), "out"))
        elif not isinstance(part, nodes.Const) and draw(st.integers(0, 3)) == 0:
            # a cut inside a value: after a leading character, as after a prompt's trailing '\n'
            labels.append(draw(st.sampled_from([("out", 1, "in"), ("in", 1, "out")])))
        else:
            labels.append(draw(st.sampled_from(["in", "out"])))
    messages = []
    for _ in range(draw(st.integers(1, 2))):
        message: dict[str, Any] = {"role": "assistant"}
        for name in ("content", "extra"):
            if draw(st.booleans()):  # absent otherwise: an undefined field
                message[name] = draw(VALUES)
        messages.append(message)
    return template, labels, messages


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=chains())
def test_split_renders_or_raises_as_the_original(case: tuple[str, list[Any], list[dict[str, Any]]]) -> None:
    template, labels, messages = case
    try:
        result = written(template, labels)
    except PatchFailure:
        return  # refused: nothing written, nothing promised
    assert outcome(result, messages) == outcome(template, messages), result


def test_the_property_is_not_vacuous() -> None:
    """Most generated splits are written, not refused, and some raise in the original."""
    rng = random.Random(7)
    written_count = raising = 0
    for _ in range(60):
        operands = [rng.choice(OPERANDS) for _ in range(3)]
        template = LOOP + "{{ " + " + ".join(operands) + " }}{% endfor %}"
        labels = [rng.choice(["in", "out"]) for _ in operands]
        try:
            written(template, labels)
        except PatchFailure:
            continue
        written_count += 1
        raising += outcome(template, [{"role": "assistant", "content": [1]}])[0] == "raises"
    assert written_count >= 30 and raising >= 10


# -- the corpus: verified patches raise where their originals raise --------------------------------

#: Templates the error path was seen wrong on, then every CORPUS_STRIDE-th template by name.
NAMED = ("qwen/Qwen1.5-72B-Chat.jinja", "qwen/Qwen3-0.6B.jinja", "qwen/Qwen2.5-VL-7B-Instruct.jinja")
CORPUS_STRIDE = 10


def _independent_outcome(template: str, messages: list[dict[str, Any]], prompt: bool, kwargs: Any) -> Any:
    """Through transformers' own ``render_jinja_template`` (no templatefix code): text or exception type."""
    from independent.render import render_text

    try:
        return "text", render_text(template, messages, prompt, kwargs)
    except Exception as error:  # noqa: BLE001 - templates are arbitrary code: the type is the answer
        return "raises", type(error).__name__


@pytest.mark.corpus
def test_verified_corpus_patches_raise_where_their_originals_raise(
    corpus_templates: list[tuple[str, str]],
) -> None:
    """On every probe (the battery and the error probes) and every prefix, with and without the
    generation prompt, a verified patch renders the original's text or raises its exception type.
    The renders go through transformers alone; the verifier's own verdict on the same probes is
    checked too."""
    from templatefix.probes import probe_battery

    texts = dict(corpus_templates)
    sample = [name for name in NAMED if name in texts]
    sample += [name for name, _ in corpus_templates[::CORPUS_STRIDE] if name not in sample]
    problems: dict[str, str] = {}
    verified = raising = 0
    for name in sample:
        original = texts[name]
        result = patch_template(original)
        if not result.verified:
            continue
        verified += 1
        for probe in result.report.probes:
            assert probe.status != "failed", (name, probe.name, probe.render_problems[:1])
            if probe.status == "skipped":
                assert probe.reason.endswith("the patched template raises the same"), (name, probe.reason)
        for probe in [*probe_battery(original), *error_probes()]:
            messages, kwargs = probe.conversation(), probe.render_kwargs()
            for count in range(len(messages) + 1):
                for prompt in (False, True):
                    before = _independent_outcome(original, messages[:count], prompt, kwargs)
                    after = _independent_outcome(result.patched, messages[:count], prompt, kwargs)
                    raising += before[0] == "raises"
                    if before != after and name not in problems:
                        where = f"{probe.name} messages[:{count}] prompt={prompt}"
                        problems[name] = f"{where}: {before} vs {after}"
    assert verified >= 10 and raising > 0
    assert problems == {}


def test_a_variable_set_to_text_just_before_may_be_cut_like_a_literal() -> None:
    template = (
        LOOP + "{% if m.name %}{% set p = '<|' + m.role + '|>' + m.name %}"
        "{% else %}{% set p = '<|' ~ m.role %}{% endif %}{{ m.pre + p + m.content }}{% endfor %}"
    )
    result = written(template, ["out", ("out", 3, "in"), "in"])
    assert "p[:3]" in result and "p[3:]" in result
    for pre in ("", [1], None):
        messages = [{"role": "assistant", "content": "x", "pre": pre}]
        assert outcome(result, messages) == outcome(template, messages)
    unknown = LOOP + "{% if m.name %}{% set p = m.name %}{% endif %}{{ '<' + p + m.content }}{% endfor %}"
    guarded = written(unknown, ["out", ("out", 3, "in"), "in"])  # beside a string: sliced through '' +
    assert "('' + p)[:3]" in guarded
    for name in ("abcd", None, 5, ""):
        messages = [{"role": "assistant", "content": "x", "name": name}]
        assert outcome(guarded, messages) == outcome(unknown, messages)
    beside_unknown = (
        LOOP + "{% if m.name %}{% set p = m.name %}{% endif %}{{ m.pre + p + m.content }}{% endfor %}"
    )
    with pytest.raises(PatchFailure, match="cuts an operand"):
        written(beside_unknown, ["out", ("out", 3, "in"), "in"])


def test_a_value_cut_before_a_side_that_may_raise_is_refused() -> None:
    """``m.content + ('<|a|>' ~ (m.extra + '!'))``: the original evaluates the right side before its
    ``+``, so an undefined ``m.extra`` raises first; ``('' + m.content)[:1]`` would raise first."""
    template = LOOP + "{{ m.content + '<|a|>' ~ (m.extra + '!') }}{% endfor %}"
    with pytest.raises(PatchFailure, match="not a string literal"):
        written(template, [("out", 1, "in"), "in", "in", "in"])
    before_literal = LOOP + "{{ m.content + '<|a|>' }}{% endfor %}"  # a literal cannot raise
    result = written(before_literal, [("out", 1, "in"), "in"])
    for content in ("\nx", None, 3, [1]):
        messages = [{"role": "assistant", "content": content}]
        assert outcome(result, messages) == outcome(before_literal, messages)


@pytest.mark.parametrize(
    ("template", "labels"),
    [
        # a literal cut on the right side of `m.extra + ...`, before `m.content.strip()`
        (
            "{{ ((m.extra) + '<|a|>\n' ~ m.content.strip()) + '!' }}",
            ["in", ("in", 1, "out"), ("out", 1, "in"), "in"],
        ),
        # a value cut on the right side of `m.content + ...`, before `m.content.strip()`
        ("{{ (m.content) + m.content ~ m.content.strip() }}", ["out", ("out", 1, "in"), ("in", 1, "out")]),
    ],
)
def test_a_cut_before_more_of_the_right_side_of_a_plus_is_refused(template: str, labels: list[Any]) -> None:
    """Found by the chain property: the `+` would run before the rest of its right side, whose
    error (an undefined ``strip``) the original raises first."""
    with pytest.raises(PatchFailure, match="right side of a '\\+' whose left side is not a string"):
        written(LOOP + template + "{% endfor %}", labels)
