"""The dashboard through Starlette's test client, on every transport: the JSON under
/api/, the pages' escaping, the CSRF check on every changing POST, pages of 100."""

from __future__ import annotations

import re
import time

import markupsafe
import pytest
from starlette.testclient import TestClient

from asynctask.settings import load_settings
from asynctask.status import StatusNotKept
from asynctask.testing.contract import SECRET
from asynctask_web.app import create_app

#: a dashboard without a token answers to loopback names only
LOCAL = "http://127.0.0.1:8080"
XSS = "<script>window.xss = 1</script>"
XSS_ERROR = "<img src=x onerror=alert(1)>"


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def fail_one(transport, queue, error=XSS_ERROR) -> str:
    with transport.consumer(queue) as consumer:
        delivery = consumer.reserve(timeout=10)
        assert delivery is not None
        consumer.fail(delivery, error)
    return delivery.id


def test_queues_waiting_failed_requeue_and_purge(web_transport, queue):
    transport = web_transport
    client = TestClient(create_app(transport), base_url=LOCAL, follow_redirects=False)
    # Given 3 tasks, the first of which failed (its payload and error hold markup)
    ids = transport.submit_tasks(queue, [{"n": 0, "note": XSS}, {"n": 1}, {"n": 2}])
    failed_id = fail_one(transport, queue)
    assert failed_id == ids[0]

    # Then /api/queues lists the queue with its counts
    listed = {q["name"]: q for q in client.get("/api/queues").json()["queues"]}
    assert listed[queue]["ready"] == 2 and listed[queue]["failed"] == 1

    # And /api/queues/<name> its waiting tasks, head first (AMQP: counts only, and why)
    detail = client.get(f"/api/queues/{queue}").json()
    assert detail["queue"]["ready"] == 2
    if transport.can_peek:
        assert [w["payload"]["n"] for w in detail["waiting"]] == [1, 2]
        assert [w["id"] for w in detail["waiting"]] == ids[1:]
    else:
        assert detail["waiting"] is None and "peek" in detail["waiting_unlisted"]

    # And /api/queues/<name>/failed the failed one with its error and attempts
    [failed] = client.get(f"/api/queues/{queue}/failed").json()["failed"]
    assert failed["id"] == failed_id and failed["payload"]["note"] == XSS
    assert failed["error"] == XSS_ERROR and failed["attempts"] == 1

    # And the failed page shows payload and error as text, never as markup
    page = client.get(f"/queues/{queue}/failed")
    assert page.status_code == 200
    assert "&lt;script&gt;window.xss = 1&lt;/script&gt;" in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert XSS not in page.text and XSS_ERROR not in page.text

    # When a requeue is posted without the CSRF value, it is refused and nothing moves
    refused = client.post(f"/queues/{queue}/failed/requeue", data={"ids": failed_id})
    assert refused.status_code == 403 and "CSRF" in refused.text
    forged = client.post(
        f"/queues/{queue}/failed/requeue",
        data={"ids": failed_id, "csrf": csrf_of(page.text)},
        headers={"Origin": "http://evil.example"},
    )
    assert forged.status_code == 403
    assert client.post(f"/queues/{queue}/failed/purge", data={"all": "1"}).status_code == 403
    assert transport.queue_stats(queue).failed == 1

    # When it is requeued with the page's CSRF value, it is ready again
    done = client.post(
        f"/queues/{queue}/failed/requeue", data={"ids": failed_id, "csrf": csrf_of(page.text)}
    )
    assert done.status_code == 303 and "requeued+1+task" in done.headers["location"]
    assert transport.failed_tasks(queue) == []
    assert transport.queue_stats(queue).ready == 3

    # And a failed task purged by id is gone, the queue's waiting tasks purged too
    second = fail_one(transport, queue, "boom")
    purge = client.post(
        f"/queues/{queue}/failed/purge", data={"ids": second, "csrf": csrf_of(page.text)}
    )
    assert purge.status_code == 303 and transport.failed_tasks(queue) == []
    assert (
        client.post(f"/queues/{queue}/purge", data={"csrf": csrf_of(page.text)}).status_code == 303
    )
    assert transport.queue_stats(queue).ready == 0


