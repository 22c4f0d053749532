"""Instrumented rendering: which piece of the template produced which characters.

The template's AST is rewritten (never its text) so that every top-level output reports the
characters it wrote, with the loop variables in scope, each loop reports its iterations, and every
output and branch anywhere reports coverage; the instrumented template renders byte-identically
to the original. The stages:

- ``sites``: every output and branch of a template, numbered in source order (``Sites``,
  ``OutputSite``, ``BranchSite``);
- ``records``: what an instrumented render reports (``Atom``, ``Emission``, ``Trace``,
  ``CoverageTrace``…);
- ``instrument``: the AST rewrite that adds the recording hooks and its renders
  (``Instrumented.trace`` / ``.cover``);
- ``hooks``: the one table of functions those hooks call, for a full trace or coverage alone;
- ``regions``: per-message regions of a render (``message_regions``) and the instrumented
  template of a ``ChatTemplate``, built once (``instrumented_for``).

Example:
    >>> from templatefix.analysis.regions import instrumented_for
    >>> source = "{% for m in messages %}{{ m.role + ':' + m.content }}{% endfor %}"
    >>> result = instrumented_for(source).trace([{"role": "user", "content": "hi"}])
    >>> result.text, [(e.start, e.end, e.part_ranges) for e in result.emissions]
    ('user:hi', [(0, 7, [(0, 4), (4, 5), (5, 7)])])
"""
