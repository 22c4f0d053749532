"""Fuzzing ``patch_template`` with mutated templates and random conversations.

Properties, for any mutation of a reference or corpus template:
1. ``patch_template`` either returns or raises a ``TemplatefixError`` subclass; nothing else.
2. Whenever it says ``verified``, an independent cross-check holds: the patched template renders
   byte-identically to the input on every probe and on hypothesis conversations (every prefix,
   with and without the generation prompt), and its spans are exactly the oracle's
   (``templatefix.oracle.expected_turns``) for the trained turns.

The cross-check here is written against ``render_with_spans`` and the oracle directly; it does not
call ``templatefix.verify``. CI runs a small, seeded number of examples; ``benchmarks/fuzz.py``
runs the long campaign with the same strategies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from support.strategies import conversations

from templatefix.conversation import Probe
from templatefix.errors import RenderError, TemplatefixError
from templatefix.oracle import expected_turns
from templatefix.patch.api import patch_template
from templatefix.probes import probe_battery
from templatefix.render import merge_spans, render_with_spans

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "templates"
#: A few corpus templates of different styles, used when TEMPLATEFIX_CORPUS is set.
CORPUS_SEEDS = (
    "qwen/Qwen2.5-7B-Instruct.jinja",
    "llama/Meta-Llama-3-8B-Instruct.jinja",
    "gemma/gemma-2-2b-it.jinja",
    "phi/Phi-3-mini-4k-instruct.jinja",
)

_TAG = re.compile(r"\{%.*?%\}|\{\{.*?\}\}", re.S)
_LITERAL = re.compile(r"'[^'\\\n]*'|\"[^\"\\\n]*\"")
_INSERTS = (
    "{% if m is defined %}",
    "{% endif %}",
    "{% if messages[0].role == 'system' %}SYS{% endif %}",
    "{% if add_generation_prompt %}<|assistant|>{% endif %}",
    "{{ message['content'] }}",
    "{{ eos_token }}",
    "{% generation %}",
    "{% endgeneration %}",
    "{% for m in messages %}{{ m.role }}{% endfor %}",
    "{% set x = 1 %}",
    "\n",
    " ",
)
_LITERALS = ("", " ", "\n", "<|im_end|>", "<|eot_id|>", "assistant", "{{", "%}", "'", "x" * 5)


# -- mutations ------------------------------------------------------------------------------


def _pick(draw: Any, items: Sequence[Any]) -> Any:
    return items[draw(st.integers(0, len(items) - 1))]


def _mutate_once(draw: Any, text: str) -> str:
    kind = draw(
        st.sampled_from(
            ["delete_tag", "duplicate_tag", "insert", "whitespace", "literal", "duplicate_line", "if_branch"]
        )
    )
    tags = list(_TAG.finditer(text))
    if kind == "delete_tag" and tags:
        tag = _pick(draw, tags)
        return text[: tag.start()] + text[tag.end() :]
    if kind == "duplicate_tag" and tags:
        tag = _pick(draw, tags)
        return text[: tag.end()] + tag.group() + text[tag.end() :]
    if kind == "whitespace" and tags:
        tag = _pick(draw, tags)
        body = tag.group()
        opener, closer = body[:2], body[-2:]
        inner = body[2:-2]
        if inner.startswith(("-", "+")):
            inner = inner[1:]
        if inner.endswith(("-", "+")):
            inner = inner[:-1]
        left = draw(st.sampled_from(["", "-", "+"]))
        right = draw(st.sampled_from(["", "-", "+"]))
        return text[: tag.start()] + opener + left + inner + right + closer + text[tag.end() :]
    if kind == "literal":
        literals = list(_LITERAL.finditer(text))
        if literals:
            literal = _pick(draw, literals)
            quote = literal.group()[0]
            value = draw(st.sampled_from(_LITERALS)).replace(quote, "")
            return text[: literal.start()] + quote + value + quote + text[literal.end() :]
    if kind == "duplicate_line":
        lines = text.splitlines(keepends=True)
        if lines:
            index = draw(st.integers(0, len(lines) - 1))
            return "".join(lines[: index + 1] + [lines[index]] + lines[index + 1 :])
    if kind == "if_branch":
        ifs = [m for m in tags if re.match(r"\{%[-+]?\s*(if|elif|else|endif)\b", m.group())]
        if ifs and draw(st.booleans()):  # remove one branch keyword (often breaks: that is the point)
            tag = _pick(draw, ifs)
            return text[: tag.start()] + text[tag.end() :]
        if len(tags) >= 2:  # wrap a run of text between two tags in a new condition
            a = _pick(draw, tags)
            b = _pick(draw, tags)
            start, end = sorted((a.start(), b.end()))
            condition = draw(st.sampled_from(["true", "false", "add_generation_prompt", "tools", "1 == 1"]))
            return text[:start] + "{% if " + condition + " %}" + text[start:end] + "{% endif %}" + text[end:]
    position = draw(st.integers(0, len(text)))
    return text[:position] + draw(st.sampled_from(_INSERTS)) + text[position:]


@st.composite
def mutated(draw: Any, seeds: Sequence[str]) -> str:
    """One of ``seeds`` with 1..3 random mutations."""
    text = draw(st.sampled_from(list(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        text = _mutate_once(draw, text)
    return text


# -- the independent cross-check ------------------------------------------------------------


@dataclass
class CrossCheck:
    """What the cross-check found for one verified patch (``failures`` empty when it holds)."""

    checked_probes: int = 0
    failures: list[str] = field(default_factory=list)


def _render(
    template: str, messages: Sequence[Mapping[str, Any]], prompt: bool, kwargs: Mapping[str, Any]
) -> Any:
    try:
        return render_with_spans(template, list(messages), add_generation_prompt=prompt, **dict(kwargs))
    except RenderError as error:
        return error


def cross_check(original: str, patched: str, extra: Sequence[Sequence[Mapping[str, Any]]] = ()) -> CrossCheck:
    """SPEC rules 1-2 checked from scratch on the probes and on ``extra`` conversations."""
    result = CrossCheck()
    probes = list(probe_battery(original))
    probes += [Probe(f"hypothesis-{i}", tuple(m), {}) for i, m in enumerate(extra)]
    for probe in probes:
        messages, kwargs = list(probe.messages), dict(probe.kwargs)
        # Rule 1: every prefix, both generation-prompt settings.
        for count in range(1, len(messages) + 1):
            for prompt in (False, True):
                before = _render(original, messages[:count], prompt, kwargs)
                if isinstance(before, RenderError):
                    continue  # the original refuses: nothing to compare
                after = _render(patched, messages[:count], prompt, kwargs)
                if isinstance(after, RenderError):
                    result.failures.append(f"{probe.name}[:{count}] prompt={prompt}: patched raises {after}")
                elif after[0] != before[0]:
                    result.failures.append(f"{probe.name}[:{count}] prompt={prompt}: render differs")
        # Rule 2: the spans of the full conversation are the oracle's trained turns.
        try:
            expectation = expected_turns(original, probe)
        except RenderError:
            continue
        full = _render(patched, messages, False, kwargs)
        if isinstance(full, RenderError):
            continue  # already reported above when the original accepts it
        expected = merge_spans([(t.start, t.end) for t in expectation.turns if t.trained])
        actual = merge_spans(full[1])
        if actual != expected:
            result.failures.append(f"{probe.name}: spans {actual} != oracle {expected}")
        result.checked_probes += 1
    return result


def check_one(template: str, extra: Sequence[Sequence[Mapping[str, Any]]] = ()) -> str:
    """Run both properties on ``template``; returns ``"verified"``, ``"not verified"`` or ``"rejected"``.

    Raises:
        AssertionError: a crash (non-``TemplatefixError``) or a false "verified".
    """
    try:
        result = patch_template(template)
    except TemplatefixError:
        return "rejected"
    except Exception as error:  # the property: nothing but TemplatefixError escapes
        raise AssertionError(f"patch_template crashed: {type(error).__name__}: {error}") from error
    if not result.passed:  # passed: every probe holds (verified also asks for full coverage)
        return "not verified"
    check = cross_check(template, result.patched, extra)
    assert not check.failures, "verified but the cross-check fails:\n" + "\n".join(check.failures[:5])
    return "verified"


def reference_seeds() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(REFERENCE_DIR.glob("*.jinja"))]


def corpus_seeds(corpus: Path) -> list[str]:
    root = corpus / "templates"
    return [(root / name).read_text(encoding="utf-8") for name in CORPUS_SEEDS if (root / name).is_file()]


# -- tests ----------------------------------------------------------------------------------

FUZZ_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def test_cross_check_can_fail() -> None:
    """The cross-check is not vacuous: a wrong span or a changed byte is caught."""
    original = (REFERENCE_DIR / "chatml.jinja").read_text(encoding="utf-8")
    good = patch_template(original)
    assert good.verified and not cross_check(original, good.patched).failures
    # A marker that also covers the header: spans differ from the oracle's.
    wide = good.patched.replace("{% generation %}", "").replace("{%- generation %}", "")
    wide = "{% generation %}" + wide.replace("{% endgeneration %}", "").replace("{%- endgeneration %}", "")
    wide += "{% endgeneration %}"
    assert any("spans" in f for f in cross_check(original, wide).failures)
    # One byte more in the render.
    assert any("render differs" in f for f in cross_check(original, good.patched + "x").failures)


@seed(20240601)
@FUZZ_SETTINGS
@given(template=mutated(reference_seeds()), extra=st.lists(conversations(max_turns=2), max_size=1))
def test_mutated_reference_templates(template: str, extra: list[Any]) -> None:
    check_one(template, extra)


@pytest.fixture(scope="module")
def corpus_seed_texts(corpus_dir: Path) -> list[str]:
    texts = corpus_seeds(corpus_dir)
    if not texts:
        pytest.skip("none of the fuzz seed templates is in the corpus")
    return texts


def test_mutated_corpus_templates(corpus_seed_texts: list[str]) -> None:
    @seed(20240602)
    @settings(FUZZ_SETTINGS, max_examples=40)
    @given(template=mutated(corpus_seed_texts))
    def run(template: str) -> None:
        check_one(template)

    run()
