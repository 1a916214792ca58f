"""Submission to result through the REST API, the Redis store and a real Celery worker."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest

from tests.support import Worker, events_of, wait_for, wait_status


@pytest.fixture(scope="module", autouse=True)
def worker(db):
    with Worker(db, concurrency=8) as w:
        yield w


def submit(client, auth, **overrides):
    body = {"task_type": "text_generation", "request_content": {"prompt": "Tell me about ducks"},
            "requested_by": "catalog-service", **overrides}
    return client.post("/v1/tasks", json=body, headers=auth)


def test_a_text_task_goes_from_submission_to_a_local_result(client, auth, ctx):
    resp = submit(client, auth, metadata={"order": 42})
    assert resp.status_code == 202, resp.json
    task_id = resp.json["id"]
    assert resp.json["status"] == "queued"
    wait_status(ctx, task_id, ["succeeded"], timeout_s=10)
    record = client.get(f"/v1/tasks/{task_id}", headers=auth).json
    assert record["status"] == "succeeded"
    assert record["result"]["provider"] == "local"
    assert record["result"]["text"]
    assert record["result"]["usage"]["output_tokens"] > 0
    assert record["metadata"] == {"order": 42}
    assert record["attempts"] == 1
    assert record["created_at"].endswith("Z") and record["finished_at"].endswith("Z")
    assert record["error"] is None
    kinds = [e["type"] for e in events_of(ctx, task_id)]
    assert kinds == ["task.created", "task.started", "task.succeeded"]


def test_the_local_provider_is_deterministic(client, auth, ctx):
    ids = [submit(client, auth, request_content={"prompt": "same words"}).json["id"] for _ in range(2)]
    texts = [wait_status(ctx, i, ["succeeded"]).result["text"] for i in ids]
    assert texts[0] == texts[1]


def test_an_image_task_returns_a_png(client, auth, ctx):
    resp = submit(client, auth, task_type="image_generation", request_content={"prompt": "a red square"})
    record = wait_status(ctx, resp.json["id"], ["succeeded"])
    png = base64.b64decode(record.result["images"][0]["b64_png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_a_chat_completion_task_answers(client, auth, ctx):
    content = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
    resp = submit(client, auth, task_type="chat_completion", request_content=content)
    assert wait_status(ctx, resp.json["id"], ["succeeded"]).result["finish_reason"] == "stop"


def test_a_repeated_idempotency_key_returns_the_first_task(client, auth, ctx):
    headers = {**auth, "Idempotency-Key": "order-7781"}
    first = client.post("/v1/tasks", json={"task_type": "text_generation", "request_content": {"prompt": "x"},
                                           "requested_by": "svc"}, headers=headers)
    again = client.post("/v1/tasks", json={"task_type": "text_generation", "request_content": {"prompt": "x"},
                                           "requested_by": "svc"}, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json["id"] == first.json["id"]
    items = client.get("/v1/tasks?requested_by=svc&limit=50", headers=auth).json["items"]
    assert [i["id"] for i in items].count(first.json["id"]) == 1
    assert len(items) == 1


def test_listing_is_newest_first_and_paginates_without_gaps(client, auth, ctx):
    ids = [submit(client, auth, requested_by="lister").json["id"] for _ in range(7)]
    seen, cursor = [], None
    while True:
        url = "/v1/tasks?requested_by=lister&limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=auth).json
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))


def test_another_service_can_submit_with_send_task_by_name(ctx):
    from celery import Celery

    # A plain client of another service: no shared config, only the broker URL.
    url = ctx.settings.redis_url
    celery = Celery("billing-service", broker=url, backend=url, set_as_current=False)
    async_result = celery.send_task("aiintegration.create_generation_task", kwargs={
        "task_type": "text_generation", "request_content": {"prompt": "from another service"},
        "requested_by": "billing-service", "priority": 7})
    reply = async_result.get(timeout=10)
    assert reply["ok"] is True
    assert wait_status(ctx, reply["id"], ["succeeded"]).priority == 7


def test_a_task_sent_by_name_takes_one_broker_hop_like_a_rest_submission(ctx, worker):
    """The record is named after the create message and its first attempt runs there: no
    second process_task message (the reply still comes back before the attempt ends)."""
    from tests.support import celery_for

    ctx.providers.put(ctx.providers.get("local").with_changes(extra={"latency_ms": 1500}))
    try:
        started = time.monotonic()
        sent = celery_for(ctx.settings.redis_url).send_task("aiintegration.create_generation_task", kwargs={
            "task_type": "text_generation", "request_content": {"prompt": "one hop"}, "requested_by": "svc"})
        reply = sent.get(timeout=10)
        replied_after = time.monotonic() - started
        assert reply["ok"] and reply["created"] and reply["id"] == sent.id
        assert replied_after < 1.2, f"the reply waited for the attempt ({replied_after:.2f}s)"
        record = wait_status(ctx, reply["id"], ["succeeded"])
        assert record.attempts == 1 and record.worker_id
        assert f"aiintegration.process_task[{reply['id']}" not in worker.output()
        celery_for(ctx.settings.redis_url).send_task(  # the same message again (a redelivery): found, not made twice
            "aiintegration.create_generation_task", task_id=sent.id, kwargs={
                "task_type": "text_generation", "request_content": {"prompt": "one hop"}, "requested_by": "svc"})
        done = f"aiintegration.create_generation_task[{sent.id}] succeeded"
        wait_for(lambda: worker.output().count(done) == 2, what="the second delivery to be handled")
        assert [e["type"] for e in events_of(ctx, reply["id"])].count("task.created") == 1
        assert ctx.tasks.get(reply["id"]).attempts == 1
    finally:
        ctx.providers.put(ctx.providers.get("local").with_changes(extra={}))


def test_a_task_sent_by_name_stores_its_reply_once(ctx, worker):
    """Stored before the attempt runs (a caller waiting on it has it at once); Celery's own
    store after the task returns, which would only read the stored reply back, is skipped."""
    from tests.support import Monitor, celery_for

    task_id = str(uuid.uuid4())
    with Monitor(ctx.tasks.r) as monitor:
        celery_for(ctx.settings.redis_url).send_task("aiintegration.create_generation_task", task_id=task_id, kwargs={
            "task_type": "text_generation", "request_content": {"prompt": "once"}, "requested_by": "svc"})
        wait_status(ctx, task_id, ["succeeded"])
        wait_for(lambda: f"aiintegration.create_generation_task[{task_id}] succeeded" in worker.output(),
                 what="the create task to end")
    key = f"celery-task-meta-{task_id}"
    on_reply = [args[0] for _, args in monitor.commands if key in args and args[0] not in ("SUBSCRIBE", "UNSUBSCRIBE")]
    assert on_reply == ["GET", "SETEX", "PUBLISH"], on_reply  # Celery's check, the reply and its notice
    # The record is stored with its first attempt claimed: CREATE, then the finishing TRANSITION, no CLAIM
    # (the state-changing scripts are the ones that take the global event stream; a lease renewal does not)
    scripts = {args[1] for _, args in monitor.commands
               if args[0] == "EVALSHA" and f"aii:task:{task_id}" in args and "aii:events" in args}
    assert len(scripts) == 2, scripts
    assert [e["type"] for e in events_of(ctx, task_id)] == ["task.created", "task.started", "task.succeeded"]
    assert ctx.tasks.get(task_id).attempts == 1


def test_send_task_with_bad_input_gets_a_clear_error_back(ctx):
    from tests.support import celery_for

    reply = celery_for(ctx.settings.redis_url).send_task("aiintegration.create_generation_task", kwargs={
        "task_type": "video", "request_content": {"prompt": "x"}, "requested_by": "svc"}).get(timeout=10)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "validation_error" and "task_type" in reply["error"]["details"]


def test_a_stored_record_survives_a_json_round_trip_unchanged(client, auth, ctx):
    content = {"prompt": "ünïcödé ✓ \"quotes\" \n newline", "max_tokens": 5}
    meta = {"nested": {"list": [], "empty": {}, "n": 1.5, "flag": False}}
    resp = submit(client, auth, request_content=content, metadata=meta)
    record = client.get(f"/v1/tasks/{resp.json['id']}", headers=auth).json
    assert record["request_content"] == content
    assert json.dumps(record["metadata"], sort_keys=True) == json.dumps(meta, sort_keys=True)


def test_retrying_a_succeeded_or_cancelled_task_is_a_409_with_its_status(client, auth, ctx):
    done = submit(client, auth).json["id"]
    wait_status(ctx, done, ["succeeded"])
    resp = client.post(f"/v1/tasks/{done}/retry", json={"retry_reason": "again"}, headers=auth)
    assert resp.status_code == 409 and resp.json["error"]["details"]["status"] == "succeeded"
    assert client.post(f"/v1/tasks/{done}/retry", json={}, headers=auth).status_code == 422


def _command_calls(redis_client, name: str) -> int:
    return int(redis_client.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))


def test_a_submission_publishes_without_result_subscriptions_or_a_client_per_command(client, auth, ctx):
    """Costs found by bench/submit_latency.py: Celery's send_task SUBSCRIBEs to a result
    channel unless told the result is ignored, and kombu builds a redis.Redis per command."""
    import redis

    from aiintegration.kombu_transport import Transport
    from tests.support import celery_for

    conn = celery_for(ctx.settings.redis_url).connection_for_write()
    assert type(conn.transport) is Transport and conn.as_uri().startswith("redis://")
    built = 0
    original = redis.Redis.__init__

    def counting(self, *args, **kwargs):
        nonlocal built
        built += 1
        original(self, *args, **kwargs)

    raw = ctx.tasks.r
    subscribes = _command_calls(raw, "subscribe")
    redis.Redis.__init__ = counting
    try:
        ids = [submit(client, auth).json["id"] for _ in range(20)]
    finally:
        redis.Redis.__init__ = original
    assert _command_calls(raw, "subscribe") == subscribes
    assert built <= 2, f"{built} redis.Redis objects for 20 submissions"
    for task_id in ids:
        wait_status(ctx, task_id, ["succeeded"])


def test_the_broker_channel_rebuilds_its_client_with_a_new_pool(ctx):
    from tests.support import celery_for

    with celery_for(ctx.settings.redis_url).connection_for_write() as conn:
        channel = conn.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        assert channel._create_client(asynchronous=True) is not first
        channel._disconnect_pools()  # what kombu does after a fork or a failed ping
        second = channel._create_client()
        assert second is not first and second.connection_pool is channel.pool
        assert second.ping()


def test_closing_a_broker_channel_after_the_connection_was_released_does_not_raise(ctx):
    """What killed a worker when Valkey restarted: kombu closes the channel (dropping its
    pools), then restores unacked messages through a new client, which it cannot build once
    the connection is released (AttributeError, "Unrecoverable error")."""
    from tests.support import celery_for

    conn = celery_for(ctx.settings.redis_url).connection_for_write()
    channel = conn.default_channel
    used = channel._create_client()
    channel._closing = True
    channel._disconnect_pools()
    channel.connection.client = None  # as after Connection.release()
    assert channel._create_client() is used
    assert used.ping()  # its pool reconnects
