"""A chat message whose answer cannot be created (429 budget_exceeded, 413 too large) leaves the
session exactly as it was: no user message without an answer, no merged context. An accepted
one is in the history and in the task, and the context reaches the provider as compact JSON."""

from __future__ import annotations

import json

import pytest

from aiintegration.commands.chat import send_chat_message, start_chat_session
from aiintegration.domain.auth import parse_tokens
from aiintegration.domain.budgets import parse_budgets
from aiintegration.domain.limits import MAX_CHAT_CONTEXT_BYTES, MAX_CHAT_MESSAGE_CHARS
from aiintegration.errors import PayloadTooLarge
from aiintegration.web import create_app
from tests.support import make_context

BROKE, RICH = "broke-token-chat-0123456789", "rich-token-chat-01234567890"
TOKENS = json.dumps({BROKE: {"name": "broke", "role": "client"}, RICH: {"name": "rich", "role": "client"}})


def as_(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def cctx(db):
    return make_context(db, api_tokens=parse_tokens(TOKENS), budgets=parse_budgets('{"broke": {"daily_tokens": 1}}'))


@pytest.fixture(scope="module")
def web(cctx):
    return create_app({"AII_CONTEXT": cctx, "TESTING": True}).test_client()


def session_state(cctx, sid):
    r, keys = cctx.tasks.r, cctx.chats.keys
    return {key: r.dump(key) for key in (keys.chat(sid), keys.chat_messages(sid), keys.chat_stream(sid))}


def start(web, token, context):
    resp = web.post("/v1/chat/sessions", json={"user_id": "u", "item_id": "i", "initial_context": context},
                    headers=as_(token))
    assert resp.status_code == 201, resp.json
    return resp.json["id"]


def test_a_message_refused_by_the_budget_leaves_history_and_context_unchanged(web, cctx):
    sid = start(web, BROKE, {"item": "kettle"})
    first = web.post(f"/v1/chat/sessions/{sid}/messages", json={"message": "steel?"}, headers=as_(BROKE))
    assert first.status_code == 202, first.json  # it spends the day's budget of 1 token
    before = session_state(cctx, sid)
    tasks_before = cctx.tasks.counts()
    resp = web.post(f"/v1/chat/sessions/{sid}/messages", json={"message": "and the price?",
                                                               "include_context": {"price": 39}}, headers=as_(BROKE))
    assert resp.status_code == 429 and resp.json["error"]["code"] == "budget_exceeded", resp.json
    assert session_state(cctx, sid) == before
    assert cctx.tasks.counts() == tasks_before
    session = web.get(f"/v1/chat/sessions/{sid}", headers=as_(BROKE)).json
    assert [m["content"] for m in session["history"]] == ["steel?"] and session["context"] == {"item": "kettle"}
    assert session["stats"]["messages"] == 0


def test_a_message_whose_task_is_too_large_leaves_history_and_context_unchanged(cctx):
    # Each within its own cap (64 KiB of context, 32 Ki characters of message), together
    # past request_content's 256 KiB: a control character is 6 bytes escaped, an emoji 4.
    session = start_chat_session(cctx, "u", "i", "\U0001F600" * (MAX_CHAT_CONTEXT_BYTES // 4 - 1))
    sent = send_chat_message(cctx, session["id"], "a first question")
    before = session_state(cctx, session["id"])
    with pytest.raises(PayloadTooLarge, match="request_content"):
        send_chat_message(cctx, session["id"], "\x01" * MAX_CHAT_MESSAGE_CHARS)
    assert session_state(cctx, session["id"]) == before
    assert [m["message_id"] for m in cctx.chats.history(session["id"])] == [sent["message_id"]]


def test_an_accepted_message_is_in_the_history_and_in_its_task(web, cctx):
    sid = start(web, RICH, {"item": "kettle"})
    first = web.post(f"/v1/chat/sessions/{sid}/messages", json={"message": "steel?"}, headers=as_(RICH))
    second = web.post(f"/v1/chat/sessions/{sid}/messages", json={"message": "price?", "include_context": {"p": 39}},
                      headers=as_(RICH))
    assert first.status_code == second.status_code == 202
    session = web.get(f"/v1/chat/sessions/{sid}", headers=as_(RICH)).json
    assert [m["content"] for m in session["history"]] == ["steel?", "price?"]
    assert session["history"][1]["message_id"] == second.json["message_id"]
    assert session["context"] == {"item": "kettle", "p": 39}
    record = cctx.tasks.get(second.json["task_id"])
    assert record.chat_message_id == second.json["message_id"] and record.tenant == "rich"
    assert record.request_content["messages"] == [
        {"role": "system", "content": '{"item":"kettle","p":39}'},
        {"role": "user", "content": "steel?"}, {"role": "user", "content": "price?"}]
    events = [f["type"] for _, f in cctx.tasks.r.xrange(cctx.chats.keys.chat_stream(sid))]
    assert events == ["chat.session_started", "chat.message", "chat.message"]


def test_a_deeply_nested_context_becomes_a_compact_system_prompt(cctx):
    context: dict[str, object] = {"leaf": [0] * 20_000}
    for depth in range(50):
        context = {f"level{depth}": context}
    session = start_chat_session(cctx, "u", "i", context)  # about 41 KB; indented it was over 1 MB
    sent = send_chat_message(cctx, session["id"], "what is inside?")
    system = cctx.tasks.get(sent["task_id"]).request_content["messages"][0]
    assert system["role"] == "system" and json.loads(system["content"]) == context
    assert len(system["content"]) == len(json.dumps(context, separators=(",", ":")))
    assert [m["content"] for m in cctx.chats.history(session["id"])] == ["what is inside?"]


def test_a_session_keeps_its_latest_messages_only(ctx):
    from aiintegration.domain.chat import HISTORY_KEPT

    session = start_chat_session(ctx, "u", "i", {"about": "a long talk"})
    for i in range(HISTORY_KEPT + 5):
        ctx.chats.append_message(session["id"], {"message_id": str(i), "role": "user", "content": f"m{i}"})
    kept = ctx.chats.history(session["id"])
    assert len(kept) == HISTORY_KEPT and kept[0]["content"] == "m5" and kept[-1]["content"] == f"m{HISTORY_KEPT + 4}"


def test_a_message_that_cannot_be_stored_withdraws_its_answer_task(ctx, monkeypatch):
    session = start_chat_session(ctx, "u", "i", {"about": "mugs"})
    created = []
    real_create = ctx.tasks.create

    def create(*args, **kwargs):
        out = real_create(*args, **kwargs)
        created.append(out[0])
        return out

    def broken(*args, **kwargs):
        raise ConnectionError("redis went away")

    monkeypatch.setattr(ctx.tasks, "create", create)
    monkeypatch.setattr(ctx.chats, "append_message", broken)
    with pytest.raises(ConnectionError):
        send_chat_message(ctx, session["id"], "hello?")
    [task_id] = created
    assert ctx.tasks.get(task_id).status == "cancelled"  # it will never answer a message the history lacks
    assert ctx.chats.history(session["id"]) == []
