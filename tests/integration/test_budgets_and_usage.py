"""Budgets per tenant refuse submissions once spent (429 budget_exceeded, Retry-After to the
window's end) and free what a finished task did not use; the usage ledger, the tasks' costs
and aii_cost_total agree to the cent; cached prompt tokens are priced apart."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from aiintegration.commands.create import create_generation_task
from aiintegration.domain.auth import Caller, Role, parse_tokens
from aiintegration.domain.budgets import parse_budgets
from aiintegration.domain.providers import ProviderConfig
from aiintegration.web import create_app
from tests.fake_provider import Behaviour, FakeProvider
from tests.support import Worker, make_context, wait_for, wait_status

TINY, RICH, OPS = "tiny-token-0123456789ab", "rich-token-0123456789ab", "ops-token-budgets-012345"
KEYED, SPENT = "keyed-token-0123456789ab", "spent-token-0123456789ab"
TOKENS = json.dumps({TINY: {"name": "tiny", "role": "client"}, RICH: {"name": "rich", "role": "client"},
                     OPS: {"name": "platform", "role": "operator"}, KEYED: {"name": "keyed", "role": "client"},
                     SPENT: {"name": "spent", "role": "client"}})
KEY = "sk-test-LEAKCHECK-budgets-0123456789"
BODY = {"task_type": "text_generation", "request_content": {"prompt": "hello there", "max_tokens": 100},
        "requested_by": "budget-test"}


def as_(token):
    return {"Authorization": f"Bearer {token}"}


def budget_of(web, tenant):
    (view,) = [b for b in web.get("/v1/budgets", headers=as_(OPS)).json["items"] if b["tenant"] == tenant]
    return view


@pytest.fixture(scope="module")
def bctx(db):
    return make_context(db, api_tokens=parse_tokens(TOKENS), budgets=parse_budgets(
        '{"tiny": {"daily_tokens": 250}, "keyed": {"daily_tokens": 100000}, "spent": {"daily_tokens": 250}}'))


@pytest.fixture(scope="module")
def web(bctx):
    return create_app({"AII_CONTEXT": bctx, "TESTING": True}).test_client()


def test_a_spent_budget_refuses_new_work_until_its_window_ends_and_accepted_work_finishes(web, bctx, db):
    bctx.providers.set_order(["local"])
    accepted = []
    for _ in range(5):
        resp = web.post("/v1/tasks", json=BODY, headers=as_(TINY))
        if resp.status_code != 202:
            break
        accepted.append(resp.json["id"])
    # each reserves ~103 tokens (prompt + max_tokens): the third crosses 250, the fourth is refused
    assert len(accepted) == 3
    assert resp.status_code == 429 and resp.json["error"]["code"] == "budget_exceeded"
    midnight = (86400 - datetime.now(UTC).timestamp() % 86400)
    assert abs(int(resp.headers["Retry-After"]) - midnight) < 5
    assert web.post("/v1/tasks", json=BODY, headers=as_(RICH)).status_code == 202  # another tenant's is its own
    view = budget_of(web, "tiny")
    assert view["day"]["reserved"]["tokens"] > 250
    assert web.get("/v1/budgets", headers=as_(TINY)).status_code == 403
    with Worker(db, concurrency=4):
        records = [wait_status(bctx, task_id, ["succeeded"]) for task_id in accepted]
    used = sum(r.result["usage"]["input_tokens"] + r.result["usage"]["output_tokens"] for r in records)
    view = budget_of(web, "tiny")
    assert view["day"]["reserved"]["tokens"] == pytest.approx(0, abs=1e-6)  # released by the finishing transitions
    assert view["day"]["spent"]["tokens"] == used < 250  # the local answers were short
    assert web.post("/v1/tasks", json=BODY, headers=as_(TINY)).status_code == 202  # room again
    assert not bctx.tasks.r.keys("aii:budget:rich:*")  # a tenant without a budget reserves and releases nothing
    (row,) = web.get("/v1/usage?tenant=tiny", headers=as_(OPS)).json["items"]  # amounts of 0 read as 0
    assert row["requests"] == 3 and row["input_tokens"] + row["output_tokens"] == used
    assert row["cached_input_tokens"] == 0 and row["cost"] == 0.0


def test_usage_the_tasks_costs_and_the_cost_metric_agree_and_cached_tokens_are_priced_apart(web, bctx, db):
    with FakeProvider() as fake:
        fake.default = Behaviour(words=40, cached_tokens=1000)
        bctx.providers.put(ProviderConfig("openai", "openai", api_key=KEY, base_url=fake.base_url, timeout_s=10))
        bctx.providers.set_order(["openai"])
        prompt = {"prompt": "word " * 1500, "max_tokens": 50}
        with Worker(db, concurrency=4):
            ids = [web.post("/v1/tasks", json={**BODY, "request_content": prompt}, headers=as_(RICH)).json["id"]
                   for _ in range(3)]
            records = [wait_status(bctx, task_id, ["succeeded"]) for task_id in ids]
    usage = records[0].result["usage"]
    prompt_tokens, output = usage["input_tokens"], usage["output_tokens"]
    # gpt-4o-mini (built-in prices, USD per 1k): 0.00015 input, 0.000075 cached input, 0.0006 output
    by_hand = ((prompt_tokens - 1000) * 0.00015 + 1000 * 0.000075 + output * 0.0006) / 1000
    assert records[0].cost == pytest.approx(by_hand, abs=1e-9), (usage, records[0].result)
    assert usage["cached_input_tokens"] == 1000
    rows = [r for r in web.get("/v1/usage?tenant=rich", headers=as_(OPS)).json["items"] if r["model"] == "gpt-4o-mini"]
    (row,) = rows
    assert row["requests"] == 3 and row["cached_input_tokens"] == 3000
    assert round(row["cost"], 2) == round(sum(r.cost for r in records), 2)
    assert row["cost"] == pytest.approx(sum(r.cost for r in records), abs=1e-9)
    everyone = sum(r["cost"] for r in web.get("/v1/usage", headers=as_(OPS)).json["items"] if r["provider"] == "openai")

    def exported() -> float:
        return sum(float(m.group(1)) for m in re.finditer(
            r'aii_cost_total\{provider="openai",task_type="text_generation"\} ([0-9.e+-]+)',
            web.get("/metrics").get_data(as_text=True)))
    # /metrics follows the ledger within the worker's metrics flush (every tenant's openai
    # calls: tiny's last one ran here too)
    wait_for(lambda: exported() == pytest.approx(everyone, abs=1e-9), timeout_s=5, what="aii_cost_total = the ledger")
    assert web.get("/v1/usage?tenant=tiny", headers=as_(RICH)).status_code == 403
    mine = web.get("/v1/usage", headers=as_(RICH)).json["items"]
    assert mine and {r["tenant"] for r in mine} == {"rich"}


def test_a_repeated_or_refused_idempotent_submission_holds_no_budget(web, bctx):
    """Only the task a key created holds a reservation: a repeat gives its own back, and a
    key reused for another request (422, nothing stored) leaves nothing reserved either."""
    bctx.providers.set_order(["local"])

    def held() -> float:
        return budget_of(web, "keyed")["day"]["reserved"]["tokens"]

    headers = {**as_(KEYED), "Idempotency-Key": "order-42"}
    first = web.post("/v1/tasks", json=BODY, headers=headers)
    assert first.status_code == 202
    one = held()
    assert one > 0
    again = web.post("/v1/tasks", json=BODY, headers=headers)
    assert again.json["id"] == first.json["id"] and held() == one
    other = web.post("/v1/tasks", json={**BODY, "request_content": {"prompt": "something else"}}, headers=headers)
    assert other.status_code == 422 and other.json["error"]["code"] == "idempotency_key_reused"
    assert held() == one  # was one + the refused request's estimate before


def test_a_repeat_of_an_accepted_request_gets_its_task_after_the_budget_is_spent(web, bctx):
    """A client that retries an accepted request (its answer was lost) or a redelivered
    message by name gets the task it made, not 429 `budget_exceeded`; nothing more is held."""
    bctx.providers.set_order(["local"])
    keyed = {**as_(SPENT), "Idempotency-Key": "invoice-7"}
    first = web.post("/v1/tasks", json=BODY, headers=keyed)
    assert first.status_code == 202
    for _ in range(5):  # ~103 tokens each against 250: the budget is spent by the third
        if web.post("/v1/tasks", json=BODY, headers=as_(SPENT)).status_code == 429:
            break
    spent = budget_of(web, "spent")["day"]["reserved"]
    again = web.post("/v1/tasks", json=BODY, headers=keyed)
    assert again.status_code in (200, 202) and again.json["id"] == first.json["id"]  # was 429
    other = web.post("/v1/tasks", json={**BODY, "request_content": {"prompt": "other"}}, headers=keyed)
    assert other.status_code == 422 and other.json["error"]["code"] == "idempotency_key_reused"
    redelivered = create_generation_task(bctx, caller=Caller("spent", Role.CLIENT), task_type=BODY["task_type"],
                                         request_content=BODY["request_content"], requested_by="by-name",
                                         task_id=first.json["id"], enqueue=False)
    assert redelivered == (first.json["id"], False)
    assert budget_of(web, "spent")["day"]["reserved"] == spent
