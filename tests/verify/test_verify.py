"""The verifier: inline templates with known defects, and TRL's hand-patched corpus templates
judged against SPEC.md's reference verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from templatefix.conversation import Probe
from templatefix.jinja.markers import has_markers
from templatefix.policy import Policy
from templatefix.probes import probe_battery
from templatefix.shapes import error_probes
from templatefix.verify import verify

ORIGINAL = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def marked(assistant_body: str, other_body: str = "{{ m.content }}<|im_end|>\n") -> str:
    """ChatML with the assistant branch written as ``assistant_body`` after ``<|im_start|>assistant``.

    (A newline right after a block tag is eaten by ``trim_blocks``, hence ``{{ '\\n' }}``.)
    """
    return (
        "{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>assistant" + assistant_body
        + "{% else %}<|im_start|>{{ m.role }}\n" + other_body + "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


NL = "{{ '\\n' }}"  # a newline right after a block tag would be eaten by trim_blocks
CORRECT = marked("\n{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}{{ '\\n' }}")
HEADER_NEWLINE_INSIDE = marked("{% generation %}" + NL + "{{ m.content }}<|im_end|>{% endgeneration %}" + NL)
CHANGES_RENDER = marked("\n{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}{{ '\\n\\n' }}")
NO_END_OF_TURN = marked("\n{% generation %}{{ m.content }}{% endgeneration %}<|im_end|>\n")


def conversation(name: str, *messages: dict, **kwargs: object) -> Probe:
    return Probe(name, tuple(messages), dict(kwargs))


PROBES = [
    conversation(
        "one_turn", {"role": "user", "content": "alpha1"}, {"role": "assistant", "content": "bravo2"}
    ),
    conversation(
        "system_two_turns",
        {"role": "system", "content": "sys0"},
        {"role": "user", "content": "alpha1"},
        {"role": "assistant", "content": "bravo2"},
        {"role": "user", "content": "charlie3"},
        {"role": "assistant", "content": "delta4"},
    ),
]


def test_correct_template_verifies_every_turn_exact():
    report = verify(CORRECT, ORIGINAL, probes=PROBES)
    assert report.verified, report.failures()
    assert [t.verdict for p in report.probes for t in p.turns] == ["exact", "exact", "exact"]
    assert report.failures() == []
    assert report.render_compared


def test_correct_template_verifies_on_the_full_probe_battery():
    report = verify(CORRECT, ORIGINAL)
    assert report.verified, report.failures()
    # the battery, and the error probes (SPEC rule 1 where templates raise)
    assert len(report.checked) == len(probe_battery(ORIGINAL)) + len(error_probes()) - sum(
        p.status == "skipped" for p in report.probes
    )
    assert [p.name for p in report.probes[-len(error_probes()) :]] == [p.name for p in error_probes()]


def test_span_holding_the_header_newline_fails_naming_the_start_edge():
    report = verify(HEADER_NEWLINE_INSIDE, ORIGINAL, probes=PROBES)
    assert not report.verified
    turn = report.probes[0].turns[0]
    assert turn.verdict == "wrong"
    [edge] = turn.edges
    assert (edge.edge, edge.actual, edge.expected) == ("start", edge.expected - 1, edge.expected)
    assert "assistant‸\\nbravo2" in edge.actual_context
    assert "header" in edge.note and "'\\n'" in edge.note
    assert any("message 1" in line and "start at" in line for line in report.failures())


def test_end_of_turn_outside_the_span_is_named():
    report = verify(NO_END_OF_TURN, ORIGINAL, probes=PROBES)
    assert not report.verified
    turn = report.probes[0].turns[0]
    assert turn.end_of_turn == "<|im_end|>" and turn.end_of_turn_inside is False
    assert any("'<|im_end|>' is outside the span" in line for line in report.failures())


def test_changed_render_fails_rule_one_with_the_offset():
    report = verify(CHANGES_RENDER, ORIGINAL, probes=PROBES)
    assert not report.verified
    problems = report.probes[0].render_problems
    assert problems and "differs from the original at offset" in problems[0]


def test_trailing_whitespace_inside_needs_the_in_policy():
    inside = marked("\n{% generation %}{{ m.content }}<|im_end|>\n{% endgeneration %}")
    assert not verify(inside, ORIGINAL, probes=PROBES).verified
    assert verify(inside, ORIGINAL, probes=PROBES, policy=Policy(trailing_whitespace="in")).verified


def test_no_markers_is_a_clear_failure():
    report = verify(ORIGINAL, probes=PROBES)
    assert not report.verified
    assert report.errors == ["no {% generation %} markers: nothing would be trained"]
    assert not has_markers("{# {% generation %} #}" + ORIGINAL)


def test_probe_the_original_rejects_is_skipped_not_failed():
    guard = "{% if messages[0].role == 'system' %}{{ raise_exception('no system') }}{% endif %}"
    report = verify(guard + CORRECT, guard + ORIGINAL, probes=PROBES)
    assert [p.status for p in report.probes] == ["passed", "skipped"]
    assert "no system" in report.probes[1].reason
    assert report.verified


def test_all_probes_rejected_is_not_verified():
    guard = "{{ raise_exception('never') }}"
    report = verify(guard + CORRECT, guard + ORIGINAL, probes=PROBES)
    assert not report.verified
    assert any("could be checked" in line for line in report.failures())


def test_untrained_turn_with_a_span_is_wrong():
    report = verify(CORRECT, ORIGINAL, probes=PROBES, policy=Policy(turns="last"))
    assert not report.verified
    verdicts = [t.verdict for t in report.probes[1].turns]
    assert verdicts == ["wrong", "exact"]


REWRITING_ORIGINAL = (
    "{% set ns = namespace(last=0) %}{% for m in messages %}{% if m.role == 'user' %}"
    "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and loop.index0 > ns.last and m.reasoning_content %}"
    "<think>\n{{ m.reasoning_content }}\n</think>\n\n{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REWRITING_MARKED = (
    "{% set ns = namespace(last=0) %}{% for m in messages %}{% if m.role == 'user' %}"
    "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
    "{% if loop.index0 > ns.last and m.reasoning_content %}"
    "<think>\n{{ m.reasoning_content }}\n</think>\n\n{% endif %}"
    "{{ m.content }}<|im_end|>{% endgeneration %}{{ '\\n' }}{% else %}{{ m.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REASONING_PROBE = conversation(
    "reasoning_two_turns",
    {"role": "user", "content": "alpha1"},
    {"role": "assistant", "content": "bravo2", "reasoning_content": "think3"},
    {"role": "user", "content": "charlie4"},
    {"role": "assistant", "content": "delta5", "reasoning_content": "think6"},
)


def test_rewritten_history_with_the_right_shape_is_verified_but_flagged():
    report = verify(REWRITING_MARKED, REWRITING_ORIGINAL, probes=[REASONING_PROBE])
    assert report.verified, report.failures()
    assert [t.verdict for t in report.probes[0].turns] == ["rewritten", "exact"]
    [flag] = report.flags
    assert "message 1 is rewritten" in flag and "train the last assistant message only" in flag
    assert "split the conversation" in flag


def test_report_json_is_stable_and_matches_the_facts():
    report = verify(HEADER_NEWLINE_INSIDE, ORIGINAL, probes=PROBES)
    data = report.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["verified"] is False
    assert data["failures"] == report.failures()
    turn = data["probes"][0]["turns"][0]
    assert turn["verdict"] == "wrong" and turn["edges"][0]["edge"] == "start"
    assert data["counts"]["wrong"] == 3


def test_print_report_shows_the_same_verdicts():
    from rich.console import Console

    from templatefix.report import print_report

    console = Console(record=True, width=200)
    print_report(verify(HEADER_NEWLINE_INSIDE, ORIGINAL, probes=PROBES), console)
    shown = console.export_text()
    assert "1:wrong" in shown and "NOT VERIFIED" in shown and "start at" in shown


# --------------------------------------------------------------------------- corpus acceptance

#: TRL's hand-patched template -> the corpus original it renders identically to on the probes
#: (found by rendering every corpus template of the family on the battery; see the report).
#: ``None``: the original is not in the corpus; the copy is judged by rules 2–3 against itself.
TRL_ORIGINALS: dict[str, str | None] = {
    "command-r/trl-cohere_training.jinja": "command-r/c4ai-command-r-v01.default.jinja",
    "command-r/trl-cohere2_training.jinja": None,
    "deepseek/trl-deepseekv3_training.jinja": "deepseek/DeepSeek-V3.jinja",
    "gemma/trl-diffusion_gemma_training.jinja": "gemma/gemma-4-canonical-2026-07-09.jinja",
    "gemma/trl-gemma_training.jinja": "gemma/gemma-2-2b-it.jinja",
    "gemma/trl-gemma3_training.jinja": "gemma/gemma-3-4b-it.jinja",
    "glm/trl-glm4moe_training.jinja": "glm/GLM-4.5.jinja",
    "gpt-oss/trl-gptoss_training.jinja": "gpt-oss/openai-gpt-oss-20b.2025-08-08.jinja",
    "lfm/trl-lfm2_training.jinja": "lfm/LFM2.jinja",
    "llama/trl-llama3_training.jinja": "llama/Meta-Llama-3-8B-Instruct.jinja",
    "nemotron/trl-nemotron_3_nano_training.jinja": "nemotron/NVIDIA-Nemotron-3-Nano-30B-A3B.jinja",
    "nemotron/trl-nemotron_3_super_training.jinja": None,
    "nemotron/trl-nemotron_3_ultra_training.jinja": "nemotron/NVIDIA-Nemotron-3-Ultra.jinja",
    "other/trl-idefics3_training.jinja": "other/Idefics3-8B-Llama3.jinja",
    "phi/trl-phi3_training.jinja": "phi/Phi-3-mini-4k-instruct.jinja",
    "phi/trl-phi3_5_training.jinja": "phi/Phi-3.5-mini-instruct.jinja",
    "qwen/trl-qwen2_5_training.jinja": "qwen/Qwen2.5-7B-Instruct.jinja",
    "qwen/trl-qwen2_5_vl_training.jinja": "qwen/Qwen2.5-VL-7B-Instruct.jinja",
    "qwen/trl-qwen3_training.jinja": "qwen/Qwen3-0.6B.jinja",
    "qwen/trl-qwen3_5_think_training.jinja": "qwen/Qwen3.5-4B.jinja",
    "qwen/trl-qwen3_5_nothink_training.jinja": "qwen/Qwen3.5-nothink.jinja",
    "qwen/trl-qwen3_6_training.jinja": "qwen/Qwen3.6.jinja",
    "qwen/trl-qwen3_instruct_2507_training.jinja": "qwen/Qwen3-Instruct-2507.jinja",
    "qwen/trl-qwen3_vl_training.jinja": "qwen/Qwen3-VL.jinja",
}

#: SPEC.md "Reference": exact ones, and the ones that are not (with the reason SPEC gives).
SPEC_EXACT = {
    "cohere", "cohere2", "gemma", "gemma3", "idefics3", "lfm2", "llama3", "phi3", "phi3_5",
    "qwen2_5_vl", "qwen3_instruct_2507", "qwen3_vl",
}  # fmt: skip
SPEC_NOT_EXACT = {
    "qwen2_5": "span start",  # the \n after <|im_start|>assistant
    "gptoss": "span start",  # the first <|start|>assistant
    "qwen3": "render",  # rewrites history on purpose
    "qwen3_5_think": "render",
    "qwen3_5_nothink": "render",
    "qwen3_6": "render",
    "glm4moe": "render",
    "deepseekv3": "",
    "nemotron_3_nano": "",
    "nemotron_3_super": "",
    "nemotron_3_ultra": "",
    "diffusion_gemma": "",
}


def _short_name(path: str) -> str:
    return Path(path).name.removeprefix("trl-").removesuffix("_training.jinja")


def _read(corpus_dir: Path, name: str) -> str:
    with open(corpus_dir / "templates" / name, encoding="utf-8", newline="") as handle:
        return handle.read()


def _spec_exact(template: str, original: str | None) -> tuple[bool, list[str]]:
    """SPEC allows trailing whitespace after the end-of-turn text in or out: exact under either.

    The reference verdicts judge rules 1–3 only, so coverage (SPEC §4) is not asked for here.
    """
    failures: list[str] = []
    for whitespace in ("out", "in"):
        report = verify(template, original, policy=Policy(trailing_whitespace=whitespace))
        if report.passed:
            return True, []
        failures = report.failures()
    return False, failures


@pytest.mark.corpus
@pytest.mark.parametrize("trl_name", sorted(TRL_ORIGINALS), ids=_short_name)
def test_trl_templates_get_the_spec_reference_verdict(corpus_dir: Path, trl_name: str):
    if not (corpus_dir / "templates" / trl_name).is_file():
        pytest.skip(f"{trl_name} is not in this corpus")
    short = _short_name(trl_name)
    assert short in SPEC_EXACT or short in SPEC_NOT_EXACT, f"no SPEC verdict listed for {short}"
    original_name = TRL_ORIGINALS[trl_name]
    original = _read(corpus_dir, original_name) if original_name else None
    exact, failures = _spec_exact(_read(corpus_dir, trl_name), original)
    if short in SPEC_EXACT:
        assert exact, "\n".join(failures[:5])
        return
    assert not exact
    reason = SPEC_NOT_EXACT[short]
    if reason == "render":
        assert any(": render: " in line for line in failures), failures[:3]
    elif reason:
        assert any(reason in line for line in failures), failures[:3]


@pytest.mark.corpus
def test_every_trl_template_in_the_corpus_has_a_reference(corpus_dir: Path):
    root = corpus_dir / "templates"
    present = {path.relative_to(root).as_posix() for path in root.glob("*/trl-*.jinja")}
    unknown = present - set(TRL_ORIGINALS) - {"other/trl-llava_next_training.jinja"}
    assert not unknown, f"TRL templates without a mapping: {sorted(unknown)}"


@pytest.mark.corpus
def test_qwen2_5_failure_names_the_header_newline(corpus_dir: Path):
    report = verify(
        _read(corpus_dir, "qwen/trl-qwen2_5_training.jinja"),
        _read(corpus_dir, "qwen/Qwen2.5-7B-Instruct.jinja"),
        policy=Policy(trailing_whitespace="in"),
    )
    assert not report.verified
    edges = [e for p in report.probes for t in p.turns for e in t.edges]
    assert edges and all(e.edge == "start" and e.actual == e.expected - 1 for e in edges)
    assert all("assistant‸\\n" in e.actual_context for e in edges)


@pytest.mark.corpus
def test_gptoss_failure_names_the_first_start_assistant(corpus_dir: Path):
    report = verify(
        _read(corpus_dir, "gpt-oss/trl-gptoss_training.jinja"),
        _read(corpus_dir, "gpt-oss/openai-gpt-oss-20b.2025-08-08.jinja"),
    )
    assert not report.verified
    starts = [e for p in report.probes for t in p.turns for e in t.edges if e.edge == "start"]
    assert starts and all("'<|start|>assistant" in e.note for e in starts)
    assert any(t.verdict == "wrong" and t.kind == "rewritten" for p in report.probes for t in p.turns)


@pytest.mark.tokenizers
def test_token_masks_are_checked_through_the_tokens_hook(load_tokenizer):
    tokenizer = load_tokenizer("qwen2.5")
    report = verify(CORRECT, ORIGINAL, probes=PROBES, tokenizer=tokenizer)
    assert report.verified, report.failures()
    assert all(probe.token_problems == [] for probe in report.probes)

