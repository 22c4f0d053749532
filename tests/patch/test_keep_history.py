"""The keep-history training variant (SPEC §8, ``templatefix.patch.variants``).

Synthetic templates check the mechanism; the corpus tests check the official templates of the
families that rewrite history (Qwen3, Qwen3.5, Qwen3.6, QwQ, gpt-oss, GLM) and one that does not
(DeepSeek-R1), and compare with TRL's hand-made training copies.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import templatefix
from templatefix.cli import main
from templatefix.patch.strip import strip_generation_markers
from templatefix.patch.variants import KeepHistoryResult, keep_history_variant, prove
from templatefix.probes import probe_battery, random_conversation
from templatefix.render import render
from templatefix.source import TemplateSource
from templatefix.unreachable import dead_outputs

#: Drops the reasoning of every assistant turn but the last, ends earlier turns with <end>.
DROPS_HISTORY = (
    "{% for m in messages %}"
    "{% if m.role == 'user' %}<user>{{ m.content }}<end>\n"
    "{% elif m.role == 'assistant' %}<bot>"
    "{% if loop.last and m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}"
    "{{ m.content }}{% if loop.last %}<eos>{% else %}<end>{% endif %}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<bot>{% endif %}"
)

#: Writes every turn the same whatever follows.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Drops reasoning before a computed last-question index, which stays at the end when no user
#: message has string content: the test takes both values when its turn is last.
UNPROVABLE = (
    "{% set ns = namespace(q=messages|length - 1) %}"
    "{% for m in messages %}{% if m.role == 'user' and m.content is string %}{% set ns.q = loop.index0 %}"
    "{% endif %}{% endfor %}"
    "{% for m in messages %}"
    "{% if m.role == 'user' %}<user>{{ m.content if m.content is string else m.content[0].text }}<end>\n"
    "{% elif m.role == 'assistant' %}<bot>"
    "{% if loop.index0 > ns.q %}<think>{{ m.reasoning_content or '' }}</think>{% endif %}"
    "{{ m.content if m.content is string else m.content[0].text }}<end>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<bot>{% endif %}"
)

MULTI_TURN = [
    {"role": "user", "content": "alpha"},
    {"role": "assistant", "reasoning_content": "bravo", "content": "charlie"},
    {"role": "user", "content": "delta"},
    {"role": "assistant", "reasoning_content": "echo", "content": "foxtrot"},
]


def test_loop_last_tests_are_rewritten_to_their_value_when_last() -> None:
    variant = keep_history_variant(DROPS_HISTORY)
    # `loop.last and m.reasoning_content` takes both values when last: only its operand is rewritten
    assert [(r.expression, r.value) for r in variant.rewrites] == [("loop.last", True), ("loop.last", True)]
    assert not variant.problems
    # every turn is written as when it is last: reasoning kept, <eos> after each
    assert render(variant.template, MULTI_TURN) == (
        "<user>alpha<end>\n<bot><think>bravo</think>charlie<eos>"
        "<user>delta<end>\n<bot><think>echo</think>foxtrot<eos>"
    )
    # the original drops the first turn's reasoning and ends it with <end>
    assert "bravo" not in render(DROPS_HISTORY, MULTI_TURN)


def test_the_variant_is_proven_and_patched_without_rewritten_turns() -> None:
    result = templatefix.patch_template(DROPS_HISTORY, keep_history=True)
    assert isinstance(result, KeepHistoryResult)
    assert result.proof.holds and result.proof.turns > 0 and result.proof.single > 0
    assert result.rewritten_turns == 0
    assert result.verified and result.status == "exact", result.reasons
    # markers on the variant, not on the original; the original's patch flags rewritten turns
    assert strip_generation_markers(result.patched) == result.variant
    plain = templatefix.patch_template(DROPS_HISTORY)
    assert plain.verified and any("rewritten" in flag for flag in plain.flags)
    data = result.to_json()["keep_history"]
    assert [r["line"] for r in data["rewrites"]] == [2, 2] and data["proof"]["holds"]


def test_patch_tokenizer_sets_the_variant() -> None:
    tokenizer = SimpleNamespace(chat_template=DROPS_HISTORY)
    tokenizer, result = templatefix.patch_tokenizer(tokenizer, keep_history=True)
    assert isinstance(result, KeepHistoryResult) and result.verified
    assert tokenizer.chat_template == result.patched
    assert strip_generation_markers(tokenizer.chat_template) == keep_history_variant(DROPS_HISTORY).template


def test_a_template_that_keeps_history_gives_itself() -> None:
    result = templatefix.patch_template(CHATML, keep_history=True)
    assert result.rewrites == [] and result.variant == CHATML
    assert result.proof.holds and result.verified
    assert result.patched == templatefix.patch_template(CHATML).patched


def test_an_unprovable_test_is_named_and_nothing_is_verified() -> None:
    result = templatefix.patch_template(UNPROVABLE, keep_history=True)
    assert not result.verified and not result.passed
    assert any("`loop.index0 > ns.q`" in p and "both values" in p for p in result.problems), result.problems
    assert not result.proof.holds
    assert any("no variant could be proven" in reason for reason in result.reasons)


def test_the_proof_catches_a_wrong_variant() -> None:
    """(a): a variant that writes the last turn differently; (c): one that changes a first turn."""
    probes = probe_battery(DROPS_HISTORY)
    wrong_last = DROPS_HISTORY.replace("<eos>", "<EOS>")
    assert any("(a)" in f for f in prove(DROPS_HISTORY, wrong_last, probes).failures)
    assert any("(c)" in f for f in prove(DROPS_HISTORY, wrong_last, probes).failures)
    # the original itself is not prefix-preserving: (b)
    assert any("(b)" in f for f in prove(DROPS_HISTORY, DROPS_HISTORY, probes).failures)
    assert prove(DROPS_HISTORY, keep_history_variant(DROPS_HISTORY).template, probes).holds


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=10_000))
def test_sec8_holds_on_random_conversations(seed: int) -> None:
    """SPEC §8 (a)-(c) on conversations no probe generator of the battery produced."""
    variant = keep_history_variant(DROPS_HISTORY).template
    proof = prove(DROPS_HISTORY, variant, [random_conversation(seed)])
    assert not proof.failures, proof.failures


@pytest.mark.parametrize(
    ("text", "dead"),
    [
        ("{% if true %}a{% else %}b{% endif %}", ["b"]),
        ("{% if false %}a{% elif true %}b{% elif x %}c{% else %}d{% endif %}", ["a", "c", "d"]),
        ("{% if not false %}a{% else %}b{% endif %}", ["b"]),
        ("{% if x or true %}a{% else %}b{% endif %}", ["b"]),
        ("{% if x and true %}a{% else %}b{% endif %}", []),
    ],
)
def test_constant_tests_decide_dead_branches(text: str, dead: list[str]) -> None:
    """A rewritten test leaves the branch it never takes dead, proven from the AST."""
    found = dead_outputs(TemplateSource.parse(text).ast)
    assert sorted(node.data for node in found) == dead


def test_cli_writes_the_variant_as_the_named_template_training(tmp_path: Path, capsys) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "chat_template.jinja").write_text(DROPS_HISTORY, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["patch", str(model), "--keep-history", "--no-engines", "-o", str(out), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == DROPS_HISTORY  # inference keeps T
    training = (out / "additional_chat_templates" / "training.jinja").read_text(encoding="utf-8")
    assert strip_generation_markers(training) == keep_history_variant(DROPS_HISTORY).template
    assert report["as_named"] == "training"
    assert [r["expression"] for r in report["templates"][0]["keep_history"]["rewrites"]] == ["loop.last"] * 2
    # --as-default puts the variant in place of the default
    out2 = tmp_path / "out2"
    assert main(["patch", str(model), "--keep-history", "--as-default", "--no-engines", "-o", str(out2)]) == 0
    assert (out2 / "chat_template.jinja").read_text(encoding="utf-8") == training
    assert not (out2 / "additional_chat_templates").exists()


def test_cli_refuses_to_write_an_unproven_variant(tmp_path: Path, capsys) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "chat_template.jinja").write_text(UNPROVABLE, encoding="utf-8")
    code = main(["patch", str(model), "--keep-history", "--no-engines", "-o", str(tmp_path / "out")])
    assert code == 1
    printed = capsys.readouterr().out
    assert "both values" in printed and "nothing written" in printed
    assert not (tmp_path / "out").exists()


# ---- the corpus ----------------------------------------------------------------------------------

#: official template -> the rewrites expected (line, expression, value); None: no variant proven.
OFFICIAL = {
    "qwen/Qwen3-0.6B.jinja": [
        (39, "loop.index0 > ns.last_query_index", True),
        (40, "loop.last or (not loop.last and reasoning_content)", True),
    ],
    "qwen/Qwen3.5-4B.jinja": [(100, "loop.index0 > ns.last_query_index", True)],
    "qwen/Qwen3.5-nothink.jinja": [(100, "loop.index0 > ns.last_query_index", True)],
    "qwen/Qwen3.6.jinja": [
        (100, "(preserve_thinking is defined and preserve_thinking is true) "
              "or (loop.index0 > ns.last_query_index)", True),
    ],
    "qwen/QwQ-32B.jinja": [(24, "not loop.last", False), (30, "not loop.last", False)],
    "gpt-oss/openai-gpt-oss-20b.2025-08-08.jinja": [
        (291, "not future_final_message.found", True),
        (293, "not future_final_message.found", True),
        (302, "loop.last and not add_generation_prompt", True),
    ],
    "glm/GLM-4.5.jinja": [(60, "loop.index0 > ns.last_user_index", True)],
    # GLM-5.1 is left out: the search's random-14 conversation under enable_thinking=False shows a
    # turn the variant still rewrites (message 7), so no variant is proven there.
    "deepseek/DeepSeek-R1.jinja": [],  # drops reasoning in every turn, the last one too: nothing to rewrite
}  # fmt: skip


def _read(corpus_dir: Path, name: str) -> str:
    return (corpus_dir / "templates" / name).read_text(encoding="utf-8")


@pytest.mark.corpus
@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_templates_get_a_proven_variant(corpus_dir: Path, name: str) -> None:
    original = _read(corpus_dir, name)
    result = templatefix.patch_template(original, keep_history=True)
    assert [(r.line, r.expression, r.value) for r in result.rewrites] == OFFICIAL[name]
    assert not result.problems
    assert result.proof.holds, result.proof.failures
    assert result.rewritten_turns == 0
    report = result.report
    assert not [t for p in report.probes for t in p.turns if t.kind == "rewritten"]
    plain = templatefix.patch_template(original)
    # the variant's patch is as good as the original's: verified where the original's is (GLM and
    # DeepSeek-R1 keep the original's unreached output), and no longer flags rewritten turns
    assert result.passed
    if plain.verified:
        assert result.verified, result.reasons
    else:
        assert result.status == plain.status == "unverified-code"
        assert result.unverified_code == plain.unverified_code
    if result.rewrites:
        assert plain.flags  # the original's turns are flagged: rewritten (QwQ's: mismatching)
    assert not any("rewritten" in flag for flag in result.flags)


@pytest.mark.corpus
def test_qwq_keeps_its_mismatch_and_nothing_else(corpus_dir: Path) -> None:
    """QwQ's generation prompt opens <think>, which its render of an answer without one lacks:
    the variant keeps every turn's <think> but stays a mismatch (SPEC §3), never exact."""
    result = templatefix.patch_template(_read(corpus_dir, "qwen/QwQ-32B.jinja"), keep_history=True)
    assert result.proof.mismatched == result.proof.turns > 0
    assert result.verified and result.status == "flagged"
    assert all("generation prompt disagrees" in flag for flag in result.flags)


