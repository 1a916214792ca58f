"""The role is checked before the arguments (SPEC §5): a client calling an operator-only route
gets 403 `forbidden` whatever its arguments are, never a 422 that describes the route's
arguments, and nothing is written; operators still get their arguments validated."""

from __future__ import annotations

import json

import pytest

from aiintegration.domain.auth import parse_tokens
from aiintegration.web import create_app
from tests.support import make_context

ALICE, OPS = "alice-token-roles-0123456789", "ops-token-roles-0123456789ab"
TOKENS = json.dumps({ALICE: {"name": "alice", "role": "client"}, OPS: {"name": "platform", "role": "operator"}})
UNKNOWN = "00000000-0000-4000-8000-000000000000"

# Every one of these is malformed: an operator gets 422 for each.
MALFORMED = [
    ("PUT", "/v1/providers/x/config", {"api_key": 5}),
    ("PUT", "/v1/providers/local/config", {"timeout_s": "soon"}),
    ("POST", f"/v1/dlq/{UNKNOWN}/review", {}),
    ("POST", f"/v1/dlq/{UNKNOWN}/replay", {"reason": ""}),
    ("POST", "/v1/dlq/replay", {"task_type": "poetry"}),
    ("GET", "/v1/dlq?limit=0", None),
    ("POST", "/v1/providers/switch", {}),
    ("GET", "/v1/batches?status=nonsense", None),
    ("GET", "/v1/tasks?tenant=bob&limit=0", None),
    ("GET", "/v1/tasks?tenant=bob&cursor=nonsense", None),
    ("GET", "/v1/tasks?tenant=!!", None),
    ("GET", "/v1/usage?tenant=bob&from=yesterday", None),
    ("GET", "/v1/usage?tenant=alice&tenant=bob&to=tomorrow", None),
]


def as_(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def rctx(db):
    return make_context(db, api_tokens=parse_tokens(TOKENS))


@pytest.fixture(scope="module")
def web(rctx):
    return create_app({"AII_CONTEXT": rctx, "TESTING": True}).test_client()


def snapshot(rctx):
    rctx.metrics.flush()
    r = rctx.tasks.r
    return {key: r.dump(key) for key in sorted(r.scan_iter("aii:*")) if not key.startswith("aii:feeds:")}


@pytest.mark.parametrize("method,path,body", MALFORMED)
def test_a_client_gets_403_from_an_operator_route_before_its_arguments_are_read(web, rctx, method, path, body):
    before = snapshot(rctx)
    resp = web.open(path, method=method, json=body, headers=as_(ALICE))
    assert resp.status_code == 403 and resp.json["error"]["code"] == "forbidden", resp.json
    assert snapshot(rctx) == before


@pytest.mark.parametrize("method,path,body", MALFORMED)
def test_an_operator_still_gets_the_same_requests_validated(web, method, path, body):
    resp = web.open(path, method=method, json=body, headers=as_(OPS))
    assert resp.status_code == 422 and resp.json["error"]["code"] == "validation_error", resp.json


@pytest.mark.parametrize("path", ["/v1/tasks?limit=0", "/v1/usage?from=yesterday",
                                  "/v1/usage?tenant=alice&from=yesterday"])
def test_a_client_asking_only_about_its_own_tenant_is_validated_like_anyone(web, path):
    resp = web.get(path, headers=as_(ALICE))
    assert resp.status_code == 422 and resp.json["error"]["code"] == "validation_error", resp.json


def test_a_client_still_reads_its_own_usage_and_the_providers(web):
    assert web.get("/v1/usage?tenant=alice", headers=as_(ALICE)).status_code == 200
    assert web.get("/v1/usage", headers=as_(ALICE)).status_code == 200
    assert web.get("/v1/providers", headers=as_(ALICE)).status_code == 200
    assert web.get("/v1/tasks", headers=as_(ALICE)).status_code == 200


def test_budgets_are_refused_to_a_client(web):
    resp = web.get("/v1/budgets", headers=as_(ALICE))
    assert resp.status_code == 403 and resp.json["error"]["code"] == "forbidden"
    assert web.get("/v1/budgets", headers=as_(OPS)).status_code == 200
