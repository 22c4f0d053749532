"""What a template does with a conversation, observed through instrumented renders.

- ``sites``: every output and branch of a template, numbered in source order;
- ``records``: what an instrumented render reports (atoms, emissions, iterations, coverage);
- ``instrument``: the AST rewrite that adds the recording hooks (``Instrumented``);
- ``hooks``: the one table of functions those hooks call, for a full trace or coverage alone;
- ``regions``: per-message regions of a render and the cache of instrumented templates.

``templatefix.trace`` re-exports the public names.
"""
