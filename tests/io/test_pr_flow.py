"""Pull requests that maintainers can merge: named templates when an engine breaks, no duplicate PRs,
one line per Hub refusal, many repos at once. Against the loopback Hub with the real huggingface_hub.

The first tests use the fake patcher of test_patch_cli (deterministic verdicts, tiny templates); the
reference-template tests at the end use the real patcher and every engine installed here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fakes import TINY, TINY_PATCHED, UNVERIFIABLE, fake_patch_template
from support.hub_server import TEST_TOKEN, FakeHub, hub_environment

import templatefix
from templatefix.cli import main
from templatefix.engines import HFJinja, MiniJinja, Unavailable
from templatefix.io.pr import PrMarker, fingerprint

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
TRAINING = "additional_chat_templates/training.jinja"


@pytest.fixture
def fake_patcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(templatefix, "patch_template", fake_patch_template)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    fake = FakeHub(token=TEST_TOKEN)
    fake.add_repo("org/tiny", {"chat_template.jinja": TINY.encode(), "config.json": b"{}"})
    fake.add_repo("org/exact", {"chat_template.jinja": TINY_PATCHED.encode()})
    fake.add_repo("org/unverifiable", {"chat_template.jinja": UNVERIFIABLE.encode()})
    fake.add_repo("org/no-discussions", {"chat_template.jinja": TINY.encode()}, discussions_disabled=True)
    fake.add_repo("org/gated", {"chat_template.jinja": TINY.encode()}, gated=True)
    with fake.serving() as url:
        hub_environment(monkeypatch, tmp_path, url)
        yield fake


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["patch", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _prs(hub: FakeHub, repo_id: str) -> list[Any]:
    return [d for d in hub.repos[repo_id].discussions if d.is_pull_request]


# ---- one repo ----------------------------------------------------------------------------------


def test_second_create_pr_opens_nothing_and_names_the_first(
    fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "org/tiny", "--create-pr")
    assert code == 0, err
    (first,) = _prs(hub, "org/tiny")
    marker = PrMarker.find(first.description)
    assert marker == PrMarker(templatefix.__version__, fingerprint([TINY]))
    code, out, err = run(capsys, "org/tiny", "--create-pr")
    assert code == 0, err
    assert len(hub.commits) == 1 and len(_prs(hub, "org/tiny")) == 1
    url = f"{templatefix_endpoint()}/org/tiny/discussions/{first.num}"
    assert f"already exists (open): {url} (--force opens another)" in out
    code, out, _ = run(capsys, "org/tiny", "--create-pr", "--json")
    push = json.loads(out)["push"]
    assert (push["status"], push["url"], push["pushed"]) == ("already proposed", url, False)


def templatefix_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def test_closed_pr_blocks_unless_force(
    fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = hub.repos["org/tiny"]
    repo.add_discussion("Unrelated fix", "no marker here")
    closed = repo.add_discussion(
        "Add {% generation %} markers to the chat template for assistant-only training",
        "Closed by the maintainers.\n\n" + PrMarker("0.0.1", fingerprint([TINY])).comment(),
        status="closed",
    )
    code, out, _ = run(capsys, "org/tiny", "--create-pr")
    assert code == 0 and hub.commits == []
    assert f"(closed): {templatefix_endpoint()}/org/tiny/discussions/{closed.num}" in out
    code, out, err = run(capsys, "org/tiny", "--create-pr", "--force")
    assert code == 0, err
    (commit,) = hub.commits
    assert commit.create_pr and commit.pr_num == 3


def test_pr_for_another_original_is_not_a_duplicate(
    fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.repos["org/tiny"].add_discussion(
        "Add {% generation %} markers", PrMarker("0.1.0", fingerprint(["an older template"])).comment()
    )
    assert run(capsys, "org/tiny", "--create-pr")[0] == 0
    assert len(hub.commits) == 1


def test_already_exact_is_nothing_to_do(
    fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "org/exact", "--create-pr")
    assert code == 0 and hub.commits == []
    assert "org/exact: nothing to do: the templates already have exact markers" in out
    assert not any("/discussions" in r.path for r in hub.requests)  # nothing to ask the Hub either


@pytest.mark.parametrize(
    ("repo", "message"),
    [
        (
            "org/no-discussions",
            "org/no-discussions: discussions are disabled on this repo, so no pull request",
        ),
        ("org/gated", "org/gated: gated repo: accept its conditions on the Hub and set HF_TOKEN"),
    ],
)
def test_hub_refusals_are_one_line(
    fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str], repo: str, message: str
) -> None:
    code, out, err = run(capsys, repo, "--create-pr")
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert hub.commits == []


@pytest.mark.parametrize(
    ("kind", "message"), [("401", "authentication failed"), ("403", "permission denied")]
)
def test_listing_refused_is_one_line(
    fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str], kind: str, message: str
) -> None:
    hub.fail("^GET /api/models/org/tiny/discussions", kind)
    code, _, err = run(capsys, "org/tiny", "--create-pr")
    assert code == 2 and message in err and err.count("\n") == 1 and TEST_TOKEN not in err
    assert hub.commits == []


def test_head_is_checked_again_right_before_committing(
    fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from templatefix.io import hub as io_hub

    listing = io_hub.pull_requests

    def someone_commits_meanwhile(repo_id: str, **kwargs: Any) -> Any:
        io_hub.push(io_hub.PushPlan(repo_id, {"config.json": b'{"moved": true}'}, "meanwhile", ""))
        return listing(repo_id, **kwargs)

    monkeypatch.setattr(io_hub, "pull_requests", someone_commits_meanwhile)
    code, _, err = run(capsys, "org/tiny", "--create-pr")
    assert code == 2 and "org/tiny: changed since its templates were read" in err and "run again" in err
    assert [c.summary for c in hub.commits] == ["meanwhile"] and _prs(hub, "org/tiny") == []


def test_named_by_default_when_an_engine_breaks_and_as_default(
    fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "org/tiny", "--create-pr", "--dry-run", "--json")
    data = json.loads(out)
    assert code == 0, err
    assert data["as_named"] == "training" and "jinja2 (plain)" in data["named_because"]
    engines = {e["engine"]: e["status"] for e in data["templates"][0]["engines"]}
    assert set(engines) == {"transformers", "jinja2 (plain)", "minijinja", "@huggingface/jinja"}
    assert engines["jinja2 (plain)"] == "fails"
    assert data["push"]["files"] == [TRAINING] and "**Why a named template.**" in data["push"]["description"]
    code, out, err = run(capsys, "org/tiny", "--create-pr", "--dry-run", "--json", "--as-default")
    data = json.loads(out)
    assert data["as_named"] is None and data["push"]["files"] == ["chat_template.jinja"]
    assert "Why a named template" not in data["push"]["description"]


# ---- many repos --------------------------------------------------------------------------------


def _five(hub: FakeHub) -> list[str]:
    hub.add_repo("org/proposed", {"chat_template.jinja": TINY.encode()})
    hub.repos["org/proposed"].add_discussion(
        "Add {% generation %} markers", PrMarker("0.1.0", fingerprint([TINY])).comment(), status="open"
    )
    return ["org/tiny", "org/proposed", "org/exact", "org/unverifiable", "org/missing"]


def test_batch_of_five_repos_one_per_outcome(
    fake_patcher: None, hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repos = _five(hub)
    listing = tmp_path / "repos.txt"
    listing.write_text("# one per outcome\n" + "\n".join(repos[:3]) + "\n\n")
    code, out, err = run(capsys, "--from-file", str(listing), *repos[3:], "--create-pr", "--json")
    assert code == 1, err  # a repo failed
    data = json.loads(out)
    statuses = {r["repo_id"]: r["status"] for r in data["repos"]}
    assert statuses == {
        "org/tiny": "opened",
        "org/proposed": "already proposed",
        "org/exact": "already exact",
        "org/unverifiable": "not verified",
        "org/missing": "error",
    }
    assert data["summary"] == {
        "opened": 1, "already proposed": 1, "already exact": 1, "not verified": 1, "error": 1
    }  # fmt: skip
    assert data["failed"] is True
    assert [c.repo_id for c in hub.commits] == ["org/tiny"]
    by_repo = {r["repo_id"]: r for r in data["repos"]}
    assert by_repo["org/proposed"]["url"].endswith("/org/proposed/discussions/1")
    assert "org/missing: repository not found" in by_repo["org/missing"]["message"]


def test_batch_summary_table_and_exit_code(
    fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    repos = _five(hub)
    code, out, _ = run(capsys, *repos, "--create-pr", "--dry-run")
    assert code == 1 and hub.commits == []
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in out.splitlines()
        if "│ org/" in line
    }
    assert rows == {
        "org/tiny": "would open",
        "org/proposed": "already proposed",
        "org/exact": "already exact",
        "org/unverifiable": "not verified",
        "org/missing": "error",
    }
    assert "would open: 1, already proposed: 1, already exact: 1, not verified: 1, error: 1" in out
    code, out, _ = run(capsys, "org/tiny", "org/exact", "--create-pr")
    assert code == 0 and "opened: 1, already exact: 1" in out


def test_batch_needs_create_pr_and_refuses_single_outputs(
    fake_patcher: None, hub: FakeHub, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "org/tiny", "org/exact")
    assert code == 2 and "several SOURCEs need --create-pr" in err
    code, _, err = run(capsys, "org/tiny", "org/exact", "--create-pr", "-o", str(tmp_path / "out"))
    assert code == 2 and "-o and --in-place apply to one SOURCE" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    code, _, err = run(capsys, "--from-file", str(empty), "--create-pr")
    assert code == 2 and "no SOURCE in it" in err


# ---- acceptance: reference templates, real patcher, every engine here ------------------------------


def _available(engine: Any) -> bool:
    try:
        engine.version()
    except Unavailable:
        return False
    return True


@pytest.fixture
def reference_hub(hub: FakeHub) -> FakeHub:
    chatml = (TEMPLATES / "chatml.jinja").read_bytes()
    llama3 = (TEMPLATES / "llama3.jinja").read_text(encoding="utf-8")
    config = {"bos_token": "<|begin_of_text|>", "chat_template": llama3, "eos_token": "<|eot_id|>"}
    for name in ("ref/chatml", "ref/chatml-default"):
        hub.add_repo(
            name, {"chat_template.jinja": chatml, "tokenizer_config.json": b'{"eos_token": "<|im_end|>"}'}
        )
    hub.add_repo("ref/llama3", {"tokenizer_config.json": json.dumps(config, indent=2).encode()})
    return hub


def _pr_files(hub: FakeHub, repo_id: str, num: int) -> dict[str, bytes]:
    repo = hub.repos[repo_id]
    return repo.snapshots[repo.refs[f"refs/pr/{num}"]]


def test_acceptance_reference_pr_proposes_the_named_template(
    reference_hub: FakeHub, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from templatefix.io.sources import load_source

    code, out, err = run(capsys, "ref/chatml", "ref/llama3", "--create-pr", "--json")
    data = json.loads(out)
    assert code == 0, err
    assert [r["status"] for r in data["repos"]] == ["opened", "opened"]
    original = (TEMPLATES / "chatml.jinja").read_text(encoding="utf-8")
    (chatml_pr,) = _prs(reference_hub, "ref/chatml")
    files = _pr_files(reference_hub, "ref/chatml", chatml_pr.num)
    assert files["chat_template.jinja"] == original.encode()  # the default stays
    assert b"{% generation %}" in files[TRAINING]
    (llama_pr,) = _prs(reference_hub, "ref/llama3")
    config = json.loads(_pr_files(reference_hub, "ref/llama3", llama_pr.num)["tokenizer_config.json"])
    assert [item["name"] for item in config["chat_template"]] == ["default", "training"]
    assert config["chat_template"][0]["template"] == (TEMPLATES / "llama3.jinja").read_text(encoding="utf-8")
    for pr in (chatml_pr, llama_pr):
        description = pr.description
        assert "opened automatically by templatefix" in description and "just close it" in description
        assert "**Why a named template.**" in description and "### Inference engines" in description
        assert 'tokenizer.chat_template = tokenizer.chat_template["training"]' in description
        assert "pip install" in description and "templatefix check ref/" in description
        assert "| jinja2 (plain) |" in description
        if _available(MiniJinja()):
            assert (
                "| minijinja | TGI, mistral.rs |" in description
                and "unknown statement generation" in description
            )
        if _available(HFJinja()):
            assert "| @huggingface/jinja |" in description
            assert "identical (" in description.split("| @huggingface/jinja |")[1].splitlines()[0]
    # what transformers reads from the PR: the original default, the marked training template
    pr_dir = tmp_path / "pr"
    for path, data_ in _pr_files(reference_hub, "ref/chatml", chatml_pr.num).items():
        (pr_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (pr_dir / path).write_bytes(data_)
    seen = load_source(str(pr_dir)).templates.as_transformers_sees_it()
    assert isinstance(seen, dict) and seen["default"] == original and "{% generation %}" in seen["training"]


def test_acceptance_as_default_replaces_the_default(
    reference_hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "ref/chatml-default", "--create-pr", "--as-default", "--json")
    assert code == 0, err
    (pr,) = _prs(reference_hub, "ref/chatml-default")
    files = _pr_files(reference_hub, "ref/chatml-default", pr.num)
    assert b"{% generation %}" in files["chat_template.jinja"] and TRAINING not in files
    assert "Why a named template" not in pr.description and "### Inference engines" in pr.description


def test_readme_recipe_trains_with_the_named_template(
    tokenizers_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The TRL recipe of the README and the PR text, on a real tokenizer with a named template."""
    from transformers import AutoTokenizer

    model = tmp_path / "model"
    shutil.copytree(tokenizers_dir / "qwen2.5", model)
    original = (TEMPLATES / "chatml.jinja").read_text(encoding="utf-8")
    (model / "chat_template.jinja").write_text(original, encoding="utf-8", newline="")
    before = AutoTokenizer.from_pretrained(model)
    assert (
        main(["patch", str(model), "--as-named", "training", "--in-place", "--no-backup", "--no-engines"])
        == 0
    )
    capsys.readouterr()
    tokenizer = AutoTokenizer.from_pretrained(model)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == before.apply_chat_template(
        messages, tokenize=False
    )  # the default is untouched
    assert tokenizer.chat_template["default"] == original
    by_name = tokenizer.apply_chat_template(
        messages, chat_template="training", return_dict=True, return_assistant_tokens_mask=True
    )
    tokenizer.chat_template = tokenizer.chat_template["training"]  # the recipe
    recipe = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    assert recipe["assistant_masks"] == by_name["assistant_masks"] and sum(recipe["assistant_masks"]) > 0
    trained = tokenizer.decode(
        [t for t, m in zip(recipe["input_ids"], recipe["assistant_masks"], strict=True) if m]
    )
    assert "Hello there." in trained and "<|im_end|>" in trained and "Hi" not in trained
    trl = pytest.importorskip("trl.chat_template_utils")
    assert trl.has_generation_markers(tokenizer.chat_template)  # SFTTrainer keeps this template
