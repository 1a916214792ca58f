"""Bad input of every kind gets a clear 4xx and stores nothing; /v1 needs a bearer token."""

from __future__ import annotations

import uuid

import pytest

VALID = {"task_type": "text_generation", "request_content": {"prompt": "hi"}, "requested_by": "svc"}


def stored_task_count(ctx) -> int:
    return int(ctx.tasks.r.zcard(f"{ctx.settings.key_prefix}:idx:tasks"))


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer "}])
@pytest.mark.parametrize("method,path", [("get", "/v1/tasks"), ("post", "/v1/tasks"),
                                         ("get", f"/v1/tasks/{uuid.uuid4()}"),
                                         ("post", f"/v1/tasks/{uuid.uuid4()}/cancel")])
def test_every_v1_route_answers_401_without_a_valid_token(client, ctx, headers, method, path):
    before = stored_task_count(ctx)
    resp = getattr(client, method)(path, json=VALID, headers=headers)
    assert resp.status_code == 401
    assert resp.json["error"]["code"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert stored_task_count(ctx) == before


def test_any_configured_token_is_accepted(client):
    assert client.get("/v1/tasks", headers={"Authorization": "Bearer second-token"}).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json"])
def test_health_and_the_openapi_document_need_no_token(client, path):
    assert client.get(path).status_code == 200


def test_the_openapi_document_describes_the_task_routes(client):
    paths = client.get("/openapi.json").json["paths"]
    assert {"/v1/tasks", "/v1/tasks/{task_id}", "/v1/tasks/{task_id}/cancel"} <= set(paths)


BAD_BODIES = [
    ({**VALID, "task_type": "video_generation"}, 422, "task_type"),
    ({**VALID, "request_content": {}}, 422, "request_content.prompt"),
    ({**VALID, "request_content": "just a string"}, 422, "request_content"),
    ({**VALID, "priority": 10}, 422, "priority"),
    ({**VALID, "priority": "high"}, 422, "priority"),
    ({**VALID, "priority": 4.5}, 422, "priority"),
    ({**VALID, "metadata": [1, 2]}, 422, "metadata"),
    ({**VALID, "options": {"timeout_s": 99999}}, 422, "options.timeout_s"),
    ({**VALID, "options": {"provider": "nobody"}}, 422, "options.provider"),
    ({**VALID, "options": {"callback_url": "ftp://example"}}, 422, "options.callback_url"),
    ({**VALID, "options": {"callback_url": "http://"}}, 422, "options.callback_url"),
    ({**VALID, "unexpected": 1}, 422, "unexpected"),
    ({k: v for k, v in VALID.items() if k != "requested_by"}, 422, "requested_by"),
    ({**VALID, "task_type": "chat_completion", "request_content": {"messages": [{"role": "bot", "content": 1}]}},
     422, "request_content.messages[0]"),
    ({**VALID, "request_content": {"prompt": "x" * (300 * 1024)}}, 413, "request_content"),
    ({**VALID, "metadata": {"blob": "y" * (20 * 1024)}}, 413, "metadata"),
]


@pytest.mark.parametrize("body,status,field", BAD_BODIES, ids=[b[2] + f"-{b[1]}" for b in BAD_BODIES])
def test_bad_task_input_is_rejected_clearly_and_stores_nothing(client, auth, ctx, body, status, field):
    before = stored_task_count(ctx)
    resp = client.post("/v1/tasks", json=body, headers=auth)
    assert resp.status_code == status, resp.json
    error = resp.json["error"]
    assert error["code"] in ("validation_error", "payload_too_large") and error["message"]
    assert any(key.startswith(field) for key in error["details"]), error
    assert stored_task_count(ctx) == before


def test_malformed_json_is_a_400_with_a_json_error(client, auth, ctx):
    before = stored_task_count(ctx)
    resp = client.post("/v1/tasks", data=b'{"task_type": "text_generation",', headers={
        **auth, "Content-Type": "application/json"})
    assert resp.status_code == 400
    assert "JSON" in resp.json["error"]["message"]
    assert stored_task_count(ctx) == before


def test_a_body_over_the_request_size_limit_is_a_413(client, auth):
    resp = client.post("/v1/tasks", data=b"{" + b" " * (2 * 1024 * 1024) + b"}", headers={
        **auth, "Content-Type": "application/json"})
    assert resp.status_code == 413
    assert resp.json["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("path", [f"/v1/tasks/{uuid.uuid4()}", "/v1/tasks/not-a-uuid",
                                  f"/v1/tasks/{uuid.uuid4()}/cancel"])
def test_unknown_task_ids_are_404(client, auth, path):
    method = client.post if path.endswith("cancel") else client.get
    resp = method(path, json={"cancellation_reason": "x"}, headers=auth)
    assert resp.status_code == 404
    assert resp.json["error"]["code"] == "not_found"


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "status=exploded", "cursor=garbage"])
def test_bad_list_queries_are_422(client, auth, query):
    assert client.get(f"/v1/tasks?{query}", headers=auth).status_code == 422


def test_cancel_needs_a_reason(client, auth):
    task_id = client.post("/v1/tasks", json=VALID, headers=auth).json["id"]
    assert client.post(f"/v1/tasks/{task_id}/cancel", json={}, headers=auth).status_code == 422
    assert client.get(f"/v1/tasks/{task_id}", headers=auth).json["status"] == "queued"


def test_a_callback_url_is_judged_alike_over_rest_and_by_name(client, auth):
    """One rule, in the domain: a host name the URL grammar of marshmallow refused (an
    underscore) is accepted by both entry points; a URL without a host by neither."""
    from aiintegration.domain.submission import validate_submission
    from aiintegration.errors import ValidationError

    ok, bad = "http://hooks_internal:8080/done", "https:///done"
    resp = client.post("/v1/tasks", json={**VALID, "options": {"callback_url": ok}}, headers=auth)
    assert resp.status_code == 202, resp.json
    validate_submission(**{**VALID, "options": {"callback_url": ok}})
    resp = client.post("/v1/tasks", json={**VALID, "options": {"callback_url": bad}}, headers=auth)
    assert resp.status_code == 422 and "options.callback_url" in resp.json["error"]["details"]
    with pytest.raises(ValidationError):
        validate_submission(**{**VALID, "options": {"callback_url": bad}})


def test_a_chat_close_reason_is_optional_and_judged_alike_over_rest_and_by_name(client, auth, ctx):
    from aiintegration.commands.chat import close_chat_session, start_chat_session
    from aiintegration.errors import ValidationError

    def session() -> str:
        return client.post("/v1/chat/sessions", json={"user_id": "u", "item_id": "i", "initial_context": {}},
                           headers=auth).json["id"]

    for reason in ("", None):
        closed = client.post(f"/v1/chat/sessions/{session()}/close", json={"close_reason": reason}, headers=auth)
        assert closed.status_code == 200 and closed.json["close_reason"] == "closed", closed.json
    too_long = "x" * 1001
    resp = client.post(f"/v1/chat/sessions/{session()}/close", json={"close_reason": too_long}, headers=auth)
    assert resp.status_code == 422
    by_name = start_chat_session(ctx, "u", "i", {})["id"]
    assert close_chat_session(ctx, by_name, "")["close_reason"] == "closed"
    with pytest.raises(ValidationError):
        close_chat_session(ctx, start_chat_session(ctx, "u", "i", {})["id"], too_long)
