"""Instrumented rendering: which piece of the template produced which characters.

The template's AST is rewritten (never its text) so that every top-level output reports the
characters it wrote, with the loop variables in scope, each loop reports its iterations, and every
output and branch anywhere reports coverage; the instrumented template renders byte-identically
to the original. The stages live in ``templatefix.analysis``:

- ``sites``: every output and branch of a template, numbered (``Sites``, ``OutputSite``,
  ``BranchSite``);
- ``records``: what a render reports (``Atom``, ``Emission``, ``Trace``, ``CoverageTrace``…);
- ``instrument``: the AST rewrite and its renders (``Instrumented.trace`` / ``.cover``);
- ``hooks``: the one table of functions the instrumented template calls;
- ``regions``: per-message regions of a render (``message_regions``) and ``instrumented_for``.

This module keeps the public names importable from ``templatefix.trace``.

Example:
    >>> source = "{% for m in messages %}{{ m.role + ':' + m.content }}{% endfor %}"
    >>> result = instrumented_for(source).trace([{"role": "user", "content": "hi"}])
    >>> result.text, [(e.start, e.end, e.part_ranges) for e in result.emissions]
    ('user:hi', [(0, 7, [(0, 4), (4, 5), (5, 7)])])
"""

from __future__ import annotations

from templatefix.analysis.instrument import Instrumented, copy_tree, flatten_chain
from templatefix.analysis.records import Atom, CoverageTrace, Emission, IfChain, Iteration, LoopState, Trace
from templatefix.analysis.regions import instrumented_for, iteration_bounds, message_regions
from templatefix.analysis.sites import BranchSite, OutputSite, Sites

__all__ = [
    "Atom",
    "BranchSite",
    "CoverageTrace",
    "Emission",
    "IfChain",
    "Instrumented",
    "Iteration",
    "LoopState",
    "OutputSite",
    "Sites",
    "Trace",
    "copy_tree",
    "flatten_chain",
    "instrumented_for",
    "iteration_bounds",
    "message_regions",
]
