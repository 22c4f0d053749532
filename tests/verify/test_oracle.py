"""The oracle (SPEC rules 2–3) on small inline templates whose answers can be worked out by hand."""

from __future__ import annotations

import pytest

from templatefix.conversation import Probe
from templatefix.errors import TemplateRejected
from templatefix.oracle import (
    expected_turns,
    locate_texts,
    markup_boundary,
)
from templatefix.policy import Policy

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-like: reasoning is shown only for assistant turns after the last user message.
DROPS_REASONING = (
    "{% set ns = namespace(last=0) %}{% for m in messages %}{% if m.role == 'user' %}"
    "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and loop.index0 > ns.last and m.reasoning_content %}"
    "<think>\n{{ m.reasoning_content }}\n</think>\n\n{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# QwQ-like: the generation prompt opens <think>, the training render never has it.
PROMPT_MISMATCH = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)

# Phi-3-like: the end-of-sequence text follows the whole conversation when there is no prompt.
EOS_AFTER_CONVERSATION = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% else %}<|endoftext|>{% endif %}"
)

TOOLS = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.arguments.q }}</tool_call>{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def probe(*messages: dict, **kwargs: object) -> Probe:
    return Probe("inline", tuple(messages), dict(kwargs))


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str, reasoning: str | None = None) -> dict:
    message = {"role": "assistant", "content": text}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return message


TWO_TURNS = probe(user("alpha1"), assistant("bravo2"), user("charlie3"), assistant("delta4"))


def spans_text(expectation) -> list[str]:
    return [expectation.text[start:end] for start, end in expectation.spans]


def test_exact_turns_cover_content_and_end_of_turn_only():
    expectation = expected_turns(CHATML, TWO_TURNS)
    assert [turn.kind for turn in expectation.turns] == ["exact", "exact"]
    assert spans_text(expectation) == ["bravo2<|im_end|>", "delta4<|im_end|>"]
    first = expectation.turns[0]
    # the span starts right after the generation prompt of the prefix
    header = "<|im_start|>assistant\n"
    assert first.start == expectation.text.index(header) + len(header)
    assert first.end_of_turn == "<|im_end|>"
    assert expectation.text[slice(*first.end_of_turn_range)] == "<|im_end|>"


def test_trailing_whitespace_policy_moves_only_the_end():
    out = expected_turns(CHATML, TWO_TURNS, Policy(trailing_whitespace="out"))
    inside = expected_turns(CHATML, TWO_TURNS, Policy(trailing_whitespace="in"))
    assert spans_text(inside) == ["bravo2<|im_end|>\n", "delta4<|im_end|>\n"]
    assert [t.start for t in out.turns] == [t.start for t in inside.turns]
    assert all(t.end_in == t.end_out + 1 for t in out.turns)


def test_turns_last_message_trains_only_the_final_assistant_message():
    expectation = expected_turns(CHATML, TWO_TURNS, Policy(turns="last_message"))
    assert [turn.trained for turn in expectation.turns] == [False, True]
    assert spans_text(expectation) == ["delta4<|im_end|>"]


def test_turns_last_trains_every_assistant_message_after_the_last_user_message():
    call = {"type": "function", "function": {"name": "look", "arguments": {"q": "echo5"}}}
    conversation = probe(
        user("alpha1"), assistant("bravo2"), user("charlie3"),
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "foxtrot6"},
        assistant("golf7"),
    )
    last_turn = expected_turns(TOOLS, conversation, Policy(turns="last"))
    assert [turn.trained for turn in last_turn.turns] == [False, True, True]
    assert spans_text(last_turn) == ["<tool_call>echo5</tool_call><|im_end|>", "golf7<|im_end|>"]
    last_message = expected_turns(TOOLS, conversation, Policy(turns="last_message"))
    assert [turn.trained for turn in last_message.turns] == [False, False, True]
    assert spans_text(last_message) == ["golf7<|im_end|>"]