def test_lists_are_pages_of_100(web_transport, queue):
    # Given 150 waiting tasks
    web_transport.submit_tasks(queue, [{"n": n} for n in range(150)])
    client = TestClient(create_app(web_transport), base_url=LOCAL)
    # Then the queue's page lists the first 100 and says of how many
    detail = client.get(f"/api/queues/{queue}").json()
    assert detail["queue"]["ready"] == 150
    assert client.get(f"/api/queues/{queue}?limit=101").status_code == 400
    for bad in ("-1", "x", "1000001"):
        refused = client.get(f"/api/queues/{queue}?offset={bad}")
        assert refused.status_code == 400 and "offset" in refused.json()["error"]
    if web_transport.can_peek:
        assert [w["payload"]["n"] for w in detail["waiting"]] == list(range(100))
        assert detail["waiting_pages"] == {"offset": 0, "previous_offset": None, "next_offset": 100}
        # the live refresh asks for counts only
        assert client.get(f"/api/queues/{queue}?limit=0").json()["waiting"] == []
        few = client.get(f"/api/queues/{queue}?limit=3").json()["waiting"]
        assert [w["payload"]["n"] for w in few] == [0, 1, 2]
        page = client.get(f"/queues/{queue}").text
        assert "The first 100 ready task(s), head first, of 150" in page
        assert f'href="/queues/{queue}?offset=100"' in page and 'rel="prev"' not in page
        # When the next page is asked for, Then it holds the other 50, and no next page
        second = client.get(f"/api/queues/{queue}?offset=100").json()
        assert [w["payload"]["n"] for w in second["waiting"]] == list(range(100, 150))
        assert second["waiting_pages"] == {
            "offset": 100,
            "previous_offset": 0,
            "next_offset": None,
        }
        page = client.get(f"/queues/{queue}?offset=100").text
        assert "Ready tasks 101&ndash;150 of 150, head first." in page
        assert f'href="/queues/{queue}"' in page and 'rel="next"' not in page
    else:
        assert detail["waiting"] is None and "peek" in detail["waiting_unlisted"]
    web_transport.purge(queue)


def test_failed_tasks_are_pages_of_100(web_transport, queue):
    """150 failed tasks: the failed page shows 100 and a link to the next, which shows
    the other 50 and a link back. Fails against a dashboard or transport that ignores
    ``offset`` (the second page would repeat the first)."""
    # Given 150 failed tasks
    web_transport.submit_tasks(queue, [{"n": n} for n in range(150)])
    with web_transport.consumer(queue, prefetch=10) as consumer:
        for _ in range(150):
            delivery = consumer.reserve(timeout=10)
            assert delivery is not None
            consumer.fail(delivery, "boom")
    client = TestClient(create_app(web_transport), base_url=LOCAL)
    # Then the first page has 100, oldest first, and the next starts at 100
    first = client.get(f"/api/queues/{queue}/failed").json()
    assert [f["payload"]["n"] for f in first["failed"]] == list(range(100))
    assert first["failed_pages"]["next_offset"] == 100
    # And the second the other 50, with none after it
    second = client.get(f"/api/queues/{queue}/failed?offset=100").json()
    assert [f["payload"]["n"] for f in second["failed"]] == list(range(100, 150))
    assert second["failed_pages"] == {"offset": 100, "previous_offset": 0, "next_offset": None}
    page = client.get(f"/queues/{queue}/failed?offset=100").text
    assert "Failed tasks 101&ndash;150 of 150, oldest first." in page
    assert page.count("<tr data-task=") == 50
    assert web_transport.purge_failed(queue) == 150


