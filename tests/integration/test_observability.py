"""What operators see: /metrics that move, /readyz with workers, signed webhooks, Flower."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aiintegration.commands.webhooks import check_target, sign
from aiintegration.errors import ValidationError
from aiintegration.logs import JsonFormatter
from tests.support import Worker, wait_for, wait_status

SECRET = "whsec-test-0123456789"


@pytest.fixture(scope="module", autouse=True)
def worker(db):
    env = {"AII_WEBHOOK_ALLOW_PRIVATE": "1", "AII_WEBHOOK_SECRET": SECRET,
           "AII_PRICES": '{"local": {"input_per_1k": 1.0, "output_per_1k": 2.0}}'}
    with Worker(db, concurrency=4, env=env) as w:
        yield w


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def submit(client, auth, **options):
    body = {"task_type": "text_generation", "request_content": {"prompt": "metrics"}, "requested_by": "ops",
            "options": options}
    return client.post("/v1/tasks", json=body, headers=auth).json["id"]


def test_metrics_expose_the_named_series_and_move_after_a_task_runs(client, auth, ctx):
    before = client.get("/metrics").get_data(as_text=True)
    wait_status(ctx, submit(client, auth), ["succeeded"])
    # The task counters move with the state change; histograms and usage counters within the
    # worker's flush interval (AII_METRICS_FLUSH_S, 0.1 s here).

    def moved() -> str | None:
        text = client.get("/metrics").get_data(as_text=True)
        return text if metric(text, "aii_cost_total", provider="local") > metric(before, "aii_cost_total",
                                                                              provider="local") else None
    after = wait_for(moved, timeout_s=5, what="the worker's buffered metrics")
    finished = {"status": "succeeded", "task_type": "text_generation", "provider": "local"}
    assert metric(after, "aii_tasks_created_total", task_type="text_generation") == \
        metric(before, "aii_tasks_created_total", task_type="text_generation") + 1
    assert metric(after, "aii_tasks_finished_total", **finished) == metric(before, "aii_tasks_finished_total",
                                                                           **finished) + 1
    assert metric(after, "aii_task_duration_seconds_count", status="succeeded", task_type="text_generation") >= 1
    assert metric(after, "aii_tokens_total", direction="output", provider="local") > 0
    for name in ("aii_queue_depth", "aii_dlq_size", "aii_provider_breaker_state", "aii_task_queue_wait_seconds_bucket",
                 "aii_provider_call_seconds_bucket", "aii_tasks{"):
        assert name in after, name
    assert metric(after, "aii_workers_alive") >= 1


def test_readyz_reports_redis_and_live_workers(client):
    body = wait_for(lambda: (r := client.get("/readyz").json)["checks"].get("workers", "").endswith("alive") and r,
                    what="a live worker")
    assert body["status"] == "ready" and body["checks"]["redis"] == "ok"


class Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_webhook_arrives_signed_on_the_terminal_state(client, auth, ctx):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        task_id = submit(client, auth, callback_url=url)
        wait_for(lambda: Receiver.received, timeout_s=15, what="the webhook")
    finally:
        server.shutdown()
    headers, body = Receiver.received[0]
    assert headers["x-aii-signature"] == sign(SECRET, headers["x-aii-timestamp"], body)
    assert headers["x-aii-signature"] != sign("wrong-secret", headers["x-aii-timestamp"], body)
    event = json.loads(body)
    assert event["event"] == "task.succeeded" and event["task"]["id"] == task_id


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://localhost/x", "http://10.0.0.1/x",
                                 "http://169.254.169.254/latest", "ftp://example.com/x"])
def test_private_and_loopback_callback_targets_are_refused_by_default(url):
    with pytest.raises(ValidationError):
        check_target(url, allow_private=False)


def test_json_logs_carry_task_fields_and_mask_secrets():
    import logging

    record = logging.LogRecord("aiintegration", logging.INFO, __file__, 1,
                               "calling with sk-test-SECRETKEY1234567890", None, None)
    record.task_id = "t-1"
    line = json.loads(JsonFormatter().format(record))
    assert line["task_id"] == "t-1" and "SECRETKEY1234567890" not in line["message"]


def test_a_finished_record_stays_compact_on_the_recommended_server_settings(client, auth, ctx):
    resp = client.post("/v1/tasks", headers=auth, json={
        "task_type": "text_generation", "request_content": {"prompt": "Describe a blue ceramic mug in two lines."},
        "requested_by": "memory-check"})
    task_id = resp.json["id"]
    wait_status(ctx, task_id, ["succeeded"])
    r = ctx.tasks.r
    assert r.object("encoding", f"aii:task:{task_id}") == "listpack"
    record_bytes = r.memory_usage(f"aii:task:{task_id}", samples=0)
    stream_bytes = r.memory_usage(f"aii:events:task:{task_id}", samples=0)
    # On Redis/Valkey defaults these are ~1.9 KiB and ~4.3 KiB (bench/memory_and_sweeps.py).
    assert record_bytes < 1400 and stream_bytes < 1600, (record_bytes, stream_bytes)


def test_the_worker_warns_when_the_server_is_not_tuned(ctx, caplog):
    from aiintegration.store.redis_client import RECOMMENDED_SERVER_CONFIG, check_server_config

    r = ctx.tasks.r
    # the suite's own server runs without persistence: the one thing it is told
    assert [w.split(" (")[0] for w in check_server_config(r)] == ["Redis runs without persistence"]
    r.config_set("stream-node-max-bytes", 4096)
    r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with caplog.at_level("WARNING"):
            warnings = check_server_config(r)
    finally:
        r.config_set("stream-node-max-bytes", RECOMMENDED_SERVER_CONFIG["stream-node-max-bytes"])
        r.config_set("maxmemory-policy", "noeviction")
    assert len(warnings) == 3 and "stream-node-max-bytes is 4096" in warnings[0]
    assert "maxmemory-policy is allkeys-lru" in warnings[2]
    assert all(w in caplog.text for w in warnings)