def test_history_without_reasoning_is_rewritten_and_spans_the_rendered_turn():
    conversation = probe(
        user("alpha1"), assistant("bravo2", "think3"), user("charlie4"), assistant("delta5", "think6")
    )
    expectation = expected_turns(DROPS_REASONING, conversation)
    assert [turn.kind for turn in expectation.turns] == ["rewritten", "exact"]
    assert spans_text(expectation) == ["bravo2<|im_end|>", "<think>\nthink6\n</think>\n\ndelta5<|im_end|>"]
    assert expectation.turns[0].end_of_turn == "<|im_end|>"


def test_prompt_disagreeing_with_render_is_a_mismatch_placed_after_the_header():
    expectation = expected_turns(PROMPT_MISMATCH, TWO_TURNS)
    assert [turn.kind for turn in expectation.turns] == ["mismatch", "mismatch"]
    assert spans_text(expectation) == ["bravo2<|im_end|>", "delta4<|im_end|>"]


def test_text_after_the_whole_conversation_does_not_make_history_rewritten():
    expectation = expected_turns(EOS_AFTER_CONVERSATION, TWO_TURNS)
    assert [turn.kind for turn in expectation.turns] == ["exact", "exact"]
    # the last turn's G includes the end-of-sequence text the template appends
    assert spans_text(expectation) == ["bravo2<|end|>", "delta4<|end|>\n<|endoftext|>"]


def test_reasoning_not_trained_starts_after_the_closing_markup():
    conversation = probe(user("alpha1"), assistant("bravo2", "think3"))
    expectation = expected_turns(DROPS_REASONING, conversation, Policy(reasoning="not_trained"))
    assert spans_text(expectation) == ["\n\nbravo2<|im_end|>"]


def test_tool_calls_not_trained_cuts_the_calls_out_and_keeps_the_text():
    call = {"type": "function", "function": {"name": "look", "arguments": {"q": "echo5"}}}
    conversation = probe(
        user("alpha1"),
        {"role": "assistant", "content": "bravo2", "tool_calls": [call]},
        {"role": "tool", "content": "charlie3"},
        assistant("delta4"),
    )
    trained = expected_turns(TOOLS, conversation)
    assert spans_text(trained) == ["bravo2<tool_call>echo5</tool_call><|im_end|>", "delta4<|im_end|>"]
    untrained = expected_turns(TOOLS, conversation, Policy(tool_calls="not_trained"))
    assert [turn.trained for turn in untrained.turns] == [True, True]
    # the calls, the markup that opens them and the end-of-turn text after them are outside
    assert spans_text(untrained) == ["bravo2", "delta4<|im_end|>"]
    assert untrained.turns[0].end_of_turn_range is None
    # final_channel_only: a message with tool calls is not trained at all
    answers = expected_turns(TOOLS, conversation, Policy(reasoning="final_channel_only"))
    assert [turn.trained for turn in answers.turns] == [False, True]
    assert spans_text(answers) == ["delta4<|im_end|>"]


def test_tool_calls_not_trained_without_text_trains_nothing_of_the_message():
    call = {"type": "function", "function": {"name": "look", "arguments": {"q": "echo5"}}}
    conversation = probe(
        user("alpha1"),
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "charlie3"},
        assistant("delta4"),
    )
    untrained = expected_turns(TOOLS, conversation, Policy(tool_calls="not_trained"))
    assert untrained.turns[0].spans == [] and not untrained.turns[0].single
    assert spans_text(untrained) == ["delta4<|im_end|>"]


#: Writes an assistant's text after the tool results that answer its calls, in the same loop
#: iteration (as Gemma 4 does); tool messages write nothing in their own iteration.
TEXT_AFTER_RESULTS = (
    "{% for m in messages %}{% if m.role != 'tool' %}<|turn>{{ m.role }}\n"
    "{% for c in m.tool_calls or [] %}<call>{{ c.function.arguments.q }}<call|>{% endfor %}"
    "{% if m.tool_calls %}{% for k in range(loop.index0 + 1, messages | length) %}"
    "{% if messages[k].role == 'tool' %}<|response>{{ messages[k].content }}<response|>{% endif %}"
    "{% endfor %}{% endif %}{{ m.content }}<turn|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|turn>assistant\n{% endif %}"
)


