"""A hostile client against every /v1 route: two client tenants and an operator. Another
tenant's ids answer 404 exactly like unknown ones, client-only violations answer 403, bad
input is a 4xx, and nothing is written by a refused request."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aiintegration.domain.auth import parse_tokens
from aiintegration.web import create_app
from tests.support import make_context

ALICE, BOB, OPS = "alice-token-0123456789", "bob-token-0123456789ab", "ops-token-0123456789abcd"
TOKENS = json.dumps({ALICE: {"name": "alice", "role": "client"}, BOB: {"name": "bob", "role": "client"},
                     OPS: {"name": "platform", "role": "operator"}})
TEXT = {"task_type": "text_generation", "request_content": {"prompt": "hello"}, "requested_by": "svc"}
UNKNOWN = "00000000-0000-4000-8000-000000000000"


def as_(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def hctx(db):
    return make_context(db, api_tokens=parse_tokens(TOKENS), sse_max_per_tenant=2, provider_allow_private=False,
                        sse_heartbeat_s=0.5)  # a hung-up client is noticed at the next heartbeat write


@pytest.fixture(scope="module")
def web(hctx):
    return create_app({"AII_CONTEXT": hctx, "TESTING": True}).test_client()


def submit(web, token, **overrides):
    resp = web.post("/v1/tasks", json={**TEXT, **overrides}, headers=as_(token))
    assert resp.status_code == 202, resp.json
    return resp.json["id"]


def snapshot(hctx):
    """Everything a refused request must leave as it was (metrics this process buffered from
    earlier tests are written first, so their flush does not land in between)."""
    hctx.metrics.flush()
    r = hctx.tasks.r
    return {key: r.dump(key) for key in sorted(r.scan_iter("aii:*")) if not key.startswith("aii:feeds:")}


def test_another_tenants_task_is_404_like_an_unknown_one_and_stays_untouched(web, hctx):
    mine = submit(web, ALICE)
    before = snapshot(hctx)
    for path, method, body in [(f"/v1/tasks/{mine}", "GET", None), (f"/v1/tasks/{mine}/events", "GET", None),
                               (f"/v1/tasks/{mine}/cancel", "POST", {"cancellation_reason": "mine now"}),
                               (f"/v1/tasks/{mine}/retry", "POST", {"retry_reason": "again"})]:
        theirs = web.open(path, method=method, json=body, headers=as_(BOB))
        unknown = web.open(path.replace(mine, UNKNOWN), method=method, json=body, headers=as_(BOB))
        assert theirs.status_code == unknown.status_code == 404, (path, theirs.json)
        assert theirs.json["error"]["code"] == unknown.json["error"]["code"] == "not_found"
    assert snapshot(hctx) == before
    assert web.get(f"/v1/tasks/{mine}", headers=as_(ALICE)).json["tenant"] == "alice"
    assert web.get(f"/v1/tasks/{mine}", headers=as_(OPS)).status_code == 200


def test_a_client_lists_only_its_own_tasks_and_only_operators_list_by_tenant(web, hctx):
    alices, bobs = submit(web, ALICE, requested_by="lister"), submit(web, BOB, requested_by="lister")
    seen_by_bob = [t["id"] for t in web.get("/v1/tasks?requested_by=lister", headers=as_(BOB)).json["items"]]
    assert bobs in seen_by_bob and alices not in seen_by_bob
    assert web.get("/v1/tasks?tenant=alice", headers=as_(BOB)).json["error"]["code"] == "forbidden"
    assert web.get("/v1/tasks?tenant=alice", headers=as_(BOB)).status_code == 403
    by_ops = [t["id"] for t in web.get("/v1/tasks?tenant=alice", headers=as_(OPS)).json["items"]]
    assert alices in by_ops and bobs not in by_ops
    everyone = [t["id"] for t in web.get("/v1/tasks?requested_by=lister", headers=as_(OPS)).json["items"]]
    assert {alices, bobs} <= set(everyone)


def test_another_tenants_chat_session_is_404_and_gets_no_message(web, hctx):
    sid = web.post("/v1/chat/sessions", json={"user_id": "u", "item_id": "i", "initial_context": "ctx"},
                   headers=as_(ALICE)).json["id"]
    before = snapshot(hctx)
    for path, method, body in [(f"/v1/chat/sessions/{sid}", "GET", None),
                               (f"/v1/chat/sessions/{sid}/events", "GET", None),
                               (f"/v1/chat/sessions/{sid}/messages", "POST", {"message": "hi"}),
                               (f"/v1/chat/sessions/{sid}/close", "POST", {"close_reason": "x"})]:
        assert web.open(path, method=method, json=body, headers=as_(BOB)).status_code == 404, path
    assert snapshot(hctx) == before
    assert web.get(f"/v1/chat/sessions/{sid}", headers=as_(ALICE)).json["tenant"] == "alice"


def test_a_task_cannot_write_into_a_chat_session_through_its_metadata(web, hctx):
    sid = web.post("/v1/chat/sessions", json={"user_id": "u", "item_id": "i", "initial_context": "ctx"},
                   headers=as_(ALICE)).json["id"]
    task_id = submit(web, BOB, metadata={"chat_session_id": sid, "chat_message_id": "forged"})
    from aiintegration.commands.process import process_task

    assert process_task(hctx, task_id, worker_id="test") == "succeeded"
    session = web.get(f"/v1/chat/sessions/{sid}", headers=as_(ALICE)).json
    assert session["history"] == [] and session["stats"]["messages"] == 0
    events = [f["type"] for _, f in hctx.tasks.r.xrange(hctx.chats.keys.chat_stream(sid))]
    assert events == ["chat.session_started"]
    unknown = submit(web, BOB, metadata={"chat_session_id": UNKNOWN, "chat_message_id": "forged"})
    assert process_task(hctx, unknown, worker_id="test") == "succeeded"
    assert web.get(f"/v1/chat/sessions/{UNKNOWN}", headers=as_(OPS)).status_code == 404


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/v1/dlq", None), ("POST", "/v1/dlq/replay", {"error_class": "InvalidRequest"}),
    ("POST", f"/v1/dlq/{UNKNOWN}/replay", {}), ("POST", f"/v1/dlq/{UNKNOWN}/review", {"note": "n"}),
    ("DELETE", f"/v1/dlq/{UNKNOWN}", None), ("PUT", "/v1/providers/local/config", {"timeout_s": 5}),
    ("POST", "/v1/providers/switch", {"from_provider": "local", "to_provider": "local", "reason": "r"}),
    ("GET", "/v1/batches", None),
])
def test_operator_routes_answer_a_client_403_and_write_nothing(web, hctx, method, path, body):
    before = snapshot(hctx)
    resp = web.open(path, method=method, json=body, headers=as_(ALICE))
    assert resp.status_code == 403 and resp.json["error"]["code"] == "forbidden", resp.json
    assert snapshot(hctx) == before


def test_idempotency_keys_belong_to_a_tenant_and_to_one_request(web, hctx):
    key = {"Idempotency-Key": "order-42"}
    first = web.post("/v1/tasks", json=TEXT, headers={**as_(ALICE), **key})
    other_tenant = web.post("/v1/tasks", json=TEXT, headers={**as_(BOB), **key})
    assert first.status_code == other_tenant.status_code == 202 and first.json["id"] != other_tenant.json["id"]
    repeat = web.post("/v1/tasks", json=TEXT, headers={**as_(ALICE), **key})
    assert repeat.status_code == 200 and repeat.json["id"] == first.json["id"]
    before = snapshot(hctx)
    changed = web.post("/v1/tasks", json={**TEXT, "request_content": {"prompt": "something else"}},
                       headers={**as_(ALICE), **key})
    assert changed.status_code == 422 and changed.json["error"]["code"] == "idempotency_key_reused"
    assert snapshot(hctx) == before


class Attacker:
    """An HTTP server that answers like /v1/models and records every Authorization header."""

    def __init__(self, status: int = 200):
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                seen.append(self.headers.get("Authorization"))
                body = json.dumps({"object": "list", "data": []} if status == 200 else
                                  {"error": {"message": "ATTACKER-BODY internal layout 10.0.0.7:6379"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_stored_key_never_reaches_a_new_base_url(web, hctx):
    from aiintegration.domain.providers import ProviderConfig

    stored = "sk-LEAKCHECK-stored-0123456789abcdef"
    hctx.providers.put(ProviderConfig("openai", "openai", api_key=stored, base_url="https://api.openai.com/v1"))
    attacker = Attacker()
    try:
        version = hctx.providers.version()
        moved = web.put("/v1/providers/openai/config", json={"base_url": attacker.url}, headers=as_(OPS))
        assert moved.status_code == 422 and moved.json["error"]["code"] == "api_key_required"
        inside = web.put("/v1/providers/openai/config", json={"base_url": attacker.url, "api_key": "sk-new-0123456789"},
                         headers=as_(OPS))
        assert inside.status_code == 422 and "base_url" in inside.json["error"]["details"]  # loopback refused
        assert attacker.seen == [] and hctx.providers.version() == version
        assert hctx.providers.get("openai").api_key == stored
    finally:
        attacker.close()


def test_a_failed_connection_test_says_what_failed_not_what_the_remote_host_answered(db):
    ctx = make_context(db, api_tokens=parse_tokens(TOKENS), provider_allow_private=True)
    web = create_app({"AII_CONTEXT": ctx, "TESTING": True}).test_client()
    attacker = Attacker(status=500)
    try:
        resp = web.put("/v1/providers/openai/config", json={"base_url": attacker.url, "api_key": "sk-new-0123456789"},
                       headers=as_(OPS))
        assert resp.status_code == 409 and resp.json["error"]["details"]["applied"] is False
        assert resp.json["error"]["details"]["error"]["class"] == "ProviderUnavailable"
        assert "ATTACKER-BODY" not in resp.get_data(as_text=True) and "10.0.0.7" not in resp.get_data(as_text=True)
        assert attacker.seen == ["Bearer sk-new-0123456789"]  # only the key sent with the new base_url
    finally:
        attacker.close()


@pytest.mark.parametrize("raw", [
    b'{"task_type": "text_generation", "request_content": {"prompt": "\\ud800"}, "requested_by": "svc"}',
    b'{"task_type": "text_generation", "request_content": {"prompt": "x", "max_tokens": ' + b"9" * 5000 + b'}, '
    b'"requested_by": "svc"}',
    b'{"task_type": "text_generation", "request_content": {"prompt": "x"}, "requested_by": "svc", "metadata": '
    + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
    b'{"task_type": "text_generation", "request_content": {"prompt": "x"}, "requested_by": "svc", "metadata": '
    + b'{"a":' * 65 + b"1" + b"}" * 65 + b"}",
    b'{"task_type": "text_generation", "request_content": {"prompt": "x", "n": NaN}, "requested_by": "svc"}',
    b'{"task_type": "text_generation", "request_content": {"prompt": "x", "n": -Infinity}, "requested_by": "svc"}',
    b'{"task_type": "text_generation", "request_content": {"prompt": "x", "n": 1e999}, "requested_by": "svc"}',
    b'\xff\xfe{"not": "utf-8"}',
])
def test_unreadable_json_is_a_400_and_writes_nothing(web, hctx, raw):
    before = snapshot(hctx)
    resp = web.post("/v1/tasks", data=raw, content_type="application/json", headers=as_(ALICE))
    assert resp.status_code == 400 and resp.json["error"]["code"] == "bad_request", resp.get_data(as_text=True)[:300]
    assert snapshot(hctx) == before


@pytest.mark.parametrize("last_event_id", ["99999999999999999999-0", "1-99999999999999999999", "nonsense", "1"])
def test_a_junk_last_event_id_is_a_400_before_the_stream_starts(web, last_event_id):
    task_id = submit(web, ALICE)
    resp = web.get(f"/v1/tasks/{task_id}/events", headers={**as_(ALICE), "Last-Event-ID": last_event_id})
    assert resp.status_code == 400 and resp.mimetype == "application/json"


def test_a_tenant_holds_at_most_its_share_of_open_event_streams(web, hctx):
    import httpx
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, web.application, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_port}"
    task_id = submit(web, ALICE)
    with httpx.Client(base_url=base, timeout=10) as http:
        opened = [http.stream("GET", f"/v1/tasks/{task_id}/events", headers=as_(ALICE)) for _ in range(2)]
        feeds = [cm.__enter__() for cm in opened]
        try:
            assert all(f.status_code == 200 for f in feeds)
            third = http.get(f"/v1/tasks/{task_id}/events", headers=as_(ALICE))
            assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_requests"
            assert int(third.headers["Retry-After"]) >= 1
            with http.stream("GET", f"/v1/tasks/{submit(web, BOB)}/events", headers=as_(BOB)) as bobs:
                assert bobs.status_code == 200  # another tenant's share is its own
        finally:
            for cm in opened:
                cm.__exit__(None, None, None)
        # the server notices the closed connections at its next write (a heartbeat) or read block
        deadline = time.monotonic() + 10
        while hctx.tasks.r.zcard("aii:feeds:alice") and time.monotonic() < deadline:
            time.sleep(0.1)
        with http.stream("GET", f"/v1/tasks/{task_id}/events", headers=as_(ALICE)) as again:
            assert again.status_code == 200
    srv.shutdown()


def test_a_store_with_no_free_connection_answers_json_503_not_an_html_500(db):
    """The feed takes its connection before the response starts, so a pool that has none to
    give is an ordinary error answer (after the pool's 5 s wait)."""
    from tests.support import redis_url

    small = make_context(db, redis_url=redis_url(db) + "?client_name=tiny-pool", redis_max_connections=2,
                         api_tokens=parse_tokens(TOKENS))
    web = create_app({"AII_CONTEXT": small, "TESTING": True}).test_client()
    task_id = submit(web, ALICE)
    pool = small.tasks.r.connection_pool
    held = [pool.get_connection() for _ in range(2)]
    try:
        resp = web.get(f"/v1/tasks/{task_id}/events", headers=as_(ALICE))
    finally:
        for conn in held:
            pool.release(conn)
    assert resp.status_code == 503 and resp.mimetype == "application/json"
    assert resp.json["error"]["code"] == "store_unavailable"
