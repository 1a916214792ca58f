"""aiintegration.client against the real stack: gunicorn as the Procfile runs it, a real Celery
worker, the real openai SDK talking to the fake provider for failures, and a TCP proxy of our
own between client and server that cuts feeds, loses answers and says 503."""

from __future__ import annotations

import threading
import time
import uuid

import anyio
import pytest
import stamina

from aiintegration.client import AsyncClient, CeleryClient, Client, RetryPolicy
from aiintegration.domain.providers import ProviderConfig
from aiintegration.embedded import free_port
from aiintegration.errors import (
    Conflict,
    IdempotencyKeyReused,
    InvalidRequest,
    NotFound,
    PermanentError,
    ServiceUnavailable,
    TaskCancelled,
    TransientError,
    Unauthorized,
    ValidationError,
    WaitTimedOut,
)
from tests.conftest import TOKEN
from tests.fake_provider import FakeProvider, Fault
from tests.support import Web, Worker, redis_url
from tests.support.proxy import FaultyProxy

KEY = "sk-test-LEAKCHECK-client-0123456789"
FAST = RetryPolicy(attempts=4, timeout=10, wait_initial=0.01, wait_max=0.05, wait_jitter=0.01)
PROMPT = {"prompt": "Tell me about ducks"}


@pytest.fixture(scope="module")
def stack(ctx, db):
    """The web server (heartbeats every second, so idle feeds speak often) and a worker; the
    `openai` provider is the fake one, used only by tasks that pin it."""
    with FakeProvider(seed=5) as fake:
        ctx.providers.put(ProviderConfig("openai", "openai", api_key=KEY, base_url=fake.base_url, timeout_s=10))
        with Worker(db, concurrency=8), Web(db, free_port(), env={"AII_SSE_HEARTBEAT_S": "1"}) as web:
            yield fake, web


@pytest.fixture(scope="module")
def base_url(stack):
    return f"http://127.0.0.1:{stack[1].port}"


@pytest.fixture(scope="module")
def fake(stack):
    return stack[0]


@pytest.fixture()
def aii(base_url):
    with Client(base_url, TOKEN, retry=FAST) as client:
        yield client


@pytest.fixture()
def proxy(stack):
    with FaultyProxy(stack[1].port) as p:
        yield p


def caller() -> str:
    return f"client-test-{uuid.uuid4().hex[:8]}"


def test_a_submitted_task_is_waited_for_until_its_succeeded_record(aii):
    task = aii.submit(request_content=PROMPT, requested_by="client-test", metadata={"order": 7}, priority=7)
    assert task["status"] in ("queued", "running", "succeeded") and task["metadata"] == {"order": 7}
    record = aii.wait(task["id"], timeout=15)
    assert record["id"] == task["id"] and record["status"] == "succeeded"
    assert record["result"]["provider"] == "local" and record["result"]["text"]
    assert record["priority"] == 7


def test_the_same_idempotency_key_twice_returns_the_first_task(aii):
    key = f"order-{uuid.uuid4()}"
    first = aii.submit(request_content=PROMPT, requested_by="client-test", idempotency_key=key)
    again = aii.submit(request_content=PROMPT, requested_by="client-test", idempotency_key=key)
    assert again["id"] == first["id"] and again["created_at"] == first["created_at"]


def test_a_submit_whose_answer_was_lost_is_retried_and_creates_one_task(base_url, proxy):
    who = caller()
    proxy.lose_answers(1)
    with Client(proxy.url, TOKEN, retry=FAST) as client:
        task = client.submit(request_content=PROMPT, requested_by=who)
        assert [r for r in proxy.requests if r.startswith("POST")] == ["POST /v1/tasks"] * 2
        assert [t["id"] for t in client.list(requested_by=who)] == [task["id"]]


def test_list_follows_next_cursor_through_every_page(aii):
    who = caller()
    ids = [aii.submit(request_content={"prompt": f"n{n}"}, requested_by=who)["id"] for n in range(5)]
    listed = [t["id"] for t in aii.list(requested_by=who, limit=2)]
    assert listed == ids[::-1]  # newest first, all three pages


