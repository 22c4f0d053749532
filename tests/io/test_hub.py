"""templatefix.io.hub against the loopback Hub (tests/support/hub_server.py), through the real
huggingface_hub."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.hub_server import TEST_TOKEN, FakeHub, hub_environment, hub_offline

from templatefix.errors import PushError, SourceError
from templatefix.io.hub import (
    PushPlan,
    describe_hub_error,
    download_templates,
    head_commit,
    pull_requests,
    push,
)
from templatefix.io.pr import PrMarker, earlier_pull_request, fingerprint
from templatefix.io.sources import load_source

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
WEIGHTS = 13_761_264_768  # declared size of model.safetensors: must never be fetched


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    fake = FakeHub(token=TEST_TOKEN)
    fake.add_repo(
        "org/jinja-model",
        {
            "chat_template.jinja": CHATML.encode(),
            "additional_chat_templates/tool_use.jinja": b"{{ messages | length }}\r\n",
            "config.json": b"{}",
            "tokenizer_config.json": b'{"eos_token": "<|im_end|>"}',
            "model.safetensors": b"\0" * 16,
            "README.md": b"# model",
        },
        sizes={"model.safetensors": WEIGHTS},
    )
    fake.add_repo(
        "org/config-model",
        {
            "tokenizer_config.json": (
                '{\n  "chat_template": ' + _json(CHATML) + ',\n  "eos_token": "<|im_end|>"\n}'
            ).encode(),
            "pytorch_model.bin": b"\0",
        },
        sizes={"pytorch_model.bin": WEIGHTS},
    )
    fake.add_repo("org/private", {"chat_template.jinja": CHATML.encode()}, private=True)
    fake.add_repo("org/weights-only", {"config.json": b"{}", "model.safetensors": b"\0"})
    fake.add_repo("org/gated", {"chat_template.jinja": CHATML.encode()}, gated=True)
    fake.add_repo("org/closed-doors", {"chat_template.jinja": CHATML.encode()}, discussions_disabled=True)
    with fake.serving() as url:
        hub_environment(monkeypatch, tmp_path, url)
        yield fake


def _json(text: str) -> str:
    import json

    return json.dumps(text)


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub sleeps between download retries; tests do not need to wait."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)


def test_fetch_downloads_only_template_files(hub: FakeHub) -> None:
    source = load_source("org/jinja-model")
    assert [e.label for e in source.templates] == [
        "chat_template.jinja",
        "additional_chat_templates/tool_use.jinja",
    ]
    assert sorted(hub.downloaded()) == sorted(
        ["chat_template.jinja", "additional_chat_templates/tool_use.jinja", "tokenizer_config.json"]
    )
    assert "model.safetensors" not in hub.touched()
    assert "config.json" not in hub.touched()
    assert source.templates.entries[1].template == "{{ messages | length }}\r\n"  # CRLF kept
    assert source.commit == hub.repos["org/jinja-model"].sha
    assert source.templates.special_tokens == {"eos_token": "<|im_end|>"}


def test_fetch_template_in_tokenizer_config(hub: FakeHub) -> None:
    source = load_source("org/config-model")
    (entry,) = source.templates
    assert (entry.kind, entry.label, entry.template) == (
        "tokenizer_config",
        "tokenizer_config.json[chat_template]",
        CHATML,
    )
    assert hub.downloaded() == ["tokenizer_config.json"]


def test_fetch_pins_the_commit_of_the_revision(hub: FakeHub) -> None:
    repo = hub.repos["org/jinja-model"]
    old = repo.sha
    repo.snapshots["b" * 40] = {"chat_template.jinja": b"{{ 'v2' }}"}
    repo.refs["v2"] = "b" * 40
    source = load_source("org/jinja-model", revision="v2")
    assert source.templates.default.template == "{{ 'v2' }}"
    assert source.commit == "b" * 40 != old
    assert all("/resolve/" + "b" * 40 + "/" in r.path for r in hub.requests if "/resolve/" in r.path)


def test_huggingface_hub_settings_are_its_own(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """templatefix never re-reads HF_ENDPOINT: huggingface_hub's setting is the one used."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a dead port, never used in-process
    snapshot = download_templates("org/config-model")
    assert snapshot.files == ["tokenizer_config.json"] and hub.downloaded() == ["tokenizer_config.json"]


def test_token_is_sent_and_private_repo_readable(hub: FakeHub) -> None:
    source = load_source("org/private")
    assert source.templates.default.template == CHATML
    assert {r.authorization for r in hub.requests} == {f"Bearer {TEST_TOKEN}"}


