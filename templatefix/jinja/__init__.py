"""Rendering untrusted templates safely: the bounds on every render.

- ``bounds``: the limits in force (``Limits``, ``current``, ``configured``);
- ``guard``: one bounded render (``guard``, ``render_template``) and the checks its hooks call;
- ``watchdog``: the thread that stops loops that reach no hook;
- ``sandbox``: the hooks installed on the sandbox environment (``install``).

``templatefix.limits`` re-exports the public names.
"""
