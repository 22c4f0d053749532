"""Token masks from character spans (SPEC §5).

- ``ranges``: offset arithmetic: the mask transformers computes from the spans and the mask the
  spans mean;
- ``issues``: ``TokenIssue`` and the diagnosis that names every disagreement.

``templatefix.tokens`` re-exports the public names and holds the check against a tokenizer.
"""