def test_private_repo_without_token_is_one_line_error(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(SourceError) as error:
        load_source("org/private")
    message = str(error.value)
    assert "\n" not in message
    assert "org/private" in message and "not found" in message and "HF_TOKEN" in message


def test_missing_repo_and_revision(hub: FakeHub) -> None:
    with pytest.raises(SourceError, match="org/nope: repository not found"):
        load_source("org/nope")
    with pytest.raises(SourceError, match="revision not found"):
        load_source("org/jinja-model", revision="no-such-branch")


def test_gated_repo_is_one_line(hub: FakeHub) -> None:
    with pytest.raises(SourceError) as error:
        load_source("org/gated")
    assert str(error.value) == "org/gated: gated repo: accept its conditions on the Hub and set HF_TOKEN"


def test_repo_without_template(hub: FakeHub) -> None:
    with pytest.raises(SourceError, match="no chat template in the repo"):
        load_source("org/weights-only")
    assert hub.downloaded() == []


@pytest.mark.parametrize(
    ("pattern", "kind", "expected"),
    [
        ("^GET /api/models/", "401", "HTTP 401"),
        ("^GET /api/models/", "404", "repository not found"),
        ("^GET /api/models/", "drop", "network error"),
        ("^GET /org/jinja-model/resolve/", "drop", "org/jinja-model"),
        ("^HEAD /org/jinja-model/resolve/", "drop", "org/jinja-model"),
    ],
)
def test_injected_failures_are_one_line(
    hub: FakeHub, no_sleep: None, pattern: str, kind: str, expected: str
) -> None:
    hub.fail(pattern, kind)
    with pytest.raises(SourceError) as error:
        load_source("org/jinja-model")
    message = str(error.value)
    assert expected in message
    assert "\n" not in message
    assert TEST_TOKEN not in message


def test_offline_reads_cache_or_says_why(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    online = load_source("org/jinja-model")
    hub_offline(monkeypatch, True)
    count = len(hub.requests)
    offline = load_source("org/jinja-model")
    assert len(hub.requests) == count  # no network at all
    assert [e.template for e in offline.templates] == [e.template for e in online.templates]
    assert offline.commit == online.commit
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE is set and this repo is not in the cache"):
        load_source("org/config-model")
    with pytest.raises(PushError, match="HF_HUB_OFFLINE is set"):
        push(PushPlan("org/jinja-model", {"chat_template.jinja": b"x"}, "t", "d"))


def test_push_commit_and_pr(hub: FakeHub) -> None:
    plan = PushPlan("org/jinja-model", {"chat_template.jinja": b"new\r\n"}, "Title here", "Body\nhere")
    push(plan)
    commit = hub.commits[-1]
    assert (commit.summary, commit.description, commit.files, commit.create_pr) == (
        "Title here",
        "Body\nhere",
        {"chat_template.jinja": b"new\r\n"},
        False,
    )
    assert plan.result["commit_oid"] == commit.oid
    pr = PushPlan("org/jinja-model", {"chat_template.jinja": b"pr"}, "PR title", "PR body", create_pr=True)
    push(pr)
    assert hub.commits[-1].create_pr and hub.commits[-1].pr_num == 1
    assert pr.result["pr_url"].endswith("/org/jinja-model/discussions/1")
    (listed,) = pull_requests("org/jinja-model", title_contains="PR")
    assert (listed.num, listed.title, listed.status, listed.description) == (1, "PR title", "open", "PR body")


def test_commit_refuses_a_moved_branch_and_pr_uses_its_parent(hub: FakeHub) -> None:
    repo = hub.repos["org/jinja-model"]
    read_at = repo.sha
    push(PushPlan("org/jinja-model", {"README.md": b"moved"}, "someone else", ""))  # main moves on
    assert head_commit("org/jinja-model") != read_at
    stale = PushPlan("org/jinja-model", {"chat_template.jinja": b"x"}, "t", "d", parent_commit=read_at)
    with pytest.raises(PushError, match="branch moved"):
        push(stale)
    pr = PushPlan(
        "org/jinja-model", {"chat_template.jinja": b"x"}, "t", "d", create_pr=True, parent_commit=read_at
    )
    push(pr)
    opened = repo.snapshots[repo.refs["refs/pr/1"]]
    assert opened["README.md"] == b"# model" and opened["chat_template.jinja"] == b"x"


def test_pull_requests_pages_and_statuses(hub: FakeHub) -> None:
    repo = hub.repos["org/jinja-model"]
    marker = PrMarker("0.0.9", fingerprint([CHATML]))
    repo.add_discussion("A question", "not a PR", is_pull_request=False)
    repo.add_discussion("Add {% generation %} markers", "old\n" + marker.comment(), status="closed")
    for n in range(4):
        repo.add_discussion(f"Fix typo {n}", "unrelated")
    prs = list(pull_requests("org/jinja-model", title_contains="{% generation %}"))
    assert [p.num for p in prs] == [6, 5, 4, 3, 2]  # every page, newest first, no plain discussion
    details = [p.num for p in prs if p.description]
    assert details == [2]  # descriptions fetched only for candidate titles
    earlier = earlier_pull_request(prs, fingerprint([CHATML]))
    assert earlier is not None and earlier.status == "closed" and earlier.url.endswith("/discussions/2")
    assert earlier_pull_request(prs, fingerprint(["another template"])) is None


def test_discussions_disabled_is_one_line(hub: FakeHub) -> None:
    with pytest.raises(PushError) as error:
        list(pull_requests("org/closed-doors"))
    assert str(error.value) == (
        "org/closed-doors: discussions are disabled on this repo, so no pull request can be opened"
    )


@pytest.mark.parametrize(("kind", "expected"), [("401", "authentication failed"), ("404", "not found")])
def test_push_failures(hub: FakeHub, kind: str, expected: str) -> None:
    hub.fail("^POST /api/models/org/jinja-model/", kind)
    with pytest.raises(PushError) as error:
        push(PushPlan("org/jinja-model", {"chat_template.jinja": b"x"}, "t", "d", create_pr=True))
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert hub.commits == []


def test_push_with_wrong_token_never_shows_it(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_wrongTOKENvalue")
    with pytest.raises(PushError) as error:
        push(PushPlan("org/jinja-model", {"chat_template.jinja": b"x"}, "t", "d"))
    assert "hf_wrongTOKENvalue" not in str(error.value)
    assert hub.commits == []


def test_describe_hub_error_redacts_token() -> None:
    assert "hf_abc" not in describe_hub_error(RuntimeError("bad token hf_abc"), "o/n", "hf_abc")


def test_marker_round_trip_and_malformed() -> None:
    marker = PrMarker("1.2.3", "ab" * 32)
    assert PrMarker.find(f"text\n\n{marker.comment()}\n") == marker
    assert PrMarker.find("<!-- templatefix {not json} -->") is None
    assert PrMarker.find("no marker") is None
