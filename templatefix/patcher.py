"""The patcher's public names (the stages live in ``templatefix.patch``).

Example:
    >>> from templatefix.patcher import patch_template
    >>> result = patch_template(open("templates/chatml.jinja").read())  # doctest: +SKIP
"""

from __future__ import annotations

from templatefix.errors import PatchFailure
from templatefix.jinja.markers import has_markers
from templatefix.patch.api import (
    PatchResult,
    patch_named_templates,
    patch_template,
    place_markers,
    unified_diff,
)
from templatefix.patch.strip import strip_generation_markers

__all__ = [
    "PatchFailure",
    "PatchResult",
    "has_markers",
    "patch_named_templates",
    "patch_template",
    "place_markers",
    "strip_generation_markers",
    "unified_diff",
]
