"""Shared fixtures: the template corpus and the real tokenizers, found through env vars.

``TEMPLATEFIX_CORPUS`` points at the corpus directory (holding ``templates/<family>/*.jinja``
and ``manifest.json``); ``TEMPLATEFIX_TOKENIZERS`` at the directory of real tokenizers
(``qwen3/``, ``gpt-oss/``, ...). Relative values are resolved against the current directory
first, then against the repository root (CI sets ``../shared/corpus`` from the repo).
When a variable is unset or does not name a directory, tests needing it skip and say how to
point at the data.

Fixtures:
    corpus_dir        Path of the corpus directory.
    corpus_templates  list of (name, text), name relative to ``<corpus>/templates`` such as
                      ``"qwen/Qwen3-8B.jinja"``, text read byte-exact (CRLF kept), sorted by name.
    tokenizers_dir    Path of the tokenizers directory.
    load_tokenizer    function ``name -> tokenizer`` (``AutoTokenizer``), cached per session.

A test taking an argument named ``corpus_template`` is parametrized over every corpus
template as a ``(name, text)`` pair, with the name as the test id.

Example:
    def test_compiles(corpus_template):
        name, text = corpus_template
        compile_template(text)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from support.data import CORPUS_ENV, TOKENIZERS_ENV, corpus_templates_in, data_dir


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    path, reason = data_dir(CORPUS_ENV, "corpus")
    if path is None:
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def corpus_templates(corpus_dir: Path) -> list[tuple[str, str]]:
    templates = list(corpus_templates_in(corpus_dir))
    if not templates:
        pytest.skip(f"no templates/**/*.jinja under {corpus_dir}")
    return templates


@pytest.fixture(scope="session")
def tokenizers_dir() -> Path:
    path, reason = data_dir(TOKENIZERS_ENV, "tokenizers")
    if path is None:
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def load_tokenizer(tokenizers_dir: Path) -> Callable[[str], Any]:
    """``load_tokenizer("qwen3")`` -> the real tokenizer; skips if that one is missing."""

    @cache
    def load(name: str) -> Any:
        from transformers import AutoTokenizer

        path = tokenizers_dir / name
        if not path.is_dir():
            pytest.skip(f"tokenizer {name!r} not found under {tokenizers_dir}")
        return AutoTokenizer.from_pretrained(str(path))

    return load


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``corpus_template`` over every corpus file (one skipped case if unset)."""
    if "corpus_template" not in metafunc.fixturenames:
        return
    corpus, reason = data_dir(CORPUS_ENV, "corpus")
    templates = corpus_templates_in(corpus) if corpus is not None else ()
    if not templates:
        skip = pytest.mark.skip(reason=reason or f"no templates/**/*.jinja under {corpus}")
        metafunc.parametrize("corpus_template", [pytest.param(None, marks=skip)], ids=["no-corpus"])
        return
    metafunc.parametrize("corpus_template", list(templates), ids=[name for name, _ in templates])