def test_a_cancelled_task_makes_wait_raise_task_cancelled_with_the_reason(aii, fake):
    fake.script(Fault(status=500, delay_s=5))  # the provider call hangs: the task stays running
    task = aii.submit(request_content=PROMPT, requested_by="client-test", options={"provider": "openai"})
    started = time.monotonic()
    with pytest.raises(WaitTimedOut) as timed_out:
        aii.wait(task["id"], timeout=0.8)
    assert 0.8 <= time.monotonic() - started < 2.5 and timed_out.value.code == "wait_timed_out"
    cancelled = aii.cancel(task["id"], "the customer left")
    assert cancelled["status"] == "cancelled"
    with pytest.raises(TaskCancelled) as raised:
        aii.wait(task["id"], timeout=10)
    assert raised.value.code == "cancelled" and "the customer left" in raised.value.message
    with pytest.raises(Conflict) as again:
        aii.cancel(task["id"], "twice")
    assert again.value.http_status == 409 and again.value.details == {"status": "cancelled"}


def test_a_cancel_whose_answer_was_lost_is_not_reported_as_a_conflict(aii, proxy, fake):
    fake.script(Fault(status=500, delay_s=5))
    task = aii.submit(request_content=PROMPT, requested_by="client-test", options={"provider": "openai"})
    proxy.lose_answers(1)
    with Client(proxy.url, TOKEN, retry=FAST) as client:
        record = client.cancel(task["id"], "lost answer")
    assert record["status"] == "cancelled"
    assert [r for r in proxy.requests if r.endswith("/cancel")] == [f"POST /v1/tasks/{task['id']}/cancel"] * 2


def test_wait_raises_the_providers_permanent_error_for_a_dead_lettered_task(aii, fake):
    fake.script(Fault(status=400, message="max_tokens is too large for this model"))
    task = aii.submit(request_content=PROMPT, requested_by="client-test", options={"provider": "openai"})
    with pytest.raises(InvalidRequest) as raised:
        aii.wait(task["id"], timeout=15)
    error = raised.value
    assert isinstance(error, PermanentError) and error.code == "invalid_request" and error.provider == "openai"
    assert "max_tokens is too large" in error.message
    assert error.details["task_id"] == task["id"] and error.details["task"]["status"] == "dead_lettered"
    retried = aii.retry(task["id"], "the provider is fixed")  # nothing scripted now: it succeeds
    assert retried["status"] in ("queued", "running", "succeeded")
    assert aii.wait(task["id"], timeout=15)["attempts"] == 2


def test_events_resume_after_the_proxy_cuts_the_feed_mid_event(aii, proxy, fake, ctx):
    """Two transient failures give the task seven events; the proxy cuts three connections in
    the middle of an event (its id line through, the rest missing)."""
    fake.script(Fault(status=500), Fault(status=500))
    task = aii.submit(request_content=PROMPT, requested_by="client-test", options={"provider": "openai"})
    proxy.cut_feeds(after_events=[1, 2, 1])
    with Client(proxy.url, TOKEN, retry=FAST) as client:
        events = list(client.events(task["id"]))
    assert proxy.cuts == 3 and sum(r.endswith("/events") for r in proxy.requests) == 4
    stored = [entry_id for entry_id, _ in ctx.tasks.r.xrange(ctx.tasks.keys.task_stream(task["id"]))]
    assert [e["id"] for e in events] == stored  # no gap, nothing twice, in order
    assert [e["event"] for e in events] == ["task.created", "task.started", "task.retrying", "task.started",
                                            "task.retrying", "task.started", "task.succeeded"]
    assert all(e["data"]["type"] == e["event"] for e in events)


