"""The dashboard in a real headless Chromium (Debian's, driven by Playwright through
``executable_path``: no browser download), served by a real ``asynctask web`` process,
with real ``asynctask workers``.

Skipped when Chromium is missing, failed instead in CI (ASYNCTASK_REQUIRE_SERVICES=1).
With ASYNCTASK_SCREENSHOTS=1 the screenshots go to docs/ (the README shows them), else
to the test's scratch folder.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asynctask.testing import require_service
from asynctask.testing.contract import open_transport
from support import events, wait_for
from tests.web.server import WebServer

CHROMIUM = os.environ.get("ASYNCTASK_CHROMIUM", "/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs"
XSS = "<script>window.xss = 1</script><img src=x onerror='window.xss = 2'>"


def expect(locator: Any) -> Any:
    """Playwright's ``expect``: it waits without evaluating strings (our CSP forbids eval)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _check_chromium() -> None:
    import playwright.sync_api  # noqa: F401

    if shutil.which(CHROMIUM) is None:
        raise FileNotFoundError(f"{CHROMIUM} (apt-get install chromium)")


@pytest.fixture
def uri(tmp_path) -> str:
    return f"filesys:{tmp_path / 'queues'}"


@pytest.fixture
def browser() -> Iterator[Any]:
    require_service("chromium", _check_chromium)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    return DOCS if os.environ.get("ASYNCTASK_SCREENSHOTS") == "1" else tmp_path


@pytest.fixture
def web(uri, tmp_path) -> Iterator[WebServer]:
    server = WebServer(uri, tmp_path)
    yield server
    server.stop()


def test_live_counts_requeue_from_the_failed_list_and_escaping(
    web, uri, page, start_workers, tmp_path, shots
):
    transport = open_transport(uri)
    queue, other = "emails", "thumbnails"
    ledger = tmp_path / "ledger.jsonl"
    # Given a queue with 2 waiting tasks, on the queues page
    transport.submit_tasks(other, [{"n": n} for n in range(2)])
    page.goto(web.url + "/")
    cell = f'tr[data-queue="{other}"] td[data-count="ready"]'
    assert page.inner_text(cell) == "2"
    page.evaluate("window.notReloaded = true")
    # When another task is submitted, Then its count changes on the page without a reload
    transport.submit_task(other, {"n": 2})
    expect(page.locator(cell)).to_have_text("3", timeout=10_000)
    assert page.evaluate("window.notReloaded") is True

    # Given a task of another queue whose payload and error hold markup, now failed
    task_id = transport.submit_task(queue, {"ledger": str(ledger), "n": 7, "note": XSS})
    with transport.consumer(queue) as consumer:
        delivery = consumer.reserve(timeout=10)
        assert delivery is not None
        consumer.fail(delivery, "RuntimeError: <b>no luck</b> " + XSS)
    failed_cell = f'tr[data-queue="{queue}"] td[data-count="failed"]'
    expect(page.locator(failed_cell)).to_have_text("1", timeout=10_000)
    page.screenshot(path=str(shots / "web-queues.png"))

    # When the failed list is opened from the queues page
    page.click(f"{failed_cell} a")
    page.wait_for_url(f"**/queues/{queue}/failed")
    row = page.locator(f'tr[data-task="{task_id}"]')
    # Then payload and error show as text: nothing ran
    assert "<script>window.xss = 1</script>" in row.inner_text()
    assert "<b>no luck</b>" in row.inner_text()
    assert page.evaluate("typeof window.xss") == "undefined"
    assert page.locator("table#failed script, table#failed img").count() == 0
    page.screenshot(path=str(shots / "web-failed.png"), full_page=True)

    # And a POST without the CSRF value is refused, from this very page
    status = page.evaluate(
        """async (url) => (await fetch(url, {method: "POST", body: "all=1",
              headers: {"Content-Type": "application/x-www-form-urlencoded"}})).status""",
        f"/queues/{queue}/failed/purge",
    )
    assert status == 403
    assert transport.queue_stats(queue).failed == 1

    # When Requeue is clicked, with workers serving the queue
    start_workers(uri, {queue: "test_record"})
    row.locator("button.requeue").click()
    page.wait_for_url(f"**/queues/{queue}/failed?notice=*")
    assert "requeued 1 task(s)" in page.inner_text(".notice")
    # Then the task is processed: the worker ran it, and the queue's page shows it gone
    wait_for(lambda: events(ledger, "done"), 60, "the requeued task to run")
    page.goto(f"{web.url}/queues/{queue}")
    for name in ("ready", "in_flight", "failed"):
        expect(page.locator(f'#queue td[data-count="{name}"]')).to_have_text("0", timeout=15_000)
    transport.close()