@pytest.mark.corpus
def test_qwen3_later_revision_has_no_provable_variant(corpus_dir: Path) -> None:
    """With user content given as a list of parts the template finds no question, and writes no
    reasoning even for the last turn: its last-question test takes both values when last."""
    later = _read(corpus_dir, "qwen/Qwen3.later-revision.jinja")
    result = templatefix.patch_template(later, keep_history=True)
    assert not result.verified and not result.passed
    assert result.problems == [
        "line 43: `loop.index0 > ns.last_query_index` depends on later messages but takes both values "
        "when its turn is the last message"
    ]


def _trl_template(name: str) -> str:
    trl = pytest.importorskip("trl")
    return (Path(trl.__file__).parent / "chat_templates" / name).read_text(encoding="utf-8")


def _renders(template: str, probes: list) -> list[str | None]:
    out: list[str | None] = []
    for probe in probes:
        messages = probe.conversation()
        for k in range(1, len(messages) + 1):
            for agp in (False, True):
                try:
                    text = render(template, messages[:k], add_generation_prompt=agp, **probe.render_kwargs())
                    out.append(text)
                except Exception:  # noqa: BLE001 - the template rejects that prefix
                    out.append(None)
    return out


@pytest.mark.corpus
@pytest.mark.parametrize(
    ("official", "trl_copy"),
    [
        ("qwen/Qwen3.5-4B.jinja", "qwen3_5_think_training.jinja"),
        ("qwen/Qwen3.5-nothink.jinja", "qwen3_5_nothink_training.jinja"),
        ("qwen/Qwen3.6.jinja", "qwen3_6_training.jinja"),
    ],
)
def test_same_renders_as_trl_hand_made_copies(corpus_dir: Path, official: str, trl_copy: str) -> None:
    """TRL removed the last-question conditional by hand; the derived variant renders the same on
    every prefix of every probe, with and without the generation prompt."""
    original = _read(corpus_dir, official)
    variant = keep_history_variant(original).template
    probes = probe_battery(original)
    assert _renders(variant, probes) == _renders(_trl_template(trl_copy), probes)


