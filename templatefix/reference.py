"""The reference templates (``templates/*.jinja``): small chat templates written for this project,
one per family format. A wheel installs them under ``<prefix>/share/templatefix/templates``; a
source checkout has them in its ``templates/`` folder.

Example:
    >>> sorted(reference_templates())  # doctest: +SKIP
    ['chatml', 'gemma', 'harmony', 'llama3', 'mistral']
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path


def _folders() -> list[Path]:
    checkout = Path(__file__).resolve().parent.parent / "templates"
    prefixes = dict.fromkeys([sysconfig.get_path("data"), sys.prefix])
    return [checkout, *(Path(prefix) / "share" / "templatefix" / "templates" for prefix in prefixes)]


def reference_templates() -> dict[str, Path]:
    """Name (file stem) -> path of every reference template found (empty when none is)."""
    for folder in _folders():
        found = {path.stem: path for path in sorted(folder.glob("*.jinja"))}
        if found:
            return found
    return {}