def test_tasks_in_flight_are_listed_with_holder_and_time(web_transport, queue):
    """A task a consumer holds shows in the queue's page and API with who holds it and
    since when; AMQP, which cannot list them, says why. Fails against a dashboard that
    only counts the tasks in flight."""
    client = TestClient(create_app(web_transport), base_url=LOCAL)
    # Given a task held by a consumer that started it, and one waiting
    ids = web_transport.submit_tasks(queue, [{"n": 1, "note": XSS}, {"n": 2}])
    with web_transport.consumer(queue) as consumer:
        delivery = consumer.reserve(timeout=10)
        assert delivery is not None and delivery.id == ids[0]
        consumer.start(delivery)
        detail = client.get(f"/api/queues/{queue}").json()
        listed = client.get(f"/api/queues/{queue}/in-flight").json()
        page = client.get(f"/queues/{queue}").text
        held_page = client.get(f"/queues/{queue}/in-flight").text
        consumer.ack(delivery)
    if not web_transport.can_list_in_flight:
        # Then a transport that cannot list them says why, on the page too
        assert detail["in_flight"] is None and "in_flight" in detail["in_flight_unlisted"]
        assert listed["in_flight"] is None
        assert "not listed: " in page and "in_flight" in page
        assert "not listed: " in held_page
        return
    # Then the held task is listed, with its holder, in the API and on both pages
    [held] = detail["in_flight"]
    assert held["id"] == ids[0] and held["attempt"] == 1 and held["payload"]["n"] == 1
    assert held["holder"] and listed["in_flight"] == detail["in_flight"]
    assert listed["in_flight_pages"] == {"offset": 0, "previous_offset": None, "next_offset": None}
    for html in (page, held_page):
        assert 'id="in-flight"' in html and f'data-task="{ids[0]}"' in html
        assert str(markupsafe.escape(held["holder"])) in html
        assert XSS not in html and "&lt;script&gt;" in html
    if web_transport.can_peek:  # and the waiting one is waiting, not in flight
        assert [w["id"] for w in detail["waiting"]] == [ids[1]]
    web_transport.purge(queue)


def test_task_page_shows_the_task_status(web_transport, queue):
    client = TestClient(create_app(web_transport), base_url=LOCAL)
    task_id = web_transport.submit_task(queue, {"n": 1})
    response = client.get(f"/api/tasks/{task_id}")
    try:
        web_transport.status(task_id)
    except StatusNotKept:
        # a transport that keeps no status yet: said so, naming the setting, not a crash
        assert response.status_code == 501 and "asynctask_state" in response.json()["error"]
        assert client.get(f"/tasks/{task_id}").status_code == 501
    else:
        assert response.status_code == 200, response.text
        assert response.json()["task"]["state"] == "queued"
        assert response.json()["task"]["queue"] == queue
        page = client.get(f"/tasks/{task_id}")
        assert page.status_code == 200 and "queued" in page.text
        assert client.get("/api/tasks/" + "0" * 32).status_code == 404
    web_transport.purge(queue)


@pytest.fixture
def localmem():
    from asynctask.transports.localmem import LocalMemTransport

    transport = LocalMemTransport("localmem:")
    yield transport
    transport.close()


def test_bad_queue_name_is_a_400_naming_the_rule(localmem):
    client = TestClient(create_app(localmem), base_url=LOCAL)
    response = client.get("/api/queues/Not-A-Queue")
    assert response.status_code == 400 and "Not-A-Queue" in response.json()["error"]


def test_token_cookie_and_bearer(localmem):
    token = "t0ken-for-the-web-test"
    client = TestClient(create_app(localmem, token=token), base_url=LOCAL, follow_redirects=False)
    # Without the token, nothing is shown
    assert client.get("/").status_code == 401
    assert client.get("/api/queues").status_code == 401
    assert client.get("/?token=wrong-token-wrong").status_code == 401
    # A browser gives it once: redirected to the page without it, holding a cookie
    first = client.get("/queues/abc?token=" + token)
    assert first.status_code == 303 and first.headers["location"] == "/queues/abc"
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and token not in cookie
    assert client.get("/").status_code == 200
    # An API client sends it as a bearer token (and needs no CSRF value)
    api = TestClient(create_app(localmem, token=token))  # any host name, given the token
    assert api.get("/api/queues", headers={"Authorization": "Bearer nope"}).status_code == 401
    bearer = {"Authorization": f"Bearer {token}"}
    assert api.get("/api/queues", headers=bearer).status_code == 200
    posted = api.post("/queues/abc/failed/purge", data={"all": "1"}, headers=bearer)
    assert posted.status_code == 200 and posted.json() == {"done": "purged 0 task(s)"}


