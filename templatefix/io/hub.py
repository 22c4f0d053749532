"""The Hugging Face Hub, through huggingface_hub's own APIs only.

- Downloads: ``snapshot_download(allow_patterns=TEMPLATE_PATTERNS)`` fetches the files that can
  hold a chat template and nothing else (never weights), into huggingface_hub's cache, and keeps
  its refs, so ``HF_HUB_OFFLINE=1`` runs read the same snapshot.
- Commits and pull requests: ``HfApi.create_commit`` with ``parent_commit``.
- Pull requests already there: ``HfApi.get_repo_discussions`` and ``get_discussion_details``.

templatefix reads no ``HF_*`` variable itself: huggingface_hub resolves the endpoint, token,
offline mode and cache. Every failure becomes one line (``SourceError`` reading, ``PushError``
writing) that never shows the token.

Example:
    >>> from templatefix.io.hub import download_templates
    >>> snapshot = download_templates("openai/gpt-oss-20b")  # doctest: +SKIP
    >>> snapshot.files, snapshot.commit[:7]  # doctest: +SKIP
    (['chat_template.jinja', 'tokenizer_config.json'], 'd666cf3')
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from templatefix.errors import PushError, SourceError
from templatefix.io.layout import TEMPLATE_PATTERNS

#: A token for huggingface_hub: a string; ``None`` lets huggingface_hub find one (``HF_TOKEN``,
#: the cached login); ``False`` sends none at all (a web app must never use its own).
Token = str | bool | None

#: The files a fast tokenizer loads from (weights are never downloaded).
TOKENIZER_PATTERNS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass(frozen=True)
class Snapshot:
    """Template files of a repo at one commit, in huggingface_hub's cache.

    Attributes:
        repo_id: the repo.
        commit: the commit the revision resolved to.
        root: the snapshot folder (read-only: it belongs to the cache).
        files: repo-relative paths of the files downloaded (posix).
    """

    repo_id: str
    commit: str
    root: Path
    files: list[str]


@dataclass(frozen=True)
class PullRequest:
    """A pull request on a repo, with its description (its first comment).

    Attributes:
        num: its number.
        title: its title.
        status: ``open``, ``closed``, ``merged`` or ``draft``.
        url: its page.
        description: the text of its first comment (``""`` when not fetched).
    """

    num: int
    title: str
    status: str
    url: str
    description: str = ""


@dataclass
class PushPlan:
    """Exactly what a push commits: files, message (= PR title) and description.

    Attributes:
        repo_id: the target repo.
        files: ``path in repo -> bytes``.
        title: the commit message, which the Hub also uses as the PR title.
        description: the commit description, which is the PR description.
        create_pr: open a pull request instead of committing to the branch.
        revision: the branch committed to (or the PR's base); ``None`` is ``main``.
        parent_commit: the commit the change was computed from: a commit refuses to land on a
            branch that moved since, and a pull request is opened from exactly that commit.
        result: after :func:`push`, ``commit_url``, ``commit_oid`` and ``pr_url``.
    """

    repo_id: str
    files: dict[str, bytes]
    title: str
    description: str
    create_pr: bool = False
    revision: str | None = None
    parent_commit: str | None = None
    result: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "files": sorted(self.files),
            "title": self.title,
            "description": self.description,
            "create_pr": self.create_pr,
            "revision": self.revision,
            "parent_commit": self.parent_commit,
            **self.result,
        }


def _api(token: Token) -> Any:
    from huggingface_hub import HfApi

    return HfApi(token=token)


def quiet_hub() -> None:
    """No progress bars or retry chatter from huggingface_hub: errors are reported in one line."""
    try:
        from huggingface_hub.utils import disable_progress_bars, logging

        disable_progress_bars()
        logging.set_verbosity_error()
    except Exception:  # pragma: no cover - cosmetic only
        pass


def offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE``, read by huggingface_hub)."""
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check() if callable(check) else constants.HF_HUB_OFFLINE)


def download_templates(repo_id: str, *, revision: str | None = None, token: Token = None) -> Snapshot:
    """Download the template-bearing files of ``repo_id`` at ``revision`` (``snapshot_download``).

    Online, the revision is resolved to one commit and only files matching
    :data:`~templatefix.io.layout.TEMPLATE_PATTERNS` are fetched at it; offline, the cached
    snapshot is used.

    Raises:
        SourceError: repo or revision not found, no access, gated, network failure, or offline
            and not cached.
    """
    from huggingface_hub import snapshot_download

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        root = Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=list(TEMPLATE_PATTERNS), token=token)
        )
    except Exception as error:  # noqa: BLE001 - every Hub/network failure is one line
        raise SourceError(describe_hub_error(error, where, token)) from None
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    # snapshot_download returns huggingface_hub's snapshot folder, named by the commit it resolved.
    return Snapshot(repo_id, root.name, root, files)


def download_tokenizer(repo_id: str, *, revision: str | None = None, token: Token = None) -> Path | None:
    """Download the fast-tokenizer files of ``repo_id`` (``snapshot_download``, no weights).

    Returns:
        The snapshot folder, or ``None`` when the repo has no ``tokenizer.json``.

    Raises:
        SourceError: repo or revision not found, no access, gated, network failure (one line).
    """
    from huggingface_hub import snapshot_download

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        patterns = list(TOKENIZER_PATTERNS)
        root = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, token=token))
    except Exception as error:  # noqa: BLE001 - every Hub/network failure is one line
        raise SourceError(describe_hub_error(error, where, token)) from None
    return root if (root / "tokenizer.json").is_file() else None