def test_events_resumed_from_an_id_yield_exactly_the_rest_and_nothing_past_the_end(aii):
    task = aii.submit(request_content=PROMPT, requested_by="client-test")
    everything = list(aii.events(task["id"]))
    assert [e["event"] for e in everything] == ["task.created", "task.started", "task.succeeded"]
    assert list(aii.events(task["id"], last_event_id=everything[0]["id"])) == everything[1:]
    started = time.monotonic()
    assert list(aii.events(task["id"], last_event_id=everything[-1]["id"])) == []
    assert time.monotonic() - started < 1  # over, not a feed to wait on


def test_wait_falls_back_to_polling_when_the_feed_keeps_failing(proxy):
    proxy.drop_requests("/events")
    with Client(proxy.url, TOKEN, retry=FAST) as client:
        task = client.submit(request_content=PROMPT, requested_by="client-test")
        assert client.wait(task["id"], timeout=15)["status"] == "succeeded"
    feeds = [r for r in proxy.requests if r.endswith("/events")]
    assert len(feeds) == FAST.attempts and proxy.requests[-1] == f"GET /v1/tasks/{task['id']}"


def test_503_answers_are_retried_and_the_last_one_raised(aii, proxy):
    task = aii.submit(request_content=PROMPT, requested_by="client-test")
    with Client(proxy.url, TOKEN, retry=RetryPolicy(attempts=3, wait_initial=5)) as client:
        with stamina.set_testing(True, attempts=3):  # no waits: three tries at once
            proxy.answer_503(2)
            assert client.get(task["id"])["id"] == task["id"]
            proxy.answer_503(3)
            with pytest.raises(ServiceUnavailable) as raised:
                client.get(task["id"])
    assert len(proxy.requests) == 6
    assert raised.value.http_status == 503 and raised.value.code == "store_unavailable"
    assert isinstance(raised.value, TransientError)


def test_a_refused_connection_is_retried_until_the_server_listens(stack):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Client(url, TOKEN, retry=RetryPolicy(attempts=1)) as once, pytest.raises(ServiceUnavailable) as refused:
        once.get(str(uuid.uuid4()))
    assert refused.value.details["request_sent"] is False  # so even a chat message may be sent again
    late: list[FaultyProxy] = []
    threading.Timer(0.5, lambda: late.append(FaultyProxy(stack[1].port, port=port).start())).start()
    try:
        with Client(url, TOKEN, retry=RetryPolicy(attempts=50, timeout=10, wait_initial=0.05, wait_max=0.1)) as client:
            started = time.monotonic()
            task = client.submit(request_content=PROMPT, requested_by="client-test")
            assert time.monotonic() - started >= 0.4 and task["status"] in ("queued", "running", "succeeded")
    finally:
        time.sleep(0.6)  # the timer has fired either way
        for proxy in late:
            proxy.stop()


def test_errors_of_the_api_keep_their_code_status_and_details(aii, base_url):
    with pytest.raises(NotFound) as missing:
        aii.get(str(uuid.uuid4()))
    assert missing.value.http_status == 404 and missing.value.code == "not_found"
    with pytest.raises(ValidationError) as invalid:
        aii.submit("poetry", request_content=PROMPT, requested_by="client-test")
    assert invalid.value.http_status == 422 and "task_type" in invalid.value.details
    with Client(base_url, "wrong-token", retry=FAST) as stranger, pytest.raises(Unauthorized) as refused:
        stranger.get(str(uuid.uuid4()))
    assert refused.value.http_status == 401 and refused.value.code == "unauthorized"
    assert not isinstance(refused.value, PermanentError)  # not a provider refusing our key


def test_a_chat_answer_streams_as_deltas_that_join_to_the_completed_text(aii):
    session = aii.chat(user_id="u-1", item_id="sku-42", initial_context={"item": "blue kettle"})
    reply = session.send("Is it steel?")
    deltas = list(reply)
    assert len(deltas) > 1 and "".join(deltas) == reply.completed["text"] == reply.text
    second = list(session.send("And the lid?", include_context={"lid": "glass"}))
    assert second and "".join(second) != "".join(deltas)
    closed = session.close("done")
    assert closed["status"] == "closed" and closed["stats"]["messages"] == 4
    assert [m["role"] for m in closed["history"]] == ["user", "assistant"] * 2


