"""The pull request a maintainer receives: its text, and the marker that makes it idempotent.

The description says the PR is automated and that maintainers may close it; what changes and
why; the verification and inference-engine tables; the trained text of a small example; the
diff; and how to reproduce it with ``pip install templatefix``. Its last line is a
machine-readable marker (an HTML comment the Hub does not display)::

    <!-- templatefix {"original_sha256": "…", "version": "0.1.0"} -->

``original_sha256`` fingerprints the original template(s) the PR changes, so a later run finds
its earlier PRs (open, closed or merged) for the same original with :func:`earlier_pull_request`
and opens none again.

Example:
    >>> marker = PrMarker("0.1.0", fingerprint(["{{ messages }}"]))
    >>> PrMarker.find("text\\n" + marker.comment()) == marker
    True
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from templatefix.errors import RenderError, TemplatefixError

TRAINED_OPEN, TRAINED_CLOSE = "«", "»"
#: Every templatefix PR title contains this; only such PRs have their descriptions fetched.
TITLE_MARK = "{% generation %}"
_MARKER = re.compile(r"<!-- templatefix (\{[^\n]*?\}) -->")


def fingerprint(templates: Iterable[str]) -> str:
    """sha256 (hex) of the original templates a PR changes; of the text itself for one template.

    Example:
        >>> fingerprint(["abc"]) == hashlib.sha256(b"abc").hexdigest()
        True
    """
    return hashlib.sha256("\0".join(templates).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PrMarker:
    """The machine-readable line at the end of a templatefix PR description.

    Attributes:
        version: the templatefix version that opened the PR.
        original_sha256: :func:`fingerprint` of the original template(s).
    """

    version: str
    original_sha256: str

    def comment(self) -> str:
        """The marker as an HTML comment."""
        data = {"original_sha256": self.original_sha256, "version": self.version}
        return f"<!-- templatefix {json.dumps(data, sort_keys=True)} -->"

    @classmethod
    def find(cls, description: str) -> PrMarker | None:
        """The marker in a PR description, or ``None`` (also for a malformed one)."""
        match = _MARKER.search(description or "")
        if match is None:
            return None
        try:
            data = json.loads(match.group(1))
            return cls(str(data["version"]), str(data["original_sha256"]))
        except (ValueError, KeyError, TypeError):
            return None


def earlier_pull_request(pull_requests: Iterable[Any], original_sha256: str) -> Any | None:
    """The first PR (``templatefix.io.hub.PullRequest``) whose marker names the same original."""
    for pull_request in pull_requests:
        marker = PrMarker.find(pull_request.description)
        if marker is not None and marker.original_sha256 == original_sha256:
            return pull_request
    return None


#: Small conversations used to show what gets trained (first one the template accepts wins).
EXAMPLE_CONVERSATIONS: tuple[tuple[dict[str, str], ...], ...] = (
    (
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "3 + 3 = 6."},
    ),
    (
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
    ),
)


def trained_text_example(template: str, special_tokens: Mapping[str, str] | None = None) -> str | None:
    """Render a small conversation with ``template``; trained text is wrapped in ``«…»``.

    Returns ``None`` if the template accepts none of ``EXAMPLE_CONVERSATIONS``.

    Example:
        >>> trained_text_example("{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}"
        ...                      "{% generation %}{{ m.content }}{% endgeneration %}{% else %}"
        ...                      "{{ m.content }}{% endif %} | {% endfor %}")[-60:]
        '«2 + 2 = 4.» | user: And 3 + 3? | assistant: «3 + 3 = 6.» | '
    """
    from templatefix.render import merge_spans, render_with_spans

    tokens = {**_default_tokens(), **(special_tokens or {})}
    for conversation in EXAMPLE_CONVERSATIONS:
        try:
            text, spans = render_with_spans(template, list(conversation), special_tokens=tokens)
        except (RenderError, TemplatefixError):
            continue
        pieces, last = [], 0
        for start, end in merge_spans(spans):
            pieces += [text[last:start], TRAINED_OPEN, text[start:end], TRAINED_CLOSE]
            last = end
        pieces.append(text[last:])
        return "".join(pieces)
    return None


def _default_tokens() -> dict[str, str]:
    from templatefix.render import DEFAULT_SPECIAL_TOKENS

    return dict(DEFAULT_SPECIAL_TOKENS)


@dataclass(frozen=True)
class TemplateOutcome:
    """What happened to one template, as the PR text and the CLI report it.

    Attributes:
        label: where the template lives (``chat_template.jinja``...).
        name: ``default`` or the template's name.
        verified: the patch passed verification.
        changed: the patch changed the template.
        reasons: why it is not verified.
        diff: unified diff original -> patched.
        patched: the patched text.
        history: for a keep-history training variant, what it changes and its proof (else empty).
    """

    label: str
    name: str
    verified: bool
    changed: bool
    reasons: tuple[str, ...]
    diff: str
    patched: str
    history: tuple[str, ...] = ()


@dataclass(frozen=True)
class PrContext:
    """What the description says besides the templates.

    Attributes:
        source: the SOURCE as one line (``owner/name@abc1234``).
        repo_id: the repo the PR goes to (for the reproduce commands), if any.
        commit: the commit the templates were read at.
        policy: the policy used.
        version: templatefix's version.
        original_sha256: the marker's fingerprint.
        as_named: the named template added instead of changing the default, if any.
        engines: ``templatefix.engines.EngineResult`` list for the changed default template.
        named_because: the engines that read the original but fail on the patched default (the
            reason for ``as_named``, when chosen automatically).
        special_tokens: special-token values for the trained-text example.
    """

    source: str
    policy: Mapping[str, str]
    version: str
    original_sha256: str
    repo_id: str | None = None
    commit: str | None = None
    as_named: str | None = None
    engines: Sequence[Any] = ()
    named_because: Sequence[str] = ()
    special_tokens: Mapping[str, str] | None = None


def pull_request_text(
    outcomes: Sequence[TemplateOutcome], committed: Sequence[str], context: PrContext
) -> tuple[str, str]:
    """``(title, description)`` for the maintainers of the repo receiving the patch.

    Deterministic: the same inputs give the same text (``--dry-run`` shows exactly what is pushed).
    """
    as_named = context.as_named
    if as_named:
        title = (
            f"Add a '{as_named}' chat template with {{% generation %}} markers for assistant-only training"
        )
    else:
        title = "Add {% generation %} markers to the chat template for assistant-only training"
    lines = [
        "> [!NOTE]",
        f"> This pull request was opened automatically by templatefix {context.version}, a tool that makes "
        "chat templates train-ready. Maintainers: if you do not want it, just close it; templatefix will "
        "not open it again for this template.",
        "",
    ]
    if as_named:
        lines.append(
            f"This PR adds a chat template named `{as_named}`: the default template with "
            "`{% generation %}` / `{% endgeneration %}` around the text the model generates. "
            "**The default template is unchanged**, so inference is unaffected."
        )
    else:
        lines.append(
            "This PR wraps the text the model generates in `{% generation %}` / `{% endgeneration %}` "
            "in the chat template, so that assistant-only training works out of the box."
        )
    lines += [
        "",
        "**Why.** `tokenizer.apply_chat_template(..., return_dict=True, return_assistant_tokens_mask=True)` "
        "and TRL's `SFTConfig(assistant_only_loss=True)` find the assistant's tokens through these markers. "
        "Without them the mask is all zeros (TRL refuses to train); with them it is 1 exactly on what the "
        "model generates: its reply, reasoning and tool calls, and the end-of-turn token it must learn to "
        "stop on. Role headers and the generation prompt stay untrained.",
        "",
    ]
    if as_named:
        if context.named_because:
            lines += [
                "**Why a named template.** Some inference engines read a model's default chat template but "
                f"do not know the `generation` tag: {', '.join(context.named_because)} fail on a default "
                "template that has it (see the table below). A named template is only used when asked for, "
                "so deployments keep working.",
                "",
            ]
        lines += [
            "**How to train with it.**",
            "",
            "```python",
            "from transformers import AutoTokenizer",
            "from trl import SFTConfig, SFTTrainer",
            "",
            f'tokenizer = AutoTokenizer.from_pretrained("{context.repo_id or "<this repo>"}")',
            f'tokenizer.chat_template = tokenizer.chat_template["{as_named}"]  # the marked template',
            "trainer = SFTTrainer(model=..., processing_class=tokenizer, train_dataset=...,",
            "                     args=SFTConfig(assistant_only_loss=True))",
            "```",
            "",
            f'or, for one call: `tokenizer.apply_chat_template(messages, chat_template="{as_named}", '
            "return_dict=True, return_assistant_tokens_mask=True)`.",
            "",
        ]
    else:
        lines += [
            "**Nothing else changes for transformers.** The markers are invisible: for every conversation "
            "and template argument checked, the rendered text is byte-for-byte the same as before.",
            "",
        ]
    for outcome in outcomes:
        if outcome.history:
            lines += [
                f"**A training variant that keeps history** (`{outcome.label}`). The original template "
                "writes earlier assistant turns differently from what the model generated (it drops their "
                "reasoning, for example). This template writes every assistant turn as the original writes "
                "it when that turn is the last one, so every turn trains on what the model produced. It is "
                "for training only: later turns see history the original drops, and inference keeps the "
                "original.",
                "",
                "```",
                *outcome.history,
                "```",
                "",
            ]
    lines += ["### Files", *[f"- `{path}`" for path in committed], ""]
    lines += ["### Verification", "", "| Template | Where | Result |", "|---|---|---|"]
    for outcome in outcomes:
        verdict = "verified" if outcome.verified else "NOT verified"
        if not outcome.changed and outcome.verified:
            verdict = "verified (already correct, unchanged)"
        lines.append(f"| {outcome.name} | `{outcome.label}` | {verdict} |")
    lines += [
        "",
        "Verified means: the patched template renders exactly like the original on a set of probe "
        "conversations (one turn, system prompt, several turns, tool calls and results, reasoning, "
        "list-of-parts content, empty replies, and every flag the template reads), and each assistant "
        "turn's trained span starts right after the generation prompt and ends after the end-of-turn text.",
        "",
        "Policy: " + ", ".join(f"{k}={v}" for k, v in context.policy.items()) + ".",
    ]
    if not all(o.verified for o in outcomes):
        lines += [
            "",
            "> [!WARNING]",
            "> Some templates could not be verified; they were pushed on request (`--force`). Reasons:",
        ]
        for outcome in outcomes:
            for reason in outcome.reasons if not outcome.verified else ():
                lines.append(f"> - `{outcome.label}`: {reason}")
    if context.engines:
        from templatefix.engines import engines_table

        lines += [
            "",
            "### Inference engines",
            "",
            "The original and the marked template rendered on the same probe conversations by each "
            "engine (what each engine gives for the marked template compared with the original):",
            "",
            *engines_table(context.engines),
        ]
    changed = [o for o in outcomes if o.changed]
    example_source = next(
        (o for o in changed if o.name in ("default", as_named)), changed[0] if changed else None
    )
    example = trained_text_example(example_source.patched, context.special_tokens) if example_source else None
    if example is not None:
        lines += [
            "",
            "### What gets trained",
            "",
            f"A small conversation rendered with the marked template; the text between {TRAINED_OPEN} and "
            f"{TRAINED_CLOSE} is what `assistant_masks` marks as trained:",
            "",
            *_fenced(example, "text"),
        ]
    diffs = [o.diff for o in changed if o.diff]
    if diffs:
        heading = f"### Diff (the `{as_named}` template against the default)" if as_named else "### Diff"
        lines += [
            "",
            heading,
            "",
            *_fenced("".join(d if d.endswith("\n") else d + "\n" for d in diffs), "diff"),
        ]
    lines += ["", "### Reproduce", "", *_fenced(_reproduce(context), "bash")]
    lines += ["", PrMarker(context.version, context.original_sha256).comment()]
    return title, "\n".join(lines) + "\n"


def _reproduce(context: PrContext) -> str:
    target = context.repo_id or context.source
    revision = f" --revision {context.commit}" if context.commit else ""
    named = f" --as-named {context.as_named}" if context.as_named else ""
    return "\n".join(
        [
            'pip install "templatefix[engines]"',
            f"templatefix check {target}{revision} --engines   # verification and engine table",
            f"templatefix patch {target}{revision}{named} -o out/   # the files of this PR",
        ]
    )


def _fenced(text: str, language: str) -> list[str]:
    fence = "```"
    while fence in text:
        fence += "`"
    return [fence + language, text.rstrip("\n"), fence]
