"""The web app (``templatefix app``) through its API (``gradio_client``) and in a real browser.

The app runs on 127.0.0.1 against a loopback Hub (``hub_server.FakeHub``) driven by the real
huggingface_hub client. The server process has a token of its own in ``HF_TOKEN``; the tests
check that the Hub never sees it: reads go without a token, pull requests with the user's.

The browser test needs Chromium (``/usr/bin/chromium``, Debian's ``chromium`` package, or
``TEMPLATEFIX_CHROMIUM``) and Playwright (``pip install playwright``, no browser download): it skips
without them, and fails instead when ``TEMPLATEFIX_REQUIRE_BROWSER=1`` (as in ``.ci/run``).
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

gradio = pytest.importorskip("gradio", reason="the app extra: pip install -e '.[app]'")
gradio_client = pytest.importorskip("gradio_client")

from support.hub_server import TEST_TOKEN, FakeHub, hub_environment  # noqa: E402

import templatefix  # noqa: E402
from templatefix.ui.app import MAX_TEMPLATE_CHARS, Workers, build_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHATML = (ROOT / "templates" / "chatml.jinja").read_text(encoding="utf-8")
#: The server's own token: it must never reach the Hub.
APP_OWN_TOKEN = "hf_appOWNtokenNEVERsent0123456789"
POLICY = ["all", "trained", "trained", "out", ""]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    fake = FakeHub(token=TEST_TOKEN)
    fake.add_repo("org/chatml", {"chat_template.jinja": CHATML.encode(), "config.json": b"{}"})
    fake.add_repo("org/gated", {"chat_template.jinja": CHATML.encode()}, gated=True)
    fake.add_repo("org/broken", {"chat_template.jinja": b"{% for m in messages %}{{ m.content }"})
    with fake.serving() as url, pytest.MonkeyPatch.context() as monkeypatch:
        hub_environment(monkeypatch, tmp_path_factory.mktemp("hub"), url, token=APP_OWN_TOKEN)
        workers = Workers(1, deadline=600)
        demo = build_app(workers, oauth=False)
        port = _free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield {"hub": fake, "url": f"http://127.0.0.1:{port}/"}
        finally:
            demo.close()
            workers.close()


@pytest.fixture(scope="module")
def client(served: dict[str, Any]) -> Any:
    return gradio_client.Client(served["url"], verbose=False)


def _patch(client: Any, model_id: str = "", template: str = "", revision: str = "") -> tuple[Any, ...]:
    return tuple(client.predict(model_id, revision, template, *POLICY, api_name="/patch"))


def _own_token_sent(hub: FakeHub) -> bool:
    return any(APP_OWN_TOKEN in (request.authorization or "") for request in hub.requests)


def test_pasted_template_gives_the_librarys_verdict_diff_engines_view_and_file(client: Any) -> None:
    verdict, diff, engines, view, download = _patch(client, template=CHATML)
    expected = templatefix.patch_template(CHATML)
    assert expected.verified  # the reference template is one the project verifies
    assert f"**{expected.status}**" in verdict
    assert "{% generation %}" in diff or "{%- generation %}" in diff
    assert diff.strip() == expected.diff.strip()
    assert "| transformers |" in engines and "identical" in engines
    assert 'class="trained"' in view and "trained characters" in view
    assert Path(download).read_text(encoding="utf-8") == expected.patched


def test_hub_id_is_read_from_the_loopback_hub_without_the_apps_token(
    client: Any, served: dict[str, Any]
) -> None:
    hub: FakeHub = served["hub"]
    before = len(hub.requests)
    verdict, diff, _, _, download = _patch(client, model_id="org/chatml")
    assert "`chat_template.jinja`" in verdict and "**Error" not in verdict
    assert Path(download).read_text(encoding="utf-8") == templatefix.patch_template(CHATML).patched
    assert "chat_template.jinja" in hub.downloaded()
    assert not any(path.endswith((".safetensors", ".bin")) for path in hub.downloaded())
    assert len(hub.requests) > before
    assert not _own_token_sent(hub)


def test_pull_request_is_opened_once_with_the_users_token_and_named_on_the_second_try(
    client: Any, served: dict[str, Any]
) -> None:
    hub: FakeHub = served["hub"]
    args = ("org/chatml", "", *POLICY)
    no_token = client.predict(*args, "", api_name="/open_pr")
    assert "Sign in" in no_token
    assert not [d for d in hub.repos["org/chatml"].discussions if d.is_pull_request]

    first = client.predict(*args, TEST_TOKEN, api_name="/open_pr")
    prs = [d for d in hub.repos["org/chatml"].discussions if d.is_pull_request]
    assert "**opened**" in first and len(prs) == 1
    commit = next(r for r in hub.requests if r.method == "POST" and r.path.endswith("/commit/main"))
    assert commit.authorization == f"Bearer {TEST_TOKEN}"

    second = client.predict(*args, TEST_TOKEN, api_name="/open_pr")
    assert "**already proposed**" in second
    assert len([d for d in hub.repos["org/chatml"].discussions if d.is_pull_request]) == 1
    url = first.split("](")[-1].rstrip(")")
    assert url and url in second  # the first pull request is named
    assert not _own_token_sent(hub)


def test_gated_repo_is_one_message_in_the_page(client: Any) -> None:
    verdict, diff, engines, view, download = _patch(client, model_id="org/gated")
    assert verdict.startswith("**Error:**") and "gated" in verdict.lower()
    assert "Traceback" not in verdict and not diff and download is None


@pytest.mark.parametrize(
    ("model_id", "template", "expected"),
    [
        ("", "{% for m in messages %}{{ m.content }", "invalid Jinja"),  # not Jinja, pasted
        ("org/broken", "", "invalid Jinja"),  # not Jinja, on the Hub
        ("org/missing", "", "not found"),
        ("", "x" * (MAX_TEMPLATE_CHARS + 1), "at most"),
        ("", "", "give a Hub model id"),
        ("org/chatml", CHATML, "not both"),
        ("not a repo", "", "not a Hub model id"),
    ],
)
def test_bad_input_is_one_message_in_the_page(
    client: Any, model_id: str, template: str, expected: str
) -> None:
    verdict, diff, _, _, download = _patch(client, model_id=model_id, template=template)
    assert verdict.startswith("**Error:**"), verdict
    assert expected in verdict and "Traceback" not in verdict
    assert download is None


# ---- in a real browser -----------------------------------------------------------------------


def _chromium() -> str | None:
    candidate = os.environ.get("TEMPLATEFIX_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return candidate if candidate and Path(candidate).exists() else None


def test_page_in_headless_chromium_shows_verdict_and_diff(served: dict[str, Any], tmp_path: Path) -> None:
    required = os.environ.get("TEMPLATEFIX_REQUIRE_BROWSER") == "1"
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if executable is None or sync_playwright is None:
        missing = "Chromium" if executable is None else "Playwright"
        if required:
            pytest.fail(f"TEMPLATEFIX_REQUIRE_BROWSER=1 but {missing} is not installed")
        pytest.skip(f"{missing} is not installed (Debian: apt install chromium; pip install playwright)")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ]
    expected = templatefix.patch_template(CHATML)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=flags)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(served["url"], wait_until="networkidle")
            page.locator("#template textarea").fill(CHATML)
            page.locator("#run").click()
            verdict = page.locator("#verdict")
            verdict.get_by_text(expected.status).first.wait_for(timeout=240_000)
            diff = page.locator("#diff textarea").input_value()
            shown = verdict.inner_text().replace("`", "")
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        finally:
            browser.close()
    assert f"chat_template.jinja: {expected.status}" in shown
    assert diff.strip() == expected.diff.strip()
    assert (tmp_path / "app.png").stat().st_size > 10_000