def test_a_chat_answer_that_fails_before_any_delta_raises_the_tasks_error(aii, fake, ctx):
    """A provider that refuses at once streams nothing: the reply notices the failed task
    at the feed's next heartbeat (every second here) instead of waiting forever."""
    fake.script(Fault(status=400, message="this chat is not allowed"))
    ctx.providers.set_order(["openai", "local"])
    try:
        time.sleep(1.1)  # the worker reads the order at most once a second
        session = aii.chat(user_id="u-2", item_id="sku-7", initial_context="a red lamp")
        started = time.monotonic()
        with pytest.raises(InvalidRequest) as raised:
            list(session.send("hello", timeout=15))
        assert "not allowed" in raised.value.message and time.monotonic() - started < 6
    finally:
        ctx.providers.set_order(["local"])
        time.sleep(1.1)


def test_the_async_client_does_the_same(base_url, fake, proxy):
    async def scenario() -> None:
        async with AsyncClient(base_url, TOKEN, retry=FAST) as client:
            key, who = str(uuid.uuid4()), caller()
            task = await client.submit(request_content=PROMPT, requested_by=who, idempotency_key=key)
            assert (await client.submit(request_content=PROMPT, requested_by=who, idempotency_key=key))["id"] == \
                task["id"]
            assert (await client.wait(task["id"], timeout=15))["status"] == "succeeded"
            events = [e async for e in client.events(task["id"])]
            assert [e["event"] for e in events] == ["task.created", "task.started", "task.succeeded"]
            proxy.cut_feeds(after_events=[1, 1])
            async with AsyncClient(proxy.url, TOKEN, retry=FAST) as cut:
                assert [e async for e in cut.events(task["id"])] == events and proxy.cuts == 2
            other = await client.submit(request_content={"prompt": "two"}, requested_by=who)
            assert [t["id"] async for t in client.list(requested_by=who, limit=1)] == [other["id"], task["id"]]
            fake.script(Fault(status=400, message="no such model"))
            failing = await client.submit(request_content=PROMPT, requested_by=who, options={"provider": "openai"})
            with pytest.raises(InvalidRequest, match="no such model"):
                await client.wait(failing["id"], timeout=15)
            session = await client.chat(user_id="u-3", item_id="sku-9", initial_context="a green chair")
            reply = await session.send("Is it comfy?")
            deltas = [d async for d in reply]
            assert len(deltas) > 1 and "".join(deltas) == reply.completed["text"]
            assert (await session.close("done"))["status"] == "closed"
            with pytest.raises(NotFound):
                await client.cancel(str(uuid.uuid4()), "no such task")

    anyio.run(scenario)


def test_the_celery_client_submits_cancels_and_retries_by_task_name(aii, db):
    by_name = CeleryClient(redis_url(db), timeout=10)
    try:
        reply = by_name.submit(request_content=PROMPT, requested_by="billing-service", priority=9,
                               idempotency_key="by-name-1")
        assert reply["created"] is True and by_name.submit(
            request_content=PROMPT, requested_by="billing-service", priority=9, idempotency_key="by-name-1") == \
            {"id": reply["id"], "created": False}
        with pytest.raises(IdempotencyKeyReused):  # the same key with another request
            by_name.submit(request_content=PROMPT, requested_by="billing-service", idempotency_key="by-name-1")
        record = aii.wait(reply["id"], timeout=15)
        assert record["priority"] == 9 and record["requested_by"] == "billing-service"
        with pytest.raises(Conflict) as finished:
            by_name.cancel(reply["id"], "too late")
        assert finished.value.details == {"status": "succeeded"} and finished.value.http_status == 409
        with pytest.raises(ValidationError) as invalid:
            by_name.submit("poetry", request_content=PROMPT, requested_by="billing-service")
        assert invalid.value.code == "validation_error" and "task_type" in invalid.value.details
        with pytest.raises(NotFound):
            by_name.retry(str(uuid.uuid4()), "no such task")
    finally:
        by_name.close()
