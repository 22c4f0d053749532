"""Hypothesis strategies for random probe conversations (a test dependency, not the package's).

:func:`conversations` draws valid conversations ending with an assistant message,
:func:`tools_for` gives tool schemas for the functions they call, and :func:`random_probes`
wraps both into :class:`templatefix.conversation.Probe` objects. Every text is a distinct word from
:class:`templatefix.conversation.WordSource`, so the verifier can find each message in a render.

Tests import this as ``from support.strategies import ...`` (pytest puts ``tests/`` on ``sys.path``, as
for ``tests/independent``); scripts under ``benchmarks/`` add ``tests/`` to ``sys.path`` first.

Example:
    >>> from hypothesis import given
    >>> @given(random_probes(tools=False))
    ... def test_probe_ends_with_assistant(probe):
    ...     assert probe.messages[-1]["role"] == "assistant"
    >>> test_probe_ends_with_assistant()
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from templatefix.conversation import Message, Probe, WordSource, tool_call, tool_result, tool_schema


def conversations(
    *,
    system: bool = True,
    tools: bool = True,
    reasoning: bool = True,
    parts: bool = True,
    max_turns: int = 4,
) -> SearchStrategy[list[Message]]:
    """Hypothesis strategy for valid conversations that end with an assistant message.

    Optional system message; then 1..``max_turns`` user turns, each answered by the assistant,
    optionally through tool calls (one or two) whose results come back before the final
    answer. Assistant messages may carry ``reasoning_content``; contents may be strings, empty,
    or lists of text parts. All texts are distinct words (see :class:`WordSource`).

    Example:
        >>> from hypothesis import given
        >>> @given(conversations(tools=False))
        ... def test_ends_with_assistant(messages):
        ...     assert messages[-1]["role"] == "assistant"
    """

    @st.composite
    def build(draw: Any) -> list[Message]:
        words = WordSource(draw(st.integers(min_value=0, max_value=800)))

        def content() -> Any:
            kind = draw(st.sampled_from(["text", "parts"] if parts else ["text"]))
            if kind == "parts":
                return [{"type": "text", "text": words()} for _ in range(draw(st.integers(1, 2)))]
            return words()

        def assistant(allow_empty: bool) -> Message:
            empty = allow_empty and draw(st.booleans())
            message: Message = {"role": "assistant", "content": "" if empty else content()}
            if reasoning and draw(st.booleans()):
                message["reasoning_content"] = words()
            return message

        messages: list[Message] = []
        if system and draw(st.booleans()):
            messages.append({"role": "system", "content": content()})
        for _ in range(draw(st.integers(min_value=1, max_value=max_turns))):
            messages.append({"role": "user", "content": content()})
            if tools and draw(st.booleans()):
                names = ["lookup_" + words() for _ in range(draw(st.integers(1, 2)))]
                calls = [tool_call(name, words) for name in names]
                caller = assistant(allow_empty=True)
                caller["tool_calls"] = calls
                messages.append(caller)
                messages.extend(tool_result(call, words) for call in calls)
            messages.append(assistant(allow_empty=True))
        return messages

    return build()


def tools_for(messages: list[Message]) -> list[dict[str, Any]] | None:
    """Tool schemas for every function the conversation calls (``None`` if it calls none).

    Example:
        >>> tools_for([{"role": "user", "content": "alpha101"}]) is None
        True
    """
    names = [call["function"]["name"] for message in messages for call in message.get("tool_calls") or ()]
    if not names:
        return None
    words = WordSource(20000)  # far from conversation words
    return [tool_schema(name, words) for name in dict.fromkeys(names)]


def random_probes(**conversation_options: Any) -> SearchStrategy[Probe]:
    """Hypothesis strategy for probes over :func:`conversations`, with ``tools`` passed when called."""
    return conversations(**conversation_options).map(
        lambda messages: Probe(
            "random", tuple(messages), {} if tools_for(messages) is None else {"tools": tools_for(messages)}
        )
    )
