"""DLQ and provider management over REST: list, replay, review, discard, switch, config."""

from __future__ import annotations

import json

from aiintegration.commands.create import create_generation_task
from aiintegration.commands.failures import handle_failure
from aiintegration.domain.providers import ProviderConfig
from aiintegration.errors import InvalidRequest, ProviderUnavailable

SECRET = "sk-test-LEAKCHECK-1234567890"


def dead_task(ctx, exc, requested_by="ops-test"):
    task_id, _ = create_generation_task(ctx, task_type="text_generation", request_content={"prompt": "p"},
                                        requested_by=requested_by, options={"max_retries": 0})
    claim = ctx.tasks.claim(task_id, worker_id="w", lease_s=30, max_processing_time=300)
    handle_failure(ctx, claim.record, exc, run_id=claim.record.run_id)
    return task_id


def test_a_dead_lettered_task_can_be_listed_reviewed_and_replayed_once(client, auth, ctx):
    task_id = dead_task(ctx, InvalidRequest("prompt rejected by provider", provider="local"))
    items = client.get("/v1/dlq?error_class=InvalidRequest", headers=auth).json["items"]
    entry = next(i for i in items if i["task_id"] == task_id)
    assert entry["error"]["message"] == "prompt rejected by provider"
    assert {"task_id", "task_type", "requested_by", "provider", "error", "attempts", "dead_lettered_at",
            "review_state", "auto_retries", "notes"} <= set(entry)
    noted = client.post(f"/v1/dlq/{task_id}/review", json={"note": "fixed the prompt template"}, headers=auth)
    assert noted.status_code == 200 and noted.json["notes"][0]["note"] == "fixed the prompt template"
    replayed = client.post(f"/v1/dlq/{task_id}/replay", json={}, headers=auth)
    assert replayed.status_code == 202 and replayed.json["status"] == "queued" and replayed.json["id"] == task_id
    again = client.post(f"/v1/dlq/{task_id}/replay", json={}, headers=auth)
    assert again.status_code == 404  # a replayed entry leaves the DLQ
    assert task_id not in [i["task_id"] for i in client.get("/v1/dlq", headers=auth).json["items"]]


def test_bulk_replay_takes_only_the_matching_entries_and_needs_a_filter(client, auth, ctx):
    flaky = [dead_task(ctx, ProviderUnavailable("503", provider="local"), requested_by="bulk") for _ in range(2)]
    other = dead_task(ctx, InvalidRequest("400", provider="local"), requested_by="bulk")
    assert client.post("/v1/dlq/replay", json={}, headers=auth).status_code == 422
    resp = client.post("/v1/dlq/replay", json={"error_class": "ProviderUnavailable", "requested_by": "bulk"},
                       headers=auth)
    assert resp.status_code == 202 and sorted(resp.json["replayed"]) == sorted(flaky)
    assert ctx.tasks.get(other).status == "dead_lettered"


def test_discarding_an_entry_removes_it_and_unknown_entries_are_404(client, auth, ctx):
    task_id = dead_task(ctx, InvalidRequest("nope", provider="local"))
    assert client.delete(f"/v1/dlq/{task_id}", headers=auth).json["review_state"] == "discarded"
    assert client.post(f"/v1/dlq/{task_id}/replay", json={}, headers=auth).status_code == 404
    assert client.delete("/v1/dlq/00000000-0000-4000-8000-000000000000", headers=auth).status_code == 404


def test_providers_overview_shows_order_breaker_and_no_key(client, auth, ctx):
    body = client.get("/v1/providers", headers=auth).json
    assert body["order"][0] == "local"
    local = next(p for p in body["providers"] if p["name"] == "local")
    assert local["breaker"] == "closed" and local["api_key"] is None and local["kind"] == "local"


def test_switch_moves_the_target_ahead_and_repins_waiting_tasks(client, auth, ctx):
    ctx.providers.put(ProviderConfig("backup", "local"))
    pinned, _ = create_generation_task(ctx, task_type="text_generation", request_content={"prompt": "p"},
                                       requested_by="svc", options={"provider": "local"})
    resp = client.post("/v1/providers/switch", json={"from_provider": "local", "to_provider": "backup",
                                                     "reason": "local is slow"}, headers=auth)
    assert resp.status_code == 200, resp.json
    assert resp.json["order"].index("backup") < resp.json["order"].index("local")
    assert ctx.tasks.get(pinned).options.provider == "backup"
    events = [json.loads(f["data"]) for _, f in ctx.tasks.r.xrange("aii:events") if f["type"] == "provider.switched"]
    assert events and events[-1]["reason"] == "local is slow"
    assert client.post("/v1/providers/switch", json={"from_provider": "local", "to_provider": "nobody",
                                                     "reason": "x"}, headers=auth).status_code == 404


def test_switch_refuses_a_target_whose_breaker_is_open(client, auth, ctx):
    ctx.providers.put(ProviderConfig("broken", "local"))
    breaker = ctx.breakers["broken"]
    for _ in range(ctx.settings.breaker_fail_max):
        breaker.failure()
    resp = client.post("/v1/providers/switch", json={"from_provider": "local", "to_provider": "broken",
                                                     "reason": "try"}, headers=auth)
    assert resp.status_code == 409 and resp.json["error"]["details"]["breaker"] == "open"


def test_a_config_update_is_validated_applied_versioned_and_never_shows_the_key(client, auth, ctx):
    assert client.put("/v1/providers/local/config", json={"timeout_s": "soon"}, headers=auth).status_code == 422
    assert client.put("/v1/providers/local/config", json={"colour": "red"}, headers=auth).status_code == 422
    assert client.put("/v1/providers/ghost/config", json={"timeout_s": 5}, headers=auth).status_code == 404
    resp = client.put("/v1/providers/local/config", json={"timeout_s": 45, "api_key": SECRET}, headers=auth)
    assert resp.status_code == 200, resp.json
    assert resp.json["timeout_s"] == 45 and resp.json["api_key"] == "sk-…7890"
    assert SECRET not in resp.get_data(as_text=True)
    assert SECRET not in client.get("/v1/providers", headers=auth).get_data(as_text=True)
    assert all(SECRET not in json.dumps(f) for _, f in ctx.tasks.r.xrange("aii:events"))
    assert ctx.providers.history("local")  # the previous version is kept


def test_the_operator_cli_lists_reviews_and_replays_the_dlq(ctx, capsys, monkeypatch, request):
    from aiintegration import cli
    from aiintegration.config import get_settings

    task_id = dead_task(ctx, InvalidRequest("cli case", provider="local"))
    monkeypatch.setenv("REDIS_URL", ctx.settings.redis_url)  # the CLI builds its context from the environment
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)  # runs before the environment is restored
    assert cli.main(["dlq", "list", "--error-class", "InvalidRequest"]) == 0
    assert task_id in capsys.readouterr().out
    assert cli.main(["dlq", "review", task_id, "--note", "looked at it"]) == 0
    assert cli.main(["dlq", "replay", task_id]) == 0
    assert json.loads(capsys.readouterr().out.split("\n}\n")[-1] or "{}") is not None
    assert ctx.tasks.get(task_id).status == "queued"
    assert cli.main(["status", task_id]) == 0 and '"queued"' in capsys.readouterr().out
    assert cli.main(["providers"]) == 0 and '"order"' in capsys.readouterr().out
    assert cli.main(["dlq", "replay", task_id]) == 1  # already replayed: a message, not a traceback