def test_queue_page_lists_waiting_tasks(web, uri, page, shots):
    transport = open_transport(uri)
    transport.submit_tasks(
        "reports",
        [{"report": "monthly", "month": m, "to": "ops@example.com"} for m in range(1, 6)],
    )
    page.goto(web.url + "/queues/reports")
    assert page.locator("table.tasks tbody tr").count() == 5
    assert '"month": 1' in page.locator("table.tasks tbody tr").first.inner_text()
    page.screenshot(path=str(shots / "web-queue.png"), full_page=True)
    # A purge asks first: dismissed, nothing goes; accepted, the waiting tasks go
    answers: list[str] = []
    page.on("dialog", lambda dialog: dialog.dismiss() if not answers else dialog.accept())
    page.evaluate("window.stayed = true")
    page.click("text=Purge the waiting tasks")
    page.wait_for_timeout(500)  # a form sent anyway would have left the page by then
    assert page.evaluate("window.stayed") is True
    assert transport.queue_stats("reports").ready == 5
    answers.append("yes")
    page.click("text=Purge the waiting tasks")
    page.wait_for_url("**/queues/reports?notice=*")
    assert "purged 5 waiting task(s)" in page.inner_text(".notice")
    assert transport.queue_stats("reports").ready == 0
    transport.close()


def test_token_given_once_then_a_cookie(uri, tmp_path, page):
    token = "browser-test-token-0123"
    server = WebServer(uri, tmp_path, "--token", token)
    try:
        response = page.goto(server.url + "/")
        assert response is not None and response.status == 401
        page.goto(server.url + "/?token=" + token)
        assert page.url == server.url + "/"  # the token left the address bar
        assert page.inner_text("h1") == "Queues"
        page.goto(server.url + "/settings")
        assert token not in page.content()
    finally:
        server.stop()


def test_failed_list_pages_through_150_tasks(web, uri, page, shots):
    """150 failed tasks: the failed page shows 100, "next" shows the other 50, "previous"
    goes back. Fails against a dashboard without paging (one page of 100, no link)."""
    transport = open_transport(uri)
    queue = "imports"
    # Given 150 failed tasks
    transport.submit_tasks(queue, [{"file": f"batch-{n:03d}.csv"} for n in range(150)])
    with transport.consumer(queue, prefetch=10) as consumer:
        for _ in range(150):
            delivery = consumer.reserve(timeout=10)
            assert delivery is not None
            consumer.fail(delivery, f"ValueError: bad row in {delivery.payload['file']}")
    # When the failed list is opened, Then it shows the oldest 100 and a link to the next
    page.goto(f"{web.url}/queues/{queue}/failed")
    rows = page.locator("table#failed tbody tr")
    assert rows.count() == 100
    assert "batch-000.csv" in rows.first.inner_text()
    assert "batch-099.csv" in rows.last.inner_text()
    assert page.locator("nav.pager a.previous").count() == 0
    # When "next" is clicked, Then the other 50 show, the newest last
    page.locator("nav.pager a.next").first.click()
    page.wait_for_url(f"**/queues/{queue}/failed?offset=100")
    assert rows.count() == 50
    assert "batch-100.csv" in rows.first.inner_text()
    assert "batch-149.csv" in rows.last.inner_text()
    assert "Failed tasks 101\u2013150 of 150" in page.inner_text("main")  # an en dash
    assert page.locator("nav.pager a.next").count() == 0
    page.screenshot(path=str(shots / "web-failed-page-2.png"))
    # And "previous" goes back to the first 100
    page.locator("nav.pager a.previous").first.click()
    page.wait_for_url(f"**/queues/{queue}/failed")
    assert rows.count() == 100
    transport.close()


def test_a_task_held_by_a_running_worker_shows_in_flight(
    web, uri, page, start_workers, tmp_path, shots
):
    """A worker runs a slow task: the queue's page lists it in flight, with the worker's
    owner id (its host) and since when; the waiting ones stay in the waiting list. Fails
    against a page that only counts the tasks in flight."""
    transport = open_transport(uri)
    queue = "videos"
    ledger = tmp_path / "ledger.jsonl"
    # Given a worker running a long task, and two tasks waiting behind it
    running_id = transport.submit_task(
        queue, {"ledger": str(ledger), "video": "intro.mp4", "seconds": 60}
    )
    transport.submit_tasks(queue, [{"video": "outro.mp4"}, {"video": "trailer.mp4"}])
    start_workers(uri, {queue: "test_record"})
    wait_for(lambda: events(ledger, "start"), 60, "the worker to start the long task")
    # When the queue's page is opened
    page.goto(f"{web.url}/queues/{queue}")
    # Then the task shows in flight: its id, attempt 1, its holder and since when
    row = page.locator(f'table#in-flight tr[data-task="{running_id}"]')
    expect(row).to_have_count(1, timeout=10_000)
    cells = row.locator("td")
    assert cells.nth(1).inner_text() == "1"
    holder = cells.nth(2).inner_text()
    [held] = transport.in_flight(queue)
    assert held.id == running_id and holder == held.holder
    assert socket.gethostname().split(".")[0][:20] in holder  # the worker's host
    expect(cells.nth(3)).not_to_have_text("not started", timeout=10_000)
    assert "intro.mp4" in cells.nth(4).inner_text()
    # And the live count says 1 in flight, the others wait in the waiting list
    expect(page.locator('#queue td[data-count="in_flight"]')).to_have_text("1")
    waiting = page.locator("table.tasks:not(#in-flight) tbody tr")
    assert waiting.count() == 2 and "outro.mp4" in waiting.first.inner_text()
    page.screenshot(path=str(shots / "web-in-flight.png"), full_page=True)
    transport.close()