def test_text_written_after_the_tool_results_is_a_second_piece_of_the_turn():
    call = {"type": "function", "function": {"name": "look", "arguments": {"q": "echo5"}}}
    conversation = probe(
        user("alpha1"),
        {"role": "assistant", "content": "bravo2", "tool_calls": [call]},
        {"role": "tool", "content": "charlie3"},
        user("delta4"),
        assistant("golf7"),
    )
    expectation = expected_turns(TEXT_AFTER_RESULTS, conversation)
    pieces = [expectation.text[start:end] for start, end in expectation.turns[0].spans]
    assert pieces[-1] == "bravo2<turn|>"
    assert all("charlie3" not in piece for piece in pieces)
    assert any("echo5" in piece for piece in pieces)
    untrained = expected_turns(TEXT_AFTER_RESULTS, conversation, Policy(tool_calls="not_trained"))
    assert [untrained.text[s:e] for s, e in untrained.turns[0].spans] == ["bravo2<turn|>"]


def test_renders_are_recorded_for_rule_one():
    expectation = expected_turns(CHATML, TWO_TURNS)
    assert set(expectation.renders) == {(1, True), (2, False), (3, True), (4, False), (1, False), (3, False)}
    assert expectation.renders[(4, False)] == expectation.text


def test_rejected_conversation_raises_for_the_verifier_to_skip():
    strict = "{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}" + CHATML
    with pytest.raises(TemplateRejected):
        expected_turns(strict, TWO_TURNS)


def test_locate_texts_searches_forward_per_message():
    text = "[alpha1][bravo2 alpha1]"
    assert locate_texts(text, [user("alpha1"), assistant("bravo2")]) == [[(1, 7)], [(9, 15)]]


def test_markup_boundary_never_cuts_a_token():
    assert markup_boundary("x<|end|>", 4) == 1
    assert markup_boundary("x<|end|>", 8) == 8
    assert markup_boundary("plain text", 5) == 5


def test_mismatch_header_after_indentation_the_iteration_writes_first() -> None:
    """The loop writes a newline and indentation before each turn's header; the generation prompt
    (which ends with an extra newline, so every turn is a mismatch) has no newline before its
    header. The span still starts after the header, never at the indentation."""
    template = (
        "{% for m in messages %}\n\n    {{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>' }}\n"
        "{% endfor %}{% if add_generation_prompt %}\n    {{ '<|im_start|>assistant\\n' }}\n{% endif %}"
    )
    probe = Probe("one", ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}))
    expectation = expected_turns(template, probe)
    turn = expectation.turns[0]
    assert turn.kind == "mismatch"
    assert expectation.text[turn.start : turn.end] == "yo<|im_end|>"


# Command A's layout: the chatbot header is written after the loop whatever add_generation_prompt
# says, so F ends with the next assistant turn's header.
HEADER_AFTER_EVERY_RENDER = (
    "{% for m in messages %}{% if m.role == 'user' %}<|U|>{{ m.content }}<|EOT|>"
    "{% else %}<|B|>{{ m.content }}<|EOT|>{% endif %}{% endfor %}<|B|>"
)


def test_span_stops_before_the_next_turns_header_written_after_the_turn() -> None:
    probe = Probe("one", ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}))
    expectation = expected_turns(HEADER_AFTER_EVERY_RENDER, probe)
    turn = expectation.turns[0]
    assert (turn.kind, expectation.text[turn.start : turn.end]) == ("exact", "yo<|EOT|>")


def test_patched_header_after_every_render_marks_nothing_in_a_prompt() -> None:
    from templatefix.patch.api import patch_template
    from templatefix.render import render_with_spans

    result = patch_template(HEADER_AFTER_EVERY_RENDER)
    assert result.verified, result.reasons
    assert render_with_spans(result.patched, [{"role": "user", "content": "hi"}])[1] == []


