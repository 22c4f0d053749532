"""templatefix: make any chat template train-ready, and prove it.

The main entry points:

- ``patch_template(template, **policy) -> PatchResult``: insert exact ``{% generation %}``
  markers and verify them against SPEC.md;
- ``patch_tokenizer(tokenizer_or_processor, **policy)``: the same, on a loaded tokenizer, right
  before ``SFTTrainer(assistant_only_loss=True)``;
- ``verify(template, original=None, ...) -> Report``: judge a marked template;
- ``check_token_masks(template, tokenizer, messages)``: compare transformers' ``assistant_masks``
  with the spans, token by token.

Example:
    >>> import templatefix
    >>> result = templatefix.patch_template(open("templates/chatml.jinja").read())  # doctest: +SKIP
    >>> result.verified, result.status  # doctest: +SKIP
    (True, 'flagged')
"""

from __future__ import annotations

from templatefix.analysis.expectations import ProbeExpectation, TurnExpectation
from templatefix.conversation import Probe
from templatefix.errors import (
    InternalDisagreement,
    NotVerifiedError,
    OutputError,
    PatchFailure,
    PushError,
    RenderError,
    RenderLimitExceeded,
    SourceError,
    TemplatefixError,
    TemplateRejected,
    TemplateSyntaxError,
    UnsupportedTransformersError,
)
from templatefix.flags import find_flags
from templatefix.io.sources import load_source
from templatefix.masks.issues import TokenIssue
from templatefix.oracle import expected_turns
from templatefix.patch.api import patch_named_templates, patch_template
from templatefix.patch.result import PatchResult
from templatefix.policy import Policy
from templatefix.probes import probe_battery
from templatefix.report import Report, print_report
from templatefix.tokenizer_patch import patch_tokenizer
from templatefix.tokens import check_token_masks
from templatefix.verify import verify

__version__ = "0.1.0"

__all__ = [
    "InternalDisagreement",
    "NotVerifiedError",
    "OutputError",
    "PatchFailure",
    "PushError",
    "RenderError",
    "RenderLimitExceeded",
    "SourceError",
    "TemplateRejected",
    "TemplateSyntaxError",
    "UnsupportedTransformersError",
    "PatchResult",
    "Policy",
    "Probe",
    "ProbeExpectation",
    "Report",
    "TemplatefixError",
    "TokenIssue",
    "TurnExpectation",
    "__version__",
    "check_token_masks",
    "expected_turns",
    "find_flags",
    "load_source",
    "patch_named_templates",
    "patch_template",
    "patch_tokenizer",
    "print_report",
    "probe_battery",
    "verify",
]