@pytest.mark.corpus
def test_qwen3_compared_with_trl(corpus_dir: Path) -> None:
    """TRL's qwen3_training derives from the later Qwen3 revision (``content is string`` guards):
    - the official Qwen3's variant renders the same wherever the official template renders; where it
      raises (list content), TRL's base renders;
    - against its own base, TRL's copy breaks SPEC §8 (a)/(c) exactly on list-content user messages:
      there the original writes no reasoning even for the last turn, and TRL's copy always does. The
      analysis refuses that rewrite (test above)."""
    trl_copy = _trl_template("qwen3_training.jinja")
    official = _read(corpus_dir, "qwen/Qwen3-0.6B.jinja")
    probes = probe_battery(official)
    ours, theirs = _renders(keep_history_variant(official).template, probes), _renders(trl_copy, probes)
    both = [(a, b) for a, b in zip(ours, theirs, strict=True) if a is not None]
    assert both and all(a == b for a, b in both)
    assert len(both) < len(ours)  # some prefixes have list content: the official template raises
    later = _read(corpus_dir, "qwen/Qwen3.later-revision.jinja")
    proof = prove(later, strip_generation_markers(trl_copy), probe_battery(later))
    assert proof.failures
    failing = {f.split(":")[0] for f in proof.failures}
    assert failing <= {"content_parts", "content_parts_tool_calls", "random-3"}


