"""Bad input at the edges gets a clear 4xx before anything happens: URLs that cannot be
parsed, resume points Redis would refuse, names with a trailing newline; and what comes
back stays small and shows no secret."""

from __future__ import annotations

import json
import logging

import pytest

from aiintegration.store.streams import StreamReader, stream_after

VALID = {"task_type": "text_generation", "request_content": {"prompt": "hi"}, "requested_by": "svc"}
KEY = "sk-newkey-0123456789"


@pytest.mark.parametrize("url", ["http://[zz]/v1", "http://[::1", "http://[::1/v1", "https://[1.2.3.4]/v1"])
def test_a_provider_base_url_that_cannot_be_parsed_is_a_422(client, auth, ctx, url):
    version = ctx.providers.version()
    resp = client.put("/v1/providers/local/config", json={"base_url": url, "api_key": KEY}, headers=auth)
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert resp.json["error"]["code"] == "validation_error" and "base_url" in resp.json["error"]["details"]
    assert ctx.providers.version() == version


@pytest.mark.parametrize("url,why", [("http://8.8.8.8:99999/v1", "invalid port"),
                                     ("http://8.8.8.8:port/v1", "invalid port")])
def test_a_refused_provider_base_url_says_why_it_was_refused(client, auth, url, why):
    resp = client.put("/v1/providers/local/config", json={"base_url": url, "api_key": KEY}, headers=auth)
    assert resp.status_code == 422
    assert why in resp.json["error"]["message"] and "private" not in resp.json["error"]["message"]
    assert "base_url" in resp.json["error"]["details"]


def test_a_key_without_a_known_prefix_shows_only_its_last_four_characters(client, auth, ctx):
    key = "Zx9Qw7p-Lm3Nv8Rt"
    resp = client.put("/v1/providers/local/config", json={"api_key": key}, headers=auth)
    assert resp.status_code == 200, resp.json
    assert resp.json["api_key"] == "…v8Rt"
    listed = client.get("/v1/providers", headers=auth).json["providers"]
    assert [p["api_key"] for p in listed if p["name"] == "local"] == ["…v8Rt"]
    events = [json.loads(f["data"]) for _, f in ctx.tasks.r.xrange("aii:events")
              if f["type"] == "provider.config_updated"]
    assert events[-1]["api_key"] == "…v8Rt"
    client.put("/v1/providers/local/config", json={"api_key": "Qq1Ww2Ee-Rr3Tt4Yy"}, headers=auth)
    assert ctx.providers.history("local")[0].api_key == "…v8Rt"
    for text in (json.dumps(resp.json), json.dumps(listed), json.dumps(events)):
        assert "Zx9Qw7p" not in text and "Lm3N" not in text


@pytest.mark.parametrize("last", ["1-0\n", "\u0661-\u0660", "1-0\r", f"{2**64}-0"])
def test_a_resume_point_redis_would_refuse_is_a_400_before_the_feed_starts(client, auth, last):
    created = client.post("/v1/tasks", json=VALID, headers=auth)
    assert created.status_code == 202
    resp = client.get(f"/v1/tasks/{created.json['id']}/events", query_string={"last_event_id": last}, headers=auth)
    assert resp.status_code == 400 and resp.mimetype == "application/json"
    assert resp.json["error"]["code"] == "bad_request" and "Last-Event-ID" in resp.json["error"]["details"]


def test_a_feed_whose_read_redis_refuses_ends_instead_of_raising(ctx, caplog):
    key = "aii:test:not-a-stream"
    ctx.tasks.r.set(key, "a string, not a stream")
    try:
        with caplog.at_level(logging.WARNING, logger="aiintegration.store.streams"), \
                StreamReader(ctx.tasks.r, key) as reader:
            assert reader.read("0-0", 10) is None
        assert [r.levelname for r in caplog.records] == ["WARNING"] and key in caplog.records[0].getMessage()
    finally:
        ctx.tasks.r.delete(key)


@pytest.mark.parametrize("query", [{"tenant": "default\n"}, {"tenant": "\u0661default"},
                                   {"cursor": "1732467600.5|123e4567-e89b-12d3-a456-426614174000\n"},
                                   {"cursor": "\u0661732467600.5|123e4567-e89b-12d3-a456-426614174000"}])
def test_a_task_list_query_with_a_trailing_newline_is_a_422(client, auth, query):
    resp = client.get("/v1/tasks", query_string=query, headers=auth)
    assert resp.status_code == 422 and resp.json["error"]["code"] == "validation_error"


def test_a_good_cursor_and_tenant_are_still_accepted(client, auth):
    query = {"tenant": "default", "cursor": "1732467600.5|123e4567-e89b-12d3-a456-426614174000"}
    assert client.get("/v1/tasks", query_string=query, headers=auth).status_code == 200


@pytest.mark.parametrize("query", [{"tenant": "default\n"}, {"from": "2026-11-01\n"}, {"to": "2026-11-30\n"},
                                   {"to": "\u0662\u0660\u0662\u0666-11-30"}])
def test_a_usage_query_with_a_trailing_newline_is_refused_by_its_schema(client, auth, query):
    from aiintegration.web.usage import UsageQuerySchema

    assert UsageQuerySchema().validate(query)
    resp = client.get("/v1/usage", query_string=query, headers=auth)
    assert resp.status_code == 422 and resp.json["error"]["code"] == "validation_error"


def test_a_dlq_tenant_filter_with_a_trailing_newline_is_a_422(client, auth):
    resp = client.get("/v1/dlq", query_string={"tenant": "default\n"}, headers=auth)
    assert resp.status_code == 422 and resp.json["error"]["code"] == "validation_error"
    assert client.get("/v1/dlq", query_string={"tenant": "default"}, headers=auth).status_code == 200


def test_a_usage_query_with_plain_days_is_accepted(client, auth):
    assert client.get("/v1/usage", query_string={"from": "2026-11-01", "to": "2026-11-30"},
                      headers=auth).status_code == 200


def test_a_chat_task_with_a_huge_number_of_bad_messages_gets_a_small_422(client, auth, ctx):
    before = int(ctx.tasks.r.zcard(f"{ctx.settings.key_prefix}:idx:tasks"))
    body = {**VALID, "task_type": "chat_completion", "request_content": {"messages": [0] * 300_000}}
    resp = client.post("/v1/tasks", json=body, headers=auth)
    assert resp.status_code == 422
    assert len(resp.get_data()) < 5000
    assert "299980" in resp.json["error"]["details"]["request_content.messages"]
    assert int(ctx.tasks.r.zcard(f"{ctx.settings.key_prefix}:idx:tasks")) == before


def test_nothing_comes_after_the_largest_stream_id(ctx):
    key, top = "aii:test:stream", f"{2**64 - 1}-{2**64 - 1}"
    ctx.tasks.r.xadd(key, {"type": "x", "data": "{}"})
    try:
        assert stream_after(ctx.tasks.r, key, top) == []
        assert len(stream_after(ctx.tasks.r, key, "0-0")) == 1
        with StreamReader(ctx.tasks.r, key) as reader:
            assert reader.read(top, 10) == []
    finally:
        ctx.tasks.r.delete(key)
