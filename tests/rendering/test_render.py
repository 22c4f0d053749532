"""``templatefix.render`` renders exactly as ``tokenizer.apply_chat_template`` does.

Every corpus template is rendered on its whole probe battery (with and without the generation
prompt) by both, with one real tokenizer's special tokens. Both raising counts as agreement; a
``raise_exception`` refusal must surface as ``TemplateRejected``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from support.strategies import random_probes

from templatefix.conversation import Probe
from templatefix.errors import RenderError, TemplateRejected
from templatefix.probes import fixed_battery, probe_battery
from templatefix.render import render

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "templates"
REFERENCE_TEMPLATES = sorted(REFERENCE_DIR.glob("*.jinja"))
#: The real tokenizer whose special tokens suit each reference template best.
REFERENCE_TOKENIZER = {"chatml": "qwen3", "gemma": "gemma3", "harmony": "gpt-oss", "llama3": "llama3"}


def _ours(template: str, probe: Probe, tokenizer: Any, add_generation_prompt: bool) -> str | Exception:
    try:
        return render(
            template,
            probe.conversation(),
            add_generation_prompt=add_generation_prompt,
            special_tokens=tokenizer.special_tokens_map,
            **probe.render_kwargs(),
        )
    except RenderError as error:
        return error


def _theirs(template: str, probe: Probe, tokenizer: Any, add_generation_prompt: bool) -> str | Exception:
    try:
        return tokenizer.apply_chat_template(
            probe.conversation(),
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **probe.render_kwargs(),
        )
    except Exception as error:  # noqa: BLE001 - any failure of transformers counts as "raised"
        return error


def compare(template: str, probe: Probe, tokenizer: Any, add_generation_prompt: bool) -> bool:
    """Assert agreement; return whether it rendered (rather than both raising)."""
    ours = _ours(template, probe, tokenizer, add_generation_prompt)
    theirs = _theirs(template, probe, tokenizer, add_generation_prompt)
    where = f"probe {probe.name}, add_generation_prompt={add_generation_prompt}"
    if isinstance(ours, Exception) or isinstance(theirs, Exception):
        assert isinstance(ours, Exception) and isinstance(theirs, Exception), (
            f"{where}: only one side raised: ours={ours!r} transformers={theirs!r}"
        )
        if isinstance(ours, TemplateRejected):
            assert type(theirs) is jinja2.TemplateError, f"{where}: rejection vs {theirs!r}"
        return False
    assert ours == theirs, f"{where}: renders differ"
    return True


@pytest.fixture(scope="module")
def qwen3(load_tokenizer: Any) -> Any:
    return load_tokenizer("qwen3")


#: (rendered, compared) counts across the corpus, for the non-vacuity check below.
_CORPUS_COUNTS = {"rendered": 0, "compared": 0}


def test_corpus_template_renders_like_transformers(corpus_template: tuple[str, str], qwen3: Any) -> None:
    _, template = corpus_template
    for probe in probe_battery(template):
        for add_generation_prompt in (False, True):
            _CORPUS_COUNTS["compared"] += 1
            _CORPUS_COUNTS["rendered"] += compare(template, probe, qwen3, add_generation_prompt)


def test_corpus_comparison_was_not_vacuous(corpus_templates: list[tuple[str, str]], qwen3: Any) -> None:
    """Most corpus renders must succeed, or "both raised" would hide a broken renderer."""
    if _CORPUS_COUNTS["compared"] == 0:  # run alone: count it here
        for _, template in corpus_templates:
            for probe in fixed_battery(template)[:3]:
                _CORPUS_COUNTS["compared"] += 1
                _CORPUS_COUNTS["rendered"] += compare(template, probe, qwen3, False)
    assert _CORPUS_COUNTS["rendered"] > _CORPUS_COUNTS["compared"] / 2, _CORPUS_COUNTS


@pytest.mark.parametrize("path", REFERENCE_TEMPLATES, ids=[path.stem for path in REFERENCE_TEMPLATES])
def test_reference_template_renders_like_transformers(path: Path, load_tokenizer: Any) -> None:
    template = path.read_text(encoding="utf-8")
    tokenizer = load_tokenizer(REFERENCE_TOKENIZER.get(path.stem, "qwen3"))
    battery = probe_battery(template)
    rendered = [compare(template, probe, tokenizer, agp) for probe in battery for agp in (False, True)]
    assert any(rendered), "no probe rendered at all"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(probe=random_probes())
def test_random_conversations_render_like_transformers(probe: Probe, load_tokenizer: Any) -> None:
    template = (REFERENCE_DIR / "chatml.jinja").read_text(encoding="utf-8")
    assert compare(template, probe, load_tokenizer("qwen3"), False)
    compare(template, probe, load_tokenizer("qwen3"), True)


def test_none_valued_keys_are_dropped_as_transformers_does(qwen3: Any) -> None:
    # OpenAI-style messages carry content=None next to tool calls; apply_chat_template drops such keys.
    template = (Path(__file__).resolve().parents[2] / "templates" / "chatml.jinja").read_text(
        encoding="utf-8"
    )
    call = {"id": "call00001", "type": "function", "function": {"name": "f", "arguments": {"q": "x"}}}
    messages = [
        {"role": "user", "content": "hi", "name": None},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "done", "tool_call_id": "call00001"},
        {"role": "assistant", "content": "ok", "tool_calls": None},
    ]
    expected = qwen3.apply_chat_template(messages, chat_template=template, tokenize=False)
    assert render(template, messages, special_tokens=qwen3.special_tokens_map) == expected
    assert "None" not in expected