def test_without_a_token_only_loopback_names_are_answered(localmem):
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 would be
    same-origin with the dashboard; its requests carry Host: evil.example and are refused.
    Fails against a dashboard that answers any Host."""
    app = create_app(localmem)
    for base in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"):
        assert TestClient(app, base_url=base).get("/api/queues").status_code == 200
    for base in ("http://evil.example:8080", "http://127.0.0.1.evil.example"):
        refused = TestClient(app, base_url=base).get("/api/queues")
        assert refused.status_code == 421 and "--token" in refused.text


def test_security_headers_forbid_framing_and_foreign_scripts(localmem):
    response = TestClient(create_app(localmem), base_url=LOCAL).get("/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["x-frame-options"] == "DENY"


def test_settings_and_plugins_pages_hide_passwords(localmem):
    settings = load_settings(
        overrides=[
            f"asynctask_transport=redis://:{SECRET}@127.0.0.1:6379/0",
            "asynctask_web_token=web-token-that-is-secret",
            "asynctask_signing_key=signing-key-that-is-secret",
        ]
    )
    client = TestClient(create_app(localmem, settings=settings), base_url=LOCAL)
    for path in ("/settings", "/api/settings"):
        text = client.get(path).text
        assert "asynctask_transport" in text and "redis://" in text
        assert SECRET not in text and "that-is-secret" not in text
    plugins = client.get("/api/plugins").json()["plugins"]
    names = {p["name"] for p in plugins}
    # a transport is listed by its URI schemes (redis's grew redis+cluster and redis+sentinel)
    assert "localmem:" in names and any("rediss:" in n for n in names), names
    assert "rediss:" in client.get("/plugins").text
    distributions = client.get("/api/plugins").json()["distributions"]
    assert {"asynctask-core", "asynctask-web"} <= {d["name"] for d in distributions}


def test_schedules_show_their_next_firing(localmem):
    settings = load_settings(
        overrides=['asynctask_scheduled_workers=[{"worker": "test_record", "minute": "*/5"}]']
    )
    client = TestClient(create_app(localmem, settings=settings), base_url=LOCAL)
    [entry] = client.get("/api/schedules").json()["schedules"]
    assert entry["name"] == "test_record" and entry["queue"] == "scheduled_test_record"
    assert entry["next"] and entry["schedule"] == {"minute": "*/5"}
    page = client.get("/schedules").text
    assert entry["next"] in page and "scheduled_test_record" in page


def test_rates_come_from_the_workers_metrics(localmem):
    """processed/s and failed/s per queue, read from a metrics endpoint as asynctask top
    reads it; without one the page says where rates would come from."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    served = {"n": 0}

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            served["n"] += 1
            done, failed = 100 * served["n"], 10 * served["n"]
            body = (
                "# HELP asynctask_tasks_total Attempts.\n# TYPE asynctask_tasks_total counter\n"
                f'asynctask_tasks_total{{queue="mail",worker="w",outcome="succeeded"}} {done}\n'
                f'asynctask_tasks_total{{queue="mail",worker="w",outcome="failed"}} {failed}\n'
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        localmem.submit_task("mail", {})
        client = TestClient(create_app(localmem, metrics_urls=[url]), base_url=LOCAL)
        first = client.get("/api/queues").json()
        assert first["queues"][0]["processed_per_second"] is None  # one sample so far
        assert url in first["rates"]
        time.sleep(1.1)
        [row] = client.get("/api/queues").json()["queues"]
        # 110 attempts ended (10 of them failed) in about 1.1 s
        assert 60 < row["processed_per_second"] < 115, (row, served)
        assert 6 < row["failed_per_second"] < 11.5, row
    finally:
        server.shutdown()
        server.server_close()
    plain = TestClient(create_app(localmem), base_url=LOCAL).get("/api/queues").json()
    assert "--metrics-port" in plain["rates"]


def test_a_backend_that_is_away_is_a_503_saying_so_and_the_dashboard_stays_up():
    from asynctask.testing.contract import open_transport
    from support import free_port

    transport = open_transport(f"redis://127.0.0.1:{free_port()}/0?retry_timeout=0.3")
    try:
        client = TestClient(create_app(transport), base_url=LOCAL)
        response = client.get("/api/queues")
        assert response.status_code == 503 and "unreachable" in response.json()["error"]
        page = client.get("/queues/some_queue/failed")
        assert page.status_code == 503 and "unreachable" in page.text
    finally:
        transport.close()