def head_commit(repo_id: str, *, revision: str | None = None, token: Token = None) -> str:
    """The commit ``revision`` (default: main) points to now.

    Raises:
        PushError: the repo cannot be read (one line).
    """
    try:
        return str(_api(token).model_info(repo_id, revision=revision).sha)
    except Exception as error:  # noqa: BLE001
        raise PushError(describe_hub_error(error, repo_id, token)) from None


def pull_requests(
    repo_id: str, *, token: Token = None, title_contains: str = ""
) -> Iterator[PullRequest]:
    """Every pull request on ``repo_id`` (open, closed, merged), newest first, with descriptions
    for those whose title contains ``title_contains``.

    Raises:
        PushError: discussions are disabled, the repo is gated or missing, no access (one line).
    """
    api = _api(token)
    try:
        for discussion in api.get_repo_discussions(repo_id, discussion_type="pull_request"):
            description = ""
            if title_contains in discussion.title:
                details = api.get_discussion_details(repo_id, discussion.num)
                description = details.events[0].content if details.events else ""
            yield PullRequest(
                discussion.num, discussion.title, discussion.status, discussion.url, description
            )
    except Exception as error:  # noqa: BLE001
        raise PushError(describe_hub_error(error, repo_id, token)) from None


def push(plan: PushPlan, *, token: Token = None) -> PushPlan:
    """Commit ``plan.files`` to ``plan.repo_id`` (or open a PR). Fills ``plan.result`` with URLs.

    Raises:
        PushError: one line (offline, auth failure, repo missing, branch moved, network error...).
            Nothing is committed.
    """
    from huggingface_hub import CommitOperationAdd

    if offline():
        raise PushError(f"cannot push to {plan.repo_id}: HF_HUB_OFFLINE is set")
    operations = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=data)
        for path, data in sorted(plan.files.items())
    ]
    try:
        info = _api(token).create_commit(
            plan.repo_id,
            operations,
            commit_message=plan.title,
            commit_description=plan.description,
            revision=plan.revision,
            create_pr=plan.create_pr,
            parent_commit=plan.parent_commit,
        )
    except Exception as error:  # noqa: BLE001
        raise PushError("push failed: " + describe_hub_error(error, plan.repo_id, token)) from None
    plan.result = {"commit_url": str(info.commit_url), "commit_oid": info.oid, "pr_url": info.pr_url}
    return plan


def describe_hub_error(error: BaseException, where: str, token: Token = None) -> str:
    """One line for a ``huggingface_hub``/network error. Never includes the token.

    Example:
        >>> describe_hub_error(TimeoutError("read timed out"), "org/model")
        'org/model: network error (TimeoutError: read timed out)'
    """
    from huggingface_hub import constants
    from huggingface_hub import errors as hf_errors

    endpoint = constants.ENDPOINT
    status = getattr(getattr(error, "response", None), "status_code", None)
    text = _first_line(error)
    has_token = _token(token) is not None
    if isinstance(error, hf_errors.GatedRepoError):
        message = f"{where}: gated repo: accept its conditions on the Hub and set HF_TOKEN"
    elif status == 403 and "discussion" in text.lower() and "disabled" in text.lower():
        message = f"{where}: discussions are disabled on this repo, so no pull request can be opened"
    elif isinstance(error, hf_errors.OfflineModeIsEnabled | hf_errors.LocalEntryNotFoundError):
        if offline():
            message = (
                f"{where}: HF_HUB_OFFLINE is set and this repo is not in the cache; "
                "run once online or pass a local directory"
            )
        else:
            message = f"{where}: cannot reach {endpoint} and the files are not cached ({text})"
    elif isinstance(error, hf_errors.DisabledRepoError):
        message = f"{where}: the repo has been disabled by its owner"
    elif isinstance(error, hf_errors.RevisionNotFoundError):
        message = f"{where}: revision not found"
    elif isinstance(error, hf_errors.RepositoryNotFoundError):
        hint = "" if has_token else "; if it is private, set HF_TOKEN"
        message = f"{where}: repository not found on {endpoint} (HTTP {status}){hint}"
    elif isinstance(error, hf_errors.EntryNotFoundError):
        message = f"{where}: a listed file is missing on {endpoint} (HTTP 404)"
    elif status == 401:
        message = f"{where}: authentication failed (HTTP 401): check HF_TOKEN"
    elif status == 403:
        message = f"{where}: permission denied (HTTP 403): the token cannot do this on this repo"
    elif status == 404:
        message = f"{where}: not found on {endpoint} (HTTP 404)"
    elif status == 412:
        message = f"{where}: the branch moved since the templates were read (HTTP 412): run again"
    elif status is not None:
        message = f"{where}: HTTP {status} from {endpoint}: {text}"
    else:
        message = f"{where}: network error ({type(error).__name__}: {text})"
    secret = _token(token)
    return message.replace(secret, "***") if secret else message


def _token(token: Token) -> str | None:
    """The token huggingface_hub would send (for redaction only)."""
    if token is False:
        return None
    if isinstance(token, str) and token:
        return token
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - redaction must never fail
        return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