#: A preamble written only when the generation prompt is asked for: P does not continue the
#: render without it, so every turn is a mismatch.
PREAMBLE_WITH_PROMPT = (
    "{% if add_generation_prompt %}<|sys|>S<|eot|>{% endif %}{% for m in messages %}<|start|>{{ m.role }}"
    "<|message|>{{ m.content }}<|eot|>{% endfor %}{% if add_generation_prompt %}<|start|>assistant{% endif %}"
)


def test_a_preamble_only_with_the_prompt_leaves_the_generation_prompt_what_follows_the_conversation():
    """The generation prompt is what P adds after the conversation (``<|start|>assistant``), not all
    of P from where it first differs: a mismatch turn's span starts after it (SPEC §3)."""
    expectation = expected_turns(PREAMBLE_WITH_PROMPT, TWO_TURNS)
    assert [turn.kind for turn in expectation.turns] == ["mismatch", "mismatch"]
    assert spans_text(expectation) == ["<|message|>bravo2<|eot|>", "<|message|>delta4<|eot|>"]


def test_remembered_renders_render_once_per_patch_and_keep_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    import templatefix.oracle as oracle_module
    from templatefix.errors import RenderError
    from templatefix.render import render_with_spans

    calls: list[str] = []

    def counting(template: str, messages: list[dict[str, str]], **kwargs: object) -> tuple[str, list]:
        calls.append(template)
        return render_with_spans(template, messages, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(oracle_module, "render_with_spans", counting)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    marked = (
        "{% for m in messages %}{{ m.role }}:{% generation %}{{ m.content }}{% endgeneration %};{% endfor %}"
    )
    rejecting = "{{ raise_exception('no') }}"
    with oracle_module.remembering():
        text = oracle_module.remembered_render(CHATML, chat, {}, False, None)
        assert oracle_module.remembered_render(CHATML, tuple(chat), {}, False, None) == text
        assert oracle_module.remembered_render_with_spans(CHATML, chat, {}, False, None) == (text, [])
        assert oracle_module.remembered_render(CHATML, chat[:1], {}, True, None) == text[: text.index("yo")]
        marked_text, spans = oracle_module.remembered_render_with_spans(marked, chat, {}, False, None)
        spans.append((0, 0))  # a caller's copy: the remembered spans stay as rendered
        assert oracle_module.remembered_render_with_spans(marked, chat, {}, False, None) == (
            "user:hi;assistant:yo;", [(5, 7), (18, 20)]
        )
        for _ in range(2):
            with pytest.raises(RenderError, match="rejected"):
                oracle_module.remembered_render(rejecting, chat, {}, False, None)
    assert calls == [CHATML, CHATML, marked, rejecting]  # one render per distinct render
    oracle_module.remembered_render(CHATML, chat, {}, False, None)  # outside a patch: rendered again
    assert len(calls) == 5


#: A system block written only with the generation prompt, after a start every render shares.
PREAMBLE_AFTER_BOS = (
    "<s>{% if add_generation_prompt %}<sys>S</sys>{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_generation_prompt_after_a_preamble_behind_a_shared_start() -> None:
    """``P`` holds ``render(M[:i])`` only after its shared ``<s>`` (the system block comes
    between): the generation prompt is what follows the rest, so the turn's span starts after
    ``<assistant>``, not inside the system block."""
    from templatefix.analysis.shape import generation_prompt_of
    from templatefix.patch.api import patch_template
    from templatefix.render import merge_spans, render_with_spans

    prompt, before = "<s><sys>S</sys><user>hi</user><assistant>", "<s><user>hi</user>"
    assert generation_prompt_of(prompt, before) == "<assistant>"
    probe = Probe("one", ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}))
    expectation = expected_turns(PREAMBLE_AFTER_BOS, probe)
    (turn,) = expectation.turns
    assert turn.kind == "mismatch"
    assert expectation.text[turn.start:turn.end] == "yo</assistant>"
    result = patch_template(PREAMBLE_AFTER_BOS)
    assert result.verified, result.reasons
    text, spans = render_with_spans(result.patched, list(probe.messages))
    assert [text[a:b] for a, b in merge_spans(spans)] == ["yo</assistant>"]
