"""The Hugging Face Hub side: fetch a repo's templates (small files only) and push a patch.

Everything goes through ``huggingface_hub``; settings are read from the environment *at call time*
(``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``, ``HF_HOME``/``HF_HUB_CACHE``), so a process can
change them between calls. Only the files that can hold a chat template are downloaded
(``chat_template.jinja``, ``additional_chat_templates/*.jinja``, ``tokenizer_config.json``,
``chat_template.json``); never weights. Every failure becomes a one-line ``SourceError`` or
``PushError``; the token never appears in a message.

Example:
    >>> from templatefix.hub import fetch_source
    >>> source = fetch_source("openai/gpt-oss-20b")  # doctest: +SKIP
    >>> [entry.label for entry in source.templates]  # doctest: +SKIP
    ['chat_template.jinja', 'tokenizer_config.json[chat_template]']
    >>> source.commit  # doctest: +SKIP
    'd666cf3b67006cf8227666739edf25164aaffdeb'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from templatefix.errors import SourceError, TemplatefixError
from templatefix.sources import LoadedSource, read_files, template_files_in

_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "on", "yes", "true"}


class PushError(TemplatefixError):
    """Pushing the patch to the Hub failed (nothing was committed)."""


@dataclass(frozen=True)
class HubSettings:
    """Hub settings as the environment has them now.

    Example:
        >>> HubSettings.from_env(token="hf_x").token
        'hf_x'
    """

    endpoint: str
    token: str | None
    offline: bool
    cache_dir: str

    @classmethod
    def from_env(cls, token: str | None = None) -> HubSettings:
        from huggingface_hub import constants

        endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        offline_value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
        cache_dir = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
        if not cache_dir and os.environ.get("HF_HOME"):
            cache_dir = os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
        return cls(
            endpoint=endpoint,
            token=token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None,
            offline=offline_value.strip().lower() in _TRUE,
            cache_dir=os.path.expanduser(cache_dir or constants.HF_HUB_CACHE),
        )

    def api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token)


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
        parent_commit: commit the change was computed from (refuses to commit over newer changes).
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
            **self.result,
        }


def fetch_source(
    repo_id: str, *, revision: str | None = None, token: str | None = None, spec: str | None = None
) -> LoadedSource:
    """Download the template-bearing files of ``repo_id`` at ``revision`` and read them.

    Online: one ``model_info`` call lists the repo at ``revision`` (pinning its commit), then
    ``hf_hub_download`` fetches only the template files, at that commit. Offline
    (``HF_HUB_OFFLINE=1``): the cached snapshot is read, or a clear error says it is not cached.

    Raises:
        SourceError: repo/revision not found, no access, network failure, offline and not cached,
            or no chat template in the repo.
    """
    settings = HubSettings.from_env(token)
    where = f"{repo_id}@{revision}" if revision else repo_id
    if settings.offline:
        root, commit = _cached_snapshot(settings, repo_id, revision)
        names = template_files_in(_relative_files(root))
    else:
        from huggingface_hub import hf_hub_download

        try:
            info = settings.api().model_info(repo_id, revision=revision)
            commit = info.sha
            names = template_files_in([s.rfilename for s in info.siblings or []])
            paths = {
                name: hf_hub_download(
                    repo_id,
                    name,
                    revision=commit or revision,
                    endpoint=settings.endpoint,
                    cache_dir=settings.cache_dir,
                    token=settings.token,
                )
                for name in names
            }
        except Exception as error:
            raise SourceError(describe_hub_error(error, where, settings)) from None
        if commit and names:
            _remember_ref(settings, repo_id, revision or "main", commit)
        # hf_hub_download returns <snapshot>/<name>: the snapshot folder is the layout's root.
        roots = {Path(p).parents[len(Path(n).parts) - 1] for n, p in paths.items()}
        root = roots.pop() if len(roots) == 1 else Path(settings.cache_dir)
    if not names:
        raise SourceError(
            f"{where}: no chat template in the repo (no chat_template.jinja, "
            "additional_chat_templates/*.jinja, tokenizer_config.json or chat_template.json)"
        )
    templates = read_files(root, names)
    if not templates.entries:
        raise SourceError(f"{where}: no chat template (tokenizer_config.json has no chat_template key)")
    return LoadedSource(
        spec or repo_id, "hub", root, templates, repo_id=repo_id, revision=revision, commit=commit
    )


def push(plan: PushPlan, *, token: str | None = None) -> PushPlan:
    """Commit ``plan.files`` to ``plan.repo_id`` (or open a PR). Fills ``plan.result`` with URLs.

    Raises:
        PushError: one line (auth failure, repo missing, network error...). Nothing is committed.
    """
    from huggingface_hub import CommitOperationAdd

    settings = HubSettings.from_env(token)
    if settings.offline:
        raise PushError(f"cannot push to {plan.repo_id}: HF_HUB_OFFLINE is set")
    operations = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=data)
        for path, data in sorted(plan.files.items())
    ]
    try:
        info = settings.api().create_commit(
            plan.repo_id,
            operations,
            commit_message=plan.title,
            commit_description=plan.description,
            revision=plan.revision,
            create_pr=plan.create_pr,
            parent_commit=plan.parent_commit,
        )
    except Exception as error:
        raise PushError("push failed: " + describe_hub_error(error, plan.repo_id, settings)) from None
    plan.result = {"commit_url": str(info.commit_url), "commit_oid": info.oid, "pr_url": info.pr_url}
    return plan


def describe_hub_error(error: BaseException, where: str, settings: HubSettings | None = None) -> str:
    """One line for a ``huggingface_hub``/network error. Never includes the token.

    Example:
        >>> describe_hub_error(TimeoutError("read timed out"), "org/model")
        'org/model: network error (TimeoutError: read timed out)'
    """
    from huggingface_hub import errors as hf_errors

    endpoint = settings.endpoint if settings else "the Hub"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, hf_errors.GatedRepoError):
        message = f"{where}: gated repo: accept its conditions on the Hub and set HF_TOKEN"
    elif isinstance(error, hf_errors.RevisionNotFoundError):
        message = f"{where}: revision not found"
    elif isinstance(error, hf_errors.RepositoryNotFoundError):
        hint = "" if settings is None or settings.token else "; if it is private, set HF_TOKEN"
        message = f"{where}: repository not found on {endpoint} (HTTP {status}){hint}"
    elif isinstance(error, hf_errors.RemoteEntryNotFoundError):
        message = f"{where}: a listed file is missing on {endpoint} (HTTP 404)"
    elif status == 401:
        message = f"{where}: authentication failed (HTTP 401): check HF_TOKEN"
    elif status == 403:
        message = f"{where}: permission denied (HTTP 403): the token cannot write to this repo"
    elif isinstance(error, hf_errors.OfflineModeIsEnabled | hf_errors.LocalEntryNotFoundError):
        message = f"{where}: cannot reach {endpoint} and the files are not cached ({_first_line(error)})"
    elif status is not None:
        message = f"{where}: HTTP {status} from {endpoint}: {_first_line(error)}"
    else:
        message = f"{where}: network error ({type(error).__name__}: {_first_line(error)})"
    if settings is not None and settings.token:
        message = message.replace(settings.token, "***")
    return message


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _cached_snapshot(settings: HubSettings, repo_id: str, revision: str | None) -> tuple[Path, str]:
    """The cached snapshot folder of ``repo_id@revision`` (offline mode)."""
    repo_dir = Path(settings.cache_dir) / ("models--" + repo_id.replace("/", "--"))
    wanted = revision or "main"
    commit = wanted if _COMMIT_SHA.match(wanted) else None
    if commit is None:
        ref = repo_dir / "refs" / wanted
        commit = ref.read_text().strip() if ref.is_file() else None
    snapshot = repo_dir / "snapshots" / commit if commit else None
    if snapshot is None or not snapshot.is_dir():
        raise SourceError(
            f"{repo_id}@{wanted}: HF_HUB_OFFLINE is set and this repo is not in the cache "
            f"({settings.cache_dir}); run once online or pass a local directory"
        )
    return snapshot, commit or wanted


def _remember_ref(settings: HubSettings, repo_id: str, revision: str, commit: str) -> None:
    """Record ``revision -> commit`` in the cache (as huggingface_hub does) so offline runs find it.

    Files are downloaded by commit to read one consistent snapshot; this keeps the branch name usable.
    """
    if _COMMIT_SHA.match(revision) or ".." in revision or revision.startswith("/"):
        return
    ref = Path(settings.cache_dir) / ("models--" + repo_id.replace("/", "--")) / "refs" / revision
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text() != commit:
            ref.write_text(commit)
    except OSError:  # a read-only cache only costs offline convenience
        pass


def _relative_files(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
