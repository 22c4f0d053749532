"""An internal disagreement (the instrumented trace against the plain render) raises; nothing falls back."""

from __future__ import annotations

import dataclasses

import pytest

from templatefix import InternalDisagreement, patch_template
from templatefix.analysis.instrument import Instrumented
from templatefix.conversation import Probe
from templatefix.errors import RenderError
from templatefix.oracle import expected_turns

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROBE = Probe("one", ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}))


def _altered_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trace renders one character more than the template does."""
    real = Instrumented.trace

    def trace(self: Instrumented, *args: object, **kwargs: object) -> object:
        result = real(self, *args, **kwargs)
        return dataclasses.replace(result, text=result.text + "!")

    monkeypatch.setattr(Instrumented, "trace", trace)


def _failing_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    def trace(self: Instrumented, *args: object, **kwargs: object) -> object:
        raise RenderError("template error: instrumentation broke")

    monkeypatch.setattr(Instrumented, "trace", trace)


@pytest.mark.parametrize("breaks", [_altered_trace, _failing_trace])
def test_oracle_raises_when_the_trace_disagrees(monkeypatch: pytest.MonkeyPatch, breaks: object) -> None:
    breaks(monkeypatch)  # type: ignore[operator]
    with pytest.raises(InternalDisagreement, match="instrumented trace"):
        expected_turns(CHATML, PROBE)


@pytest.mark.parametrize("breaks", [_altered_trace, _failing_trace])
def test_patcher_raises_when_the_trace_disagrees(monkeypatch: pytest.MonkeyPatch, breaks: object) -> None:
    breaks(monkeypatch)  # type: ignore[operator]
    with pytest.raises(InternalDisagreement):
        patch_template(CHATML, probes=[PROBE])


def test_patcher_raises_when_its_trace_of_a_sample_disagrees(monkeypatch: pytest.MonkeyPatch) -> None:
    """The patcher checks the trace of each sample against the plain render itself (the trace it
    uses may come from the oracle's memo): a difference is a bug, not a skip."""
    from templatefix.analysis.regions import instrumented_for
    from templatefix.patch.observe import Sample, trace_agreeing
    from templatefix.render import render

    sample = Sample("one", PROBE.messages, {})
    instrumented = instrumented_for(CHATML)
    text = render(CHATML, list(PROBE.messages))
    assert trace_agreeing(instrumented, sample, text, None).text == text
    with pytest.raises(InternalDisagreement, match="differently"):
        trace_agreeing(instrumented, sample, text + "!", None)
    _altered_trace(monkeypatch)
    with pytest.raises(InternalDisagreement, match="differently"):
        trace_agreeing(instrumented, sample, text, None)


def test_a_rejected_conversation_is_still_skipped_not_a_disagreement() -> None:
    refuses_tools = (
        "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
        "<{{ m.role }}>{{ m.content }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    tool_probe = Probe(
        "tool",
        (
            {"role": "user", "content": "a"},
            {"role": "tool", "content": "b"},
            {"role": "assistant", "content": "c"},
        ),
    )
    result = patch_template(refuses_tools, probes=[tool_probe, PROBE])
    assert result.verified, result.reasons
