"""/ui in a real headless Chromium (Debian's, driven by Playwright) against a real ``llmq api``
(gunicorn, two workers), a real worker and the simulator: log in through the form, see the jobs
with status, model, cost and attempts, filter and page them, open one and see its attempts and
webhook deliveries; another tenant's job is a 404; a prompt holding ``<script>`` is shown as
text; the admin token sees every tenant. Screenshots: ``test-artifacts/ui-jobs.png`` and
``test-artifacts/ui-job.png``."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmq.config.settings import Settings
from llmq.models.base import utcnow
from llmq.models.db import Database
from llmq.models.tenants import IssuedKey, create_key
from tests.integration.conftest import SimulatorControl, unique_model
from tests.integration.services import (
    VENV_BIN,
    WebhookReceiver,
    free_port,
    settings_env,
    start_process,
    stop_process,
    wait_for,
)

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("LLMQ_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
XSS = '<script>document.title="pwned"</script><b>bold?</b>'

pytestmark = [
    pytest.mark.usefixtures("worker"),
    pytest.mark.skipif(
        not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    ),
]


@pytest.fixture(scope="module")
def api_url(
    settings: Settings, database: Database, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    env = {
        **settings_env(settings),
        "LLMQ_API_PORT": str(port),
        "LLMQ_API_WORKERS": "2",  # one generated cookie secret shared by both (gunicorn_conf.py)
        "LLMQ_ADMIN_TOKEN": ADMIN_TOKEN,
        "LLMQ_VAR_DIR": str(tmp_path_factory.mktemp("ui-var")),
    }
    env.pop("LLMQ_UI_SECRET_KEY", None)
    proc = start_process([str(VENV_BIN / "llmq"), "api"], env, logs_dir / "ui-api.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, timeout=120, what="the API"
        )
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _submit(api_url: str, key: str, **body: Any) -> str:
    answer = httpx.post(
        f"{api_url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def _ended(api_url: str, key: str, job_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = httpx.get(f"{api_url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    return wait_for(check, timeout=60, what=f"{job_id} to end")  # type: ignore[no-any-return]


def _log_in(page: Any, api_url: str, secret: str) -> None:
    page.goto(f"{api_url}/ui")
    assert page.url.endswith("/ui/login")
    page.fill("#key", secret)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Recent jobs')")


def test_the_jobs_page_in_a_real_browser(
    api_url: str,
    browser: Any,
    tenant: IssuedKey,
    database: Database,
    sim: SimulatorControl,
    webhook_receiver: WebhookReceiver,
) -> None:
    with database.transaction() as session:
        other = create_key(
            session, tenant_name=f"other-{uuid.uuid4().hex[:6]}", now=utcnow(), tier="unlimited"
        )
    key = tenant.api_key
    hooked = _submit(
        api_url,
        key,
        prompt=XSS,
        model="openai/gpt-4o-mini",
        max_tokens=20,
        webhook_url=webhook_receiver.url(f"/ui/{tenant.tenant_id}"),
    )
    broken = unique_model("ui-broken")
    sim.script(broken, [], default={"fault": "400", "message": "bad request"})
    failed = _submit(api_url, key, prompt="this one fails", model=f"openai/{broken}")
    plain = _submit(
        api_url, key, prompt="a plain job", model="anthropic/claude-3-5-haiku-latest", max_tokens=20
    )
    foreign = _submit(api_url, other.api_key, prompt="not yours", model="openai/gpt-4o-mini", max_tokens=20)
    done = {job_id: _ended(api_url, key, job_id) for job_id in (hooked, failed, plain)}
    _ended(api_url, other.api_key, foreign)
    assert done[hooked]["status"] == "completed" and done[failed]["status"] == "failed"
    wait_for(lambda: webhook_receiver.for_path(f"/ui/{tenant.tenant_id}"), what="the webhook")
    wait_for(
        lambda: httpx.get(
            f"{api_url}/v1/jobs/{hooked}/webhooks", headers={"Authorization": f"Bearer {key}"}
        ).json()["data"][0]["deliveries"],
        what="the delivery to be recorded",
    )

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:  # an alert() from an injected script would land here
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)

    # Without a session every page sends you to the login form; a wrong key is refused.
    page.goto(f"{api_url}/ui/jobs/{hooked}")
    assert page.url.endswith("/ui/login")
    page.fill("#key", "llmq_sk_not-a-key")
    page.click("button[type=submit]")
    assert "not a valid API key" in page.inner_text("[role=alert]")

    _log_in(page, api_url, key)
    cookie = next(c for c in context.cookies() if c["name"] == "llmq_ui")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert key not in cookie["value"] and key[9:] not in cookie["value"]

    rows = {r.get_attribute("data-job"): r for r in page.query_selector_all("#jobs tbody tr")}
    assert {hooked, failed, plain} <= set(rows) and foreign not in rows
    assert rows[hooked].query_selector(".status-cell").inner_text() == "completed"
    assert rows[failed].query_selector(".status-cell").inner_text() == "failed"
    assert rows[hooked].query_selector(".model").inner_text().startswith("openai/gpt-4o-mini")
    assert float(rows[hooked].query_selector(".cost").inner_text()) == pytest.approx(done[hooked]["cost_usd"])
    assert rows[plain].query_selector(".attempts").inner_text() == "1"
    assert page.query_selector("th:has-text('Tenant')") is None  # a tenant sees only its own
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-jobs.png"), full_page=True)

    # Filter by status; page two at a time.
    page.click(".filters a:has-text('failed')")
    assert [r.get_attribute("data-job") for r in page.query_selector_all("#jobs tbody tr")] == [failed]
    page.goto(f"{api_url}/ui?limit=2")
    first = [r.get_attribute("data-job") for r in page.query_selector_all("#jobs tbody tr")]
    page.click("#older")
    second = [r.get_attribute("data-job") for r in page.query_selector_all("#jobs tbody tr")]
    assert first == [plain, failed] and second == [hooked] and page.query_selector("#older") is None

    # One job: its prompt as text, its attempts, its webhook deliveries.
    page.goto(f"{api_url}/ui")
    page.click(f"a[href='/ui/jobs/{hooked}']")
    page.wait_for_selector("#attempts")
    assert page.inner_text("pre.prompt") == XSS  # shown, not run
    assert page.title() != "pwned" and not dialogs and page.query_selector("main script, main b") is None
    assert [c.inner_text() for c in page.query_selector_all("#attempts .outcome")] == ["success"]
    assert page.inner_text("#deliveries .delivery-status") == "204"
    assert "job.completed" in page.inner_text("#deliveries")
    page.screenshot(path=str(ARTIFACTS / "ui-job.png"), full_page=True)
    page.goto(f"{api_url}/ui/jobs/{failed}")
    assert "invalid_request" in page.inner_text("#summary") or "bad request" in page.inner_text("#attempts")

    # Another tenant's job is not there for you (an HTML 404, not the API's JSON).
    response = page.goto(f"{api_url}/ui/jobs/{foreign}")
    assert response.status == 404 and response.headers["content-type"].startswith("text/html")
    assert "No job" in page.inner_text("h1")
    assert page.goto(f"{api_url}/ui/nothing-here").status == 404

    # Log out: the session is over.
    page.goto(f"{api_url}/ui")
    page.click("text=Log out")
    page.wait_for_url("**/ui/login")
    page.goto(f"{api_url}/ui")
    assert page.url.endswith("/ui/login")
    context.close()

    # The admin token: every tenant's jobs, with a tenant column.
    admin = browser.new_context()
    page = admin.new_page()
    _log_in(page, api_url, ADMIN_TOKEN)
    rows = {r.get_attribute("data-job"): r for r in page.query_selector_all("#jobs tbody tr")}
    assert {hooked, foreign} <= set(rows)
    assert rows[foreign].query_selector(".tenant").inner_text() == other.tenant
    assert page.goto(f"{api_url}/ui/jobs/{foreign}").status == 200
    admin.close()


def test_login_and_logout_posts_need_their_csrf_token(api_url: str, tenant: IssuedKey) -> None:
    with httpx.Client(base_url=api_url) as client:
        assert client.post("/ui/login", data={"key": tenant.api_key}).status_code == 400
        assert client.post("/ui/login", data={"key": tenant.api_key, "csrf": "forged"}).status_code == 400
        form = client.get("/ui/login")  # each form comes with its own token (and cookie)
        csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        logged = client.post("/ui/login", data={"key": tenant.api_key, "csrf": csrf})
        assert logged.status_code == 303 and "llmq_ui" in logged.cookies
        assert client.get("/ui").status_code == 200
        assert client.get("/ui?status=bogus").status_code == 422
        assert client.post("/ui/logout", data={"csrf": "forged"}).status_code == 400
        assert client.get("/ui").status_code == 200  # still logged in
