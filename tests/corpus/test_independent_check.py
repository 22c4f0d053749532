"""The independent checker (``tests/independent``) judges templatefix's patches, and can fail.

- Reference templates: hypothesis draws conversations; templatefix's patch must pass the judge.
- Corpus sample: every gpt-oss, Qwen and Gemma template plus every ``OTHER_STRIDE``-th other one;
  where templatefix says verified, a few seeded conversations must pass the judge (the prefix
  rule and the word rule, default policy; other policies: ``tests/corpus/test_independent_words.py``).
  ``benchmarks/crosscheck.py`` runs the whole corpus with more conversations.
- The judge is not vacuous: TRL's Qwen2.5 copy (its span takes the header's ``\\n``), hand-made
  wrong patches and a changed byte are each reported at the right edge.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from independent.conversations import Conversation, conversations, random_conversation
from independent.judge import judge
from independent.render import render_text
from independent.sweep import check_template
from support.data import CORPUS_ENV, corpus_templates_in, data_dir

import templatefix

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "templates"
REFERENCES = sorted(p.name for p in REFERENCE_DIR.glob("*.jinja"))
#: Families always in the CI sample; of the rest, every OTHER_STRIDE-th template (sorted by name).
ALWAYS = ("gpt-oss/", "qwen/", "gemma/")
OTHER_STRIDE = 6
CONVERSATIONS_PER_TEMPLATE = 3


@pytest.fixture(scope="module")
def reference_patches() -> dict[str, tuple[str, str]]:
    out = {}
    for name in REFERENCES:
        original = (REFERENCE_DIR / name).read_text(encoding="utf-8")
        result = templatefix.patch_template(original)
        assert result.verified, f"{name}: {result.reasons}"
        out[name] = (original, result.patched)
    return out


@pytest.mark.parametrize("name", REFERENCES)
def test_reference_patches_pass_the_judge(name: str, reference_patches: dict[str, tuple[str, str]]) -> None:
    original, patched = reference_patches[name]

    @seed(20260601)
    @settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(conversation=conversations())
    def run(conversation: Conversation) -> None:
        verdict = judge(original, patched, conversation)
        assert verdict.ok, _explain(name, verdict.failures[0], conversation)

    run()


# -- the checker can fail -------------------------------------------------------------------

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_LOOP = "{% for m in messages %}"
_BODY = "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
_TAIL = "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
_USER = "{% else %}" + _BODY + "{% endif %}"
#: Correct by hand, then three ways to be wrong.
_NEWLINE = "{{ '\\n' }}"  # a literal newline right after a block tag would be trimmed
RIGHT = (
    _LOOP + "{% if m.role == 'assistant' %}<|im_start|>{{ m.role }}\n"
    "{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}" + _NEWLINE + _USER + _TAIL
)
HEADER_IN = (
    _LOOP + "{% if m.role == 'assistant' %}{% generation %}<|im_start|>{{ m.role }}\n"
    "{{ m.content }}<|im_end|>{% endgeneration %}" + _NEWLINE + _USER + _TAIL
)
END_OUT = (
    _LOOP + "{% if m.role == 'assistant' %}<|im_start|>{{ m.role }}\n{% generation %}{{ m.content }}"
    "{% endgeneration %}<|im_end|>\n" + _USER + _TAIL
)
#: (the empty output first: transformers 4.x records no span for a block that opens before
#: anything has been rendered)
USER_IN = "{{ bos_token[:0] }}" + _LOOP + "{% generation %}" + _BODY + "{% endgeneration %}" + _TAIL
TWO_TURNS = Conversation(
    [
        {"role": "user", "content": "first u0q"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second u2q"},
        {"role": "assistant", "content": "two"},
    ]
)


def test_hand_made_right_patch_passes() -> None:
    assert judge(CHATML, RIGHT, TWO_TURNS).failures == []


def test_header_inside_the_span_is_caught() -> None:
    failure = judge(CHATML, HEADER_IN, TWO_TURNS).failures[0]
    # Rule 2 on M[:2]: the output "one<|im_end|>" is [59, 72), after "<|im_start|>assistant\n" at 37.
    assert (failure.rule, failure.render, failure.turn) == ("span", "M[:2] agp=False", 1)
    assert failure.expected == (59, 72) and failure.actual[0][0] == 37 and failure.edge == 37


def test_end_of_turn_outside_the_span_is_caught() -> None:
    failure = judge(CHATML, END_OUT, TWO_TURNS).failures[0]
    assert (failure.rule, failure.turn, failure.expected) == ("span", 1, (59, 72))
    assert failure.actual == ((59, 62),)


def test_user_text_inside_a_span_is_caught() -> None:
    failures = judge(CHATML, USER_IN, TWO_TURNS).failures
    assert failures and all(f.rule in ("span", "outside") for f in failures)
    assert any(f.rule == "outside" and "message 0 (user)" in f.detail for f in failures)


def test_changed_byte_is_caught() -> None:
    changed = RIGHT.replace("<|im_end|>{% endgeneration %}", "<|im_end|>x{% endgeneration %}")
    failure = judge(CHATML, changed, TWO_TURNS).failures[0]
    assert (failure.rule, failure.render, failure.edge) == ("render", "M[:2] agp=False", 72)


def test_reference_with_header_marked_is_caught(reference_patches: dict[str, tuple[str, str]]) -> None:
    """chatml.jinja with markers around its whole tool-call turn, header included."""
    original, _ = reference_patches["chatml.jinja"]
    opening = "        {{- '<|im_start|>assistant\\n' }}\n        {%- if reasoning %}"
    closing = "        {{- '<|im_end|>\\n' }}\n    {%- elif not"
    assert original.count(opening) == 1 and original.count(closing) == 1
    wrong = original.replace(opening, "{% generation %}" + opening).replace(
        closing, closing.replace("\n    {%- elif", "{% endgeneration %}\n    {%- elif")
    )
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    conversation = Conversation(
        [
            {"role": "user", "content": "weather u0q"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "cold t2q"},
            {"role": "assistant", "content": "It is cold."},
        ]
    )
    failures = judge(original, wrong, conversation).failures
    first = failures[0]
    assert (first.rule, first.render, first.turn) == ("span", "M[:2] agp=False", 1)
    assert first.actual[0][0] == first.expected[0] - len("<|im_start|>assistant\n")


def test_trl_qwen2_5_copy_is_caught(corpus_dir: Path) -> None:
    """TRL's hand-patched Qwen2.5 trains the "\\n" that ends the generation prompt (SPEC reference list)."""
    root = corpus_dir / "templates" / "qwen"
    original = (root / "Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
    trl = (root / "trl-qwen2_5_training.jinja").read_text(encoding="utf-8")
    failure = judge(original, trl, TWO_TURNS).failures[0]
    assert failure.rule == "span" and failure.render == "M[:2] agp=False" and failure.turn == 1
    assert failure.actual[0][0] == failure.expected[0] - 1  # one character early: the header's "\n"
    rendered = render_text(original, TWO_TURNS.messages[:2], False, {})
    assert rendered[failure.edge] == "\n" and rendered[: failure.edge].endswith("<|im_start|>assistant")


# -- the corpus sample ----------------------------------------------------------------------


def _sample(names: list[str]) -> list[str]:
    always = [n for n in names if n.startswith(ALWAYS)]
    others = [n for n in names if not n.startswith(ALWAYS)]
    return always + others[::OTHER_STRIDE]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sampled_template" not in metafunc.fixturenames:
        return
    corpus, reason = data_dir(CORPUS_ENV, "corpus")
    names = [name for name, _ in corpus_templates_in(corpus)] if corpus is not None else []
    if not names:
        skip = pytest.mark.skip(reason=reason or f"no templates under {corpus}")
        metafunc.parametrize("sampled_template", [pytest.param(None, marks=skip)], ids=["no-corpus"])
        return
    sample = _sample(names)
    metafunc.parametrize("sampled_template", sample, ids=sample)


def test_verified_corpus_sample(sampled_template: str, corpus_dir: Path) -> None:
    """Where templatefix says verified, the independent judge agrees on seeded conversations.

    A patch that passed every probe but names outputs no probe reached (``unverified-code``) is
    judged too; a wrong one is reported as an expected failure, since templatefix said so.
    """
    path = corpus_dir / "templates" / sampled_template
    with open(path, encoding="utf-8", newline="") as handle:
        text = handle.read()
    outcome = check_template(sampled_template, text, CONVERSATIONS_PER_TEMPLATE, max_findings=1)
    if outcome.status not in ("verified", "unverified-code"):
        pytest.skip(f"templatefix does not call it verified ({outcome.status}): nothing is promised")
    if outcome.status == "unverified-code" and outcome.findings:
        pytest.xfail(f"wrong where templatefix names unreached outputs: {outcome.first_failure()}")
    assert not outcome.findings, outcome.first_failure()


def test_corpus_sample_is_mostly_judged(corpus_dir: Path) -> None:
    """The seeded conversations reach the sample: the original accepts them for most templates."""
    names = _sample([name for name, _ in corpus_templates_in(corpus_dir)])
    accepted = 0
    for name in names:
        text = (corpus_dir / "templates" / name).read_text(encoding="utf-8")
        accepted += any(_accepts(text, random_conversation(s)) for s in range(CONVERSATIONS_PER_TEMPLATE * 4))
    assert accepted >= 0.9 * len(names), f"only {accepted} of {len(names)} templates accept a conversation"


def _accepts(template: str, conversation: Conversation) -> bool:
    try:
        render_text(template, conversation.messages, False, conversation.kwargs)
    except Exception:
        return False
    return True


def _explain(name: str, failure: object, conversation: Conversation) -> str:
    return f"{name}: {failure}\nconversation: {json.dumps(conversation.to_json(), ensure_ascii=False)}"


def test_back_to_back_outputs_are_not_early() -> None:
    """Two assistant outputs with nothing between them (a tool message the template drops) merge
    into one span; neither turn is judged early."""
    original = (
        "{% for m in messages %}{% if m.role == 'user' %}[U]{{ m.content }}[/U]"
        "{% elif m.role == 'assistant' %}{{ m.content }}</s>{% endif %}{% endfor %}"
    )
    marked = "{% generation %}{{ m.content }}</s>{% endgeneration %}"
    patched = original.replace("{{ m.content }}</s>", marked)
    conversation = Conversation(
        [
            {"role": "user", "content": "hi u0q"},
            {"role": "assistant", "content": "a"},
            {"role": "tool", "content": "dropped t2q"},
            {"role": "assistant", "content": "b"},
        ]
    )
    assert judge(original, patched, conversation).failures == []
    late = patched.replace("{% generation %}{{ m.content }}", "{{ m.content }}{% generation %}")
    assert [f.turn for f in judge(original, late, conversation).failures if f.rule == "span"][:1] == [1]


@pytest.mark.parametrize(
    ("original", "copy"),
    [
        ("llama/Meta-Llama-3-8B-Instruct.jinja", "llama/trl-llama3_training.jinja"),
        ("qwen/Qwen3-Instruct-2507.jinja", "qwen/trl-qwen3_instruct_2507_training.jinja"),
        ("phi/Phi-3.5-mini-instruct.jinja", "phi/trl-phi3_5_training.jinja"),
    ],
)
def test_trl_copies_spec_calls_exact_pass(original: str, copy: str, corpus_dir: Path) -> None:
    """TRL's hand-patched copies that SPEC's reference list calls exact pass the judge (it is not
    stricter than SPEC) on conversations their originals accept."""
    root = corpus_dir / "templates"
    first, second = (root / original).read_text(encoding="utf-8"), (root / copy).read_text(encoding="utf-8")
    verdicts = [judge(first, second, random_conversation(seed)) for seed in range(6)]
    assert sum(not v.skipped for v in verdicts) >= 3
    assert [str(f) for v in verdicts for f in v.training_failures] == []
