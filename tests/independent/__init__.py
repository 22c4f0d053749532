"""An independent checker of patched chat templates (SPEC rules 1-3), for tests and benchmarks.

It shares no code with the ``templatefix`` package: it renders through transformers' public
``render_jinja_template`` (``independent.render``), draws its own conversations
(``independent.conversations``, with a hypothesis strategy and a plain ``random.Random`` path)
and judges spans from the original template's prefix renders alone (``independent.judge``) and
by the words each message field carries, under every policy (``independent.words``).
``templatefix`` is only the thing under test (``tests/corpus/test_independent_check.py``,
``benchmarks/crosscheck.py``).
"""
