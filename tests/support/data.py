"""Where the test data lives: the corpus and the real tokenizers, found through env vars.

``TEMPLATEFIX_CORPUS`` points at the corpus directory (holding ``templates/<family>/*.jinja``
and ``manifest.json``); ``TEMPLATEFIX_TOKENIZERS`` at the directory of real tokenizers. Relative
values are resolved against the current directory first, then against the repository root.
``tests/conftest.py`` builds its fixtures on these; tests that need the paths outside a fixture
(parametrizing at collection time) import them from here.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS_ENV = "TEMPLATEFIX_CORPUS"
TOKENIZERS_ENV = "TEMPLATEFIX_TOKENIZERS"


def data_dir(env_var: str, what: str) -> tuple[Path | None, str]:
    """The directory ``env_var`` names, or ``(None, reason to skip)``."""
    value = os.environ.get(env_var)
    hint = f"set {env_var} to the {what} directory (e.g. {env_var}=../shared/{what} from the repo)"
    if not value:
        return None, f"{env_var} is unset: {hint}"
    candidates = [Path(value)] if Path(value).is_absolute() else [Path.cwd() / value, REPO_ROOT / value]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve(), ""
    return None, f"{env_var}={value!r} is not a directory: {hint}"


def read_exact(path: Path) -> str:
    """File text with line endings untouched (``newline=""`` keeps CRLF)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


@lru_cache(maxsize=1)
def corpus_templates_in(corpus: Path) -> tuple[tuple[str, str], ...]:
    root = corpus / "templates"
    paths = sorted(root.rglob("*.jinja"))
    return tuple((path.relative_to(root).as_posix(), read_exact(path)) for path in paths)
