"""templatefix: make any chat template train-ready, and prove it.

Example:
    >>> import templatefix
    >>> result = templatefix.patch_template(open("templates/chatml.jinja").read())  # doctest: +SKIP
    >>> result.verified  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from templatefix.errors import NotVerifiedError, TemplatefixError  # noqa: E402
from templatefix.policy import Policy  # noqa: E402

__version__ = "0.1.0"

__all__ = ["NotVerifiedError", "Policy", "TemplatefixError", "__version__"]
