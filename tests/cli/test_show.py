"""`templatefix show`: the HTML view agrees with transformers' assistant_masks token by token."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from templatefix.cli import main
from templatefix.errors import TemplatefixError
from templatefix.show import EXAMPLE_MESSAGES, EXAMPLE_TOOLS, build_view, load_conversation, render_html
from templatefix.tokens import require_fast

WS = {"·": " ", "↵": "", "→": "", "␍": "\r"}


class TokenSpans(HTMLParser):
    """Collect ``(index, classes, text)`` for every ``span[data-index]``; undo whitespace markers."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tokens: list[tuple[int, set[str], str]] = []
        self.text = ""  # everything inside token and "dropped" spans: the rendered text
        self.stack: list[str] = []  # "token" | "dropped" | "ws" | "other"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "pre":
            self.in_pre = True
        if tag != "span":
            return
        attributes = dict(attrs)
        classes = set((attributes.get("class") or "").split())
        if "data-index" in attributes:
            self.tokens.append((int(attributes["data-index"] or -1), classes, ""))
            self.stack.append("token")
        elif "dropped" in classes and "token" not in self.stack and self.in_pre:
            self.stack.append("dropped")
        else:
            self.stack.append("ws" if "ws" in classes else "other")

    in_pre = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self.in_pre = False
        if tag == "span" and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if "token" not in self.stack and "dropped" not in self.stack:
            return
        if self.stack[-1] == "ws":
            data = "".join(WS.get(char, char) for char in data)
        self.text += data
        if "token" not in self.stack:
            return
        index, classes, text = self.tokens[-1]
        self.tokens[-1] = (index, classes, text + data)


def parse_tokens(page: str) -> list[tuple[int, set[str], str]]:
    parser = TokenSpans()
    parser.feed(page)
    return parser.tokens


def parse_text(page: str) -> str:
    parser = TokenSpans()
    parser.feed(page)
    return parser.text


def _corpus_template(corpus_dir: Path, name: str) -> str:
    return (corpus_dir / "templates" / name).read_text(encoding="utf-8")


CASES = {
    "qwen3": ("qwen/trl-qwen3_instruct_2507_training.jinja", EXAMPLE_MESSAGES, {"tools": EXAMPLE_TOOLS}),
    "gpt-oss": ("gpt-oss/trl-gptoss_training.jinja", EXAMPLE_MESSAGES, {"tools": EXAMPLE_TOOLS}),
    "llama3": ("llama/trl-llama3_training.jinja", EXAMPLE_MESSAGES[:2] + EXAMPLE_MESSAGES[4:], {}),
    "gemma3": ("gemma/trl-gemma3_training.jinja", [EXAMPLE_MESSAGES[0], EXAMPLE_MESSAGES[1],
                                                   *EXAMPLE_MESSAGES[4:]], {}),
}


@pytest.mark.corpus
@pytest.mark.tokenizers
@pytest.mark.parametrize("name", sorted(CASES))
def test_html_classes_match_assistant_masks(corpus_dir: Path, load_tokenizer: Any, name: str) -> None:
    template_name, messages, kwargs = CASES[name]
    template = _corpus_template(corpus_dir, template_name)
    tokenizer = load_tokenizer(name)
    view = build_view(template, tokenizer, messages, **kwargs)
    page = render_html(view)
    tokens = parse_tokens(page)
    out = tokenizer.apply_chat_template(
        messages, chat_template=template, return_dict=True, return_assistant_tokens_mask=True, **kwargs
    )
    assert [index for index, _, _ in tokens] == list(range(len(out["input_ids"])))
    classes = ["trained" if "trained" in c else "untrained" if "untrained" in c else "?"
               for _, c, _ in tokens]
    assert classes == ["trained" if m else "untrained" for m in out["assistant_masks"]]
    assert sum(out["assistant_masks"]) == view.trained > 0
    rendered = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)
    assert "".join(text for _, _, text in tokens) == rendered  # every character, whitespace included
    assert '<pre class="tokens">' in page and "legend" in page and page.startswith("<!DOCTYPE html>")
    if name == "qwen3":
        special = [text for _, c, text in tokens if "special" in c]
        assert "<|im_start|>" in special and "<|im_end|>" in special
        assert sum(turn.trained for turn in view.turns) == view.trained
        assert {turn.role for turn in view.turns if turn.trained} == {"assistant"}


def test_html_escapes_markup(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "<b>&amp;": 1, "x": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    template = "x {% generation %}{{ messages[0].content }}{% endgeneration %}\n x"
    view = build_view(template, tokenizer, [{"role": "user", "content": "<b>&amp;"}])
    page = render_html(view)
    assert "<b>&amp;" not in page.split('<pre class="tokens">')[1]
    tokens = parse_tokens(page)
    assert [(text, "trained" in classes) for _, classes, text in tokens] == [
        ("x", False), ("<b>&amp;", True), ("x", False)]
    assert parse_text(page) == "x <b>&amp; x" == view.text  # the dropped space is shown too
    assert '<span class="dropped" title="no token"><span class="ws">·</span></span>' in page


def test_require_fast_rejects_slow_tokenizers() -> None:
    class Slow:
        is_fast = False

    with pytest.raises(TemplatefixError, match="not a fast tokenizer"):
        require_fast(Slow())


def test_load_conversation_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(TemplatefixError, match="invalid JSON at line 1"):
        load_conversation(bad)
    bad.write_text('[{"content": "no role"}]')
    with pytest.raises(TemplatefixError, match="'role'"):
        load_conversation(bad)


# ----------------------------------------------------------------------------- CLI


@pytest.mark.corpus
@pytest.mark.tokenizers
def test_cli_show_writes_html(corpus_dir: Path, tokenizers_dir: Path, tmp_path: Path, capsys: Any) -> None:
    source = corpus_dir / "templates" / "qwen/trl-qwen3_instruct_2507_training.jinja"
    conversation = tmp_path / "c.json"
    conversation.write_text(json.dumps({"messages": EXAMPLE_MESSAGES[1:2] + EXAMPLE_MESSAGES[4:5]}))
    out = tmp_path / "view.html"
    args = ["show", str(source), "--tokenizer", str(tokenizers_dir / "qwen3"), "--html", str(out)]
    assert main([*args, "--conversation", str(conversation)]) == 0
    captured = capsys.readouterr()
    assert "trained tokens: 13 / 28" in captured.out  # "It is sunny …<|im_end|>" = 13 tokens
    assert sum("trained" in c for _, c, _ in parse_tokens(out.read_text())) == 13
    assert main(args) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert "built-in example: system, tool call + result, reasoning" in capsys.readouterr().out


@pytest.mark.corpus
@pytest.mark.tokenizers
def test_cli_show_patches_unmarked_template(corpus_dir: Path, tokenizers_dir: Path, capsys: Any) -> None:
    source = corpus_dir / "templates" / "qwen/Qwen3-Instruct-2507.jinja"
    code = main(["show", str(source), "--tokenizer", str(tokenizers_dir / "qwen3")])
    output = capsys.readouterr().out
    if code == 0:
        assert "patched and verified" in output
    else:
        assert code == 1 and "WARNING" in output
        assert "NOT verified" in output or "no {% generation %}" in output


@pytest.mark.tokenizers
def test_cli_show_one_line_errors(tokenizers_dir: Path, tmp_path: Path, capsys: Any) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert main(["show", str(template), "--tokenizer", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokenizer directory not found" in err
    assert main(["show", str(tmp_path / "nope.jinja"), "--tokenizer", str(tokenizers_dir / "qwen3")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.jinja" in err
