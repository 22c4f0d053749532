"""The patcher, as stages: observe → label (with conditions) → write; ``api`` ties them together.

- ``templatefix.patch.api``: ``patch_template``, ``PatchResult``, ``patch_named_templates``;
- ``templatefix.patch.observe``: probes through the instrumented trace, labelled by the oracle;
- ``templatefix.patch.label``: inside / outside / conditional per output piece;
- ``templatefix.patch.conditions``: the role-branch condition search;
- ``templatefix.patch.writer``: the edits (markers, splits, branches);
- ``templatefix.patch.strip``: existing markers, found and removed.
"""

from __future__ import annotations

from templatefix.jinja.markers import has_markers
from templatefix.patch.api import patch_named_templates, patch_template, place_markers
from templatefix.patch.result import PatchResult, unified_diff
from templatefix.patch.strip import strip_generation_markers

__all__ = [
    "PatchResult",
    "has_markers",
    "patch_named_templates",
    "patch_template",
    "place_markers",
    "strip_generation_markers",
    "unified_diff",
]