@pytest.mark.corpus
@pytest.mark.parametrize(
    ("official", "trl_copy", "why"),
    [
        # TRL's copy only adds markers: earlier turns keep <|end|> and lose their analysis (b).
        ("gpt-oss/openai-gpt-oss-20b.2025-08-08.jinja", "gptoss_training.jinja", "(b)"),
        # TRL's copy moves the next message's header (<|user|>, <|observation|>) into the assistant
        # turn, so even a one-turn conversation renders differently (a)/(c); it keeps the
        # last-user-index test, so earlier reasoning is still dropped.
        ("glm/GLM-4.5.jinja", "glm4moe_training.jinja", "(c)"),
    ],
)
def test_trl_copies_that_are_not_keep_history_variants(
    corpus_dir: Path, official: str, trl_copy: str, why: str
) -> None:
    original = _read(corpus_dir, official)
    probes = probe_battery(original)
    theirs = prove(original, strip_generation_markers(_trl_template(trl_copy)), probes)
    assert any(why in failure for failure in theirs.failures)
    assert prove(original, keep_history_variant(original).template, probes).holds


def test_pull_request_proposes_the_variant_as_the_training_template(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    from support.hub_server import TEST_TOKEN, FakeHub, hub_environment

    fake = FakeHub(token=TEST_TOKEN)
    fake.add_repo("org/drops", {"chat_template.jinja": DROPS_HISTORY.encode()})
    with fake.serving() as url:
        hub_environment(monkeypatch, tmp_path, url)
        code = main(["patch", "org/drops", "--create-pr", "--keep-history", "--no-engines", "--json"])
        assert code == 0, capsys.readouterr().err
        (pr,) = [d for d in fake.repos["org/drops"].discussions if d.is_pull_request]
        repo = fake.repos["org/drops"]
        files = repo.snapshots[repo.refs[f"refs/pr/{pr.num}"]]
    description = pr.description
    assert "A training variant that keeps history" in description
    assert "line 2: `loop.last` -> `true`" in description and "inference keeps the" in description
    assert 'tokenizer.chat_template["training"]' in description
    assert files["chat_template.jinja"] == DROPS_HISTORY.encode()  # the default stays for inference
    training = files["additional_chat_templates/training.jinja"].decode()
    assert strip_generation_markers(training) == keep_history_variant(DROPS_HISTORY).template
