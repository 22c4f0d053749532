"""Patch a source and propose it to its repo: the steps ``patch`` shares between one SOURCE and many.

1. :func:`prepare` patches every template, checks the changed ones in every inference engine
   (``templatefix.engines``) and decides the layout: when an engine reads the original default
   template but fails on the patched one, a pull request adds the patched template as the named
   template ``training`` instead of replacing the default (``as_default`` overrides).
2. :func:`propose` behaves like a polite bot: nothing to do when the templates are already exact;
   nothing pushed when one is not verified (unless forced); no second PR when an earlier
   templatefix PR (open, closed or merged) names the same original template in its marker
   (unless forced); and the repo's head is checked again right before committing.

Example:
    >>> from templatefix.io.sources import load_source
    >>> repo = prepare(load_source("org/model"), Policy(), create_pr=True)  # doctest: +SKIP
    >>> propose("org/model", repo, Policy(), create_pr=True, dry_run=True).status  # doctest: +SKIP
    'would open'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import templatefix
from templatefix.errors import OutputError, PushError, SourceError, TemplatefixError
from templatefix.io.layout import TemplateEntry, named_template_files, patched_files
from templatefix.io.pr import TITLE_MARK, PrContext, TemplateOutcome, fingerprint, pull_request_text
from templatefix.io.sources import LoadedSource
from templatefix.patch.result import unified_diff
from templatefix.policy import Policy

#: The name of the template a pull request adds when it leaves the default alone.
TRAINING_NAME = "training"
#: Layouts that can hold a named template next to the default.
_NAMEABLE = ("chat_template_jinja", "tokenizer_config", "tokenizer_config_list")

Status = Literal[
    "opened", "committed", "would open", "would commit", "already proposed", "already exact",
    "not verified", "error",
]  # fmt: skip


@dataclass
class PatchedEntry:
    """A template of the source and its patch result (``templatefix.PatchResult``)."""

    entry: TemplateEntry
    result: Any
    engines: list[Any] = field(default_factory=list)  # templatefix.engines.EngineResult

    @property
    def changed(self) -> bool:
        return self.result.patched != self.entry.template

    @property
    def diff(self) -> str:
        return (
            unified_diff(self.entry.template, self.result.patched, self.entry.label) if self.changed else ""
        )

    def outcome(self) -> TemplateOutcome:
        return TemplateOutcome(
            label=self.entry.label,
            name=self.entry.name,
            verified=bool(self.result.verified),
            changed=self.changed,
            reasons=tuple(str(r) for r in self.result.reasons),
            diff=self.diff,
            patched=self.result.patched,
            history=tuple(self.result.describe()) if hasattr(self.result, "describe") else (),
        )

    def to_json(self) -> dict[str, Any]:
        data = self.result.to_json() if hasattr(self.result, "to_json") else {}
        data.update(
            {
                "label": self.entry.label,
                "name": self.entry.name,
                "path": self.entry.path,
                "kind": self.entry.kind,
                "effective": self.entry.effective,
                "verified": bool(self.result.verified),
                "changed": self.changed,
                "reasons": [str(r) for r in self.result.reasons],
                "diff": self.diff,
                "engines": [result.to_json() for result in self.engines],
            }
        )
        return data


def training_name(args: Any, source: LoadedSource | None = None) -> str | None:
    """The named template the patch goes to: ``--as-named``, or ``training`` for a keep-history
    variant (the default stays for inference) unless ``--as-default`` or SOURCE is a lone file."""
    if args.as_named or not getattr(args, "keep_history", False) or args.as_default:
        return args.as_named
    default = source.templates.default if source is not None else None
    if default is not None and default.kind == "jinja_file":
        return None  # a lone .jinja file has no place for a named template: the output is the variant
    return TRAINING_NAME


def patch_entries(
    source: LoadedSource, policy: Policy, *, only_default: bool = False, keep_history: bool = False
) -> list[PatchedEntry]:
    """Patch each template of ``source`` (identical texts are patched once); with ``keep_history``,
    its keep-history training variant (``templatefix.patch.variants``).

    Raises:
        SourceError: a template is empty.
        TemplatefixError: a template cannot be patched (the message names it).
    """
    entries = list(source.templates)
    if only_default:
        default = source.templates.default
        entries = [default] if default is not None else []
    cache: dict[str, Any] = {}
    patched = []
    for entry in entries:
        if not entry.template.strip():  # bad input, as in `check`: not a template that fails
            raise SourceError(f"{entry.label}: the template is empty")
        if entry.template not in cache:
            try:
                cache[entry.template] = templatefix.patch_template(
                    entry.template, policy=policy, keep_history=keep_history
                )
            except TemplatefixError as error:  # name the template, as `check` does
                raise type(error)(f"{entry.label}: {error}") from None
        patched.append(PatchedEntry(entry, cache[entry.template]))
    return patched


@dataclass
class RepoPatch:
    """A source, patched, with the files to write or push.

    Attributes:
        source: what was read.
        patched: every template and its patch.
        as_named: the named template the patch is added as (``None``: the default is replaced).
        named_because: the engines that fail on the patched default (why ``as_named`` was chosen).
        files: every template file after the patch (path -> bytes).
        changed: the files that differ from the source.
        force: unverified templates are written too.
    """

    source: LoadedSource
    patched: list[PatchedEntry]
    as_named: str | None
    named_because: list[str]
    files: dict[str, bytes]
    changed: dict[str, bytes]
    force: bool = False

    @property
    def verified(self) -> bool:
        return all(p.result.verified for p in self.patched)

    @property
    def refused(self) -> list[PatchedEntry]:
        """Changed templates left out because they failed verification."""
        return [p for p in self.patched if not (p.result.verified or self.force) and p.changed]

    @property
    def engine_results(self) -> list[Any]:
        """Engine results of the template the pull request is about (the default when it changed)."""
        changed = [p for p in self.patched if p.changed and p.engines]
        first = next((p for p in changed if p.entry.name == "default"), changed[0] if changed else None)
        return first.engines if first else []


def prepare(
    source: LoadedSource,
    policy: Policy,
    *,
    as_named: str | None = None,
    as_default: bool = False,
    create_pr: bool = False,
    engines: bool = True,
    force: bool = False,
    keep_history: bool = False,
) -> RepoPatch:
    """Patch ``source``, check the changed templates in every engine, and lay out the files.

    Args:
        as_named: add the patched default as this named template (the default stays).
        as_default: replace the default even when an engine fails on it.
        create_pr: a pull request: a default that breaks an engine becomes the named template
            ``training`` unless ``as_default``.
        engines: run the engine check (``templatefix.engines.check_engines``).
        force: accept templates that failed verification.
        keep_history: patch the keep-history training variant of each template (SPEC §8).

    Raises:
        TemplatefixError: bad input (empty template, a name clash for ``as_named``...).
    """
    patched = patch_entries(source, policy, only_default=bool(as_named), keep_history=keep_history)
    if not patched:
        raise TemplatefixError(f"{source.spec}: no default template to use with --as-named")
    if engines:
        from templatefix.engines import check_engines

        tokens = source.templates.special_tokens or None
        checked: dict[tuple[str, str], list[Any]] = {}  # a shadowed copy is often the same text
        for item in patched:
            if item.changed and (item.result.verified or force):
                pair = (item.entry.template, item.result.patched)
                if pair not in checked:
                    checked[pair] = check_engines(*pair, special_tokens=tokens)
                item.engines = checked[pair]
    named_because: list[str] = []
    default = next((p for p in patched if p.entry.effective and p.entry.name == "default"), None)
    if create_pr and not as_named and not as_default and default is not None and default.changed:
        named_because = [r.engine for r in default.engines if r.breaks]
        if named_because and default.entry.kind in _NAMEABLE:
            as_named = TRAINING_NAME
            patched = [default]
        else:
            named_because = []
    accepted = [p for p in patched if p.result.verified or force]
    if as_named:
        files = dict(source.templates.files)
        if patched[0] in accepted and patched[0].changed:
            files.update(
                named_template_files(source.templates, as_named, patched[0].result.patched, force=force)
            )
    else:
        files = patched_files(source.templates, {p.entry.label: p.result.patched for p in accepted})
    changed = {path: data for path, data in files.items() if source.templates.files.get(path) != data}
    return RepoPatch(source, patched, as_named, named_because, files, changed, force)


@dataclass
class Proposal:
    """What happened to one repo's pull request (or commit).

    Attributes:
        repo_id: the target repo.
        status: ``opened`` / ``committed`` (done), ``would open`` / ``would commit`` (dry run),
            ``already proposed`` (an earlier templatefix PR for the same original),
            ``already exact`` (nothing to do), ``not verified``, ``error``.
        message: one line for the reader.
        url: the new or the earlier pull request (or the commit).
        plan: what is (or would be) committed.
    """

    repo_id: str
    status: Status
    message: str
    url: str | None = None
    plan: Any = None  # templatefix.io.hub.PushPlan

    @property
    def failed(self) -> bool:
        return self.status in ("not verified", "error")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "repo_id": self.repo_id,
            "status": self.status,
            "message": self.message,
            "url": self.url,
            "pushed": self.status in ("opened", "committed"),
        }
        if self.plan is not None:
            data.update(self.plan.to_json())
        return data


def describe(repo: RepoPatch, repo_id: str, policy: Policy, committed: Sequence[str]) -> tuple[str, str, str]:
    """``(title, description, original_sha256)`` of the pull request for ``repo``."""
    originals = [p.entry.template for p in repo.patched if p.changed]
    sha = fingerprint(originals)
    context = PrContext(
        source=repo.source.describe(),
        policy=policy.to_dict(),
        version=templatefix.__version__,
        original_sha256=sha,
        repo_id=repo_id,
        commit=repo.source.commit if repo.source.repo_id == repo_id else None,
        as_named=repo.as_named,
        engines=repo.engine_results,
        named_because=repo.named_because,
        special_tokens=repo.source.templates.special_tokens,
    )
    title, description = pull_request_text([p.outcome() for p in repo.patched], committed, context)
    return title, description, sha


def propose(
    repo_id: str,
    repo: RepoPatch,
    policy: Policy,
    *,
    create_pr: bool,
    dry_run: bool = False,
    force: bool = False,
    branch: str | None = None,
    token: str | bool | None = None,
) -> Proposal:
    """Open a pull request (or commit) on ``repo_id`` with ``repo.changed``, politely.

    ``token`` is handed to every Hub call (``None``: huggingface_hub's own resolution, as the
    CLI does; ``False``: no token at all). Never raises for the repo's state: every outcome,
    errors included, is a :class:`Proposal`.
    """
    from templatefix.io import hub
    from templatefix.io.pr import earlier_pull_request

    what = "pull request" if create_pr else "commit"
    if not repo.changed:
        if repo.refused:
            return Proposal(
                repo_id, "not verified", f"{repo_id}: not verified; nothing pushed (--force overrides)"
            )
        return Proposal(
            repo_id, "already exact", f"{repo_id}: nothing to do: the templates already have exact markers"
        )
    if not repo.verified and not force:
        return Proposal(
            repo_id, "not verified", f"{repo_id}: not verified; nothing pushed (--force overrides)"
        )
    title, description, sha = describe(repo, repo_id, policy, sorted(repo.changed))
    same_repo = repo.source.repo_id == repo_id
    plan = hub.PushPlan(
        repo_id,
        dict(repo.changed),
        title,
        description,
        create_pr=create_pr,
        revision=branch,
        parent_commit=repo.source.commit if same_repo else None,
    )
    try:
        if create_pr:
            listed = hub.pull_requests(repo_id, token=token, title_contains=TITLE_MARK)
            earlier = earlier_pull_request(listed, sha)
            if earlier is not None and not force:
                return Proposal(
                    repo_id,
                    "already proposed",
                    f"{repo_id}: a templatefix pull request for this template already exists "
                    f"({earlier.status}): {earlier.url} (--force opens another)",
                    url=earlier.url,
                )
        if dry_run:
            status: Status = "would open" if create_pr else "would commit"
            action = "open a pull request" if create_pr else "commit"
            return Proposal(repo_id, status, f"{repo_id}: dry run: would {action}", plan=plan)
        if same_repo and repo.source.commit:
            head = hub.head_commit(repo_id, revision=branch, token=token)
            if head != repo.source.commit:
                raise PushError(
                    f"{repo_id}: changed since its templates were read "
                    f"({repo.source.commit[:7]} -> {head[:7]}); nothing pushed: run again"
                )
        hub.push(plan, token=token)
    except (PushError, OutputError, SourceError) as error:
        return Proposal(repo_id, "error", str(error), plan=plan)
    url = plan.result.get("pr_url") or plan.result.get("commit_url")
    status = "opened" if create_pr else "committed"
    return Proposal(repo_id, status, f"{repo_id}: {status} {what}: {url}", url=url, plan=plan)
