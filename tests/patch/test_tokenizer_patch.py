"""templatefix.tokenizer_patch.patch_tokenizer on real tokenizers and processor-like objects."""

from __future__ import annotations

from typing import Any

import pytest
from support.fakes import TINY, TINY_PATCHED, UNVERIFIABLE, fake_patch_template

from templatefix.errors import NotVerifiedError, TemplatefixError
from templatefix.patch import api as patch_api
from templatefix.tokenizer_patch import patch_tokenizer

CONVERSATION = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
]


class FakeTokenizer:
    def __init__(self, chat_template: Any) -> None:
        self.chat_template = chat_template


class FakeProcessor:
    """What matters of a ``ProcessorMixin``: its own ``chat_template`` and a ``tokenizer``."""

    def __init__(self, chat_template: Any, tokenizer: FakeTokenizer) -> None:
        self.chat_template = chat_template
        self.tokenizer = tokenizer


@pytest.fixture
def fake_patcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patch_api, "patch_template", fake_patch_template)


def test_string_template(fake_patcher: None) -> None:
    tokenizer = FakeTokenizer(TINY)
    same, result = patch_tokenizer(tokenizer, turns="last")
    assert same is tokenizer and tokenizer.chat_template == TINY_PATCHED
    assert result.verified and result.original == TINY and result.policy.turns == "last"


def test_named_templates_dict_and_list(fake_patcher: None) -> None:
    tokenizer = FakeTokenizer({"default": TINY, "tool_use": TINY + "{# tools #}"})
    _, results = patch_tokenizer(tokenizer)
    assert set(results) == {"default", "tool_use"}
    assert tokenizer.chat_template == {"default": TINY_PATCHED, "tool_use": TINY_PATCHED + "{# tools #}"}
    legacy = FakeTokenizer([{"name": "default", "template": TINY}])
    patch_tokenizer(legacy)
    assert legacy.chat_template == [{"name": "default", "template": TINY_PATCHED}]


def test_not_verified_changes_nothing(fake_patcher: None) -> None:
    tokenizer = FakeTokenizer({"default": TINY, "bad": UNVERIFIABLE})
    with pytest.raises(NotVerifiedError, match="'bad' could not be verified: fake: cannot place"):
        patch_tokenizer(tokenizer)
    assert tokenizer.chat_template == {"default": TINY, "bad": UNVERIFIABLE}
    _, results = patch_tokenizer(tokenizer, force=True)
    assert not results["bad"].verified and tokenizer.chat_template["default"] == TINY_PATCHED


def test_processor(fake_patcher: None) -> None:
    processor = FakeProcessor(TINY, FakeTokenizer(TINY))
    patch_tokenizer(processor)
    assert processor.chat_template == processor.tokenizer.chat_template == TINY_PATCHED
    own = FakeProcessor(TINY, FakeTokenizer("{{ 'other' }}"))
    patch_tokenizer(own)
    assert (own.chat_template, own.tokenizer.chat_template) == (TINY_PATCHED, "{{ 'other' }}")
    via_tokenizer = FakeProcessor(None, FakeTokenizer(TINY))
    patch_tokenizer(via_tokenizer)
    assert (via_tokenizer.chat_template, via_tokenizer.tokenizer.chat_template) == (None, TINY_PATCHED)


def test_no_template_or_bad_object() -> None:
    with pytest.raises(TemplatefixError, match="has no chat_template"):
        patch_tokenizer(FakeTokenizer(None))
    with pytest.raises(TemplatefixError, match="not a tokenizer or processor"):
        patch_tokenizer(object())
    with pytest.raises(ValueError, match="unknown policy option"):
        patch_tokenizer(FakeTokenizer(TINY), colour="blue")


@pytest.mark.parametrize("name", ["qwen3", "gemma3"])
def test_real_tokenizer(load_tokenizer: Any, name: str) -> None:
    """Real patcher, real tokenizer: either verified and the mask works, or refused and untouched."""
    import copy

    tokenizer = copy.deepcopy(load_tokenizer(name))
    original = tokenizer.chat_template
    try:
        _, result = patch_tokenizer(tokenizer)
    except NotVerifiedError as error:
        assert "could not be verified" in str(error) and "\n" not in str(error)
        assert tokenizer.chat_template == original
        assert name != "gemma3", "gemma3 is verified by the patcher"
        return
    assert result.verified and tokenizer.chat_template == result.patched != original
    plain = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert plain == load_tokenizer(name).apply_chat_template(CONVERSATION, tokenize=False)
    encoded = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    trained = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    assert "2 + 2 = 4." in tokenizer.decode(trained)
    assert "What is" not in tokenizer.decode(trained)
