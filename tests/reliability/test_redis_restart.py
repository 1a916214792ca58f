"""Valkey restarted in the middle of a run (AOF on): every task that got a 202 finishes, and
the worker, beat and the web app reconnect by themselves — nobody restarts them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from aiintegration.embedded import EmbeddedValkey
from aiintegration.web import create_app
from tests.conftest import TOKEN
from tests.reliability.conftest import CRASH_ENV, state, summary
from tests.support import Beat, Worker, context_for, wait_for
from tests.support.secrets import redis_leaks

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {**CRASH_ENV, "AII_PENDING_INTERVAL_S": "1", "AII_PENDING_GRACE_S": "3", "AII_CLEANUP_INTERVAL_S": "1"}


def submit(web, n: int, tag: str) -> tuple[list[str], list[int]]:
    accepted, refused = [], []
    for i in range(n):
        resp = web.post("/v1/tasks", headers=AUTH, json={
            "task_type": "text_generation", "request_content": {"prompt": f"{tag} {i}"}, "requested_by": "restart"})
        if resp.status_code == 202:
            accepted.append(resp.json["id"])
        else:
            refused.append(resp.status_code)
    return accepted, refused


def test_every_accepted_task_finishes_across_a_valkey_restart():
    data = Path(os.environ["AII_TEST_TMP"]) / f"restart-valkey-{time.time_ns()}"
    valkey = EmbeddedValkey(data, appendonly=True).start()
    url = valkey.url
    ctx = context_for(url)
    ctx.providers.put(ctx.providers.get("local").with_changes(extra={"latency_ms": 50}))
    web = create_app({"AII_CONTEXT": ctx, "TESTING": True}).test_client()
    env = {**ENV, "REDIS_URL": url}
    worker, beat = Worker(0, concurrency=4, env=env, name="restart"), Beat(0, env=env, name="restart-beat")
    try:
        worker.start()
        beat.start()
        before, _ = submit(web, 150, "before")
        assert len(before) == 150
        wait_for(lambda: ctx.tasks.count("succeeded") >= 20, timeout_s=30, what="some work done")

        valkey.stop()  # SIGTERM: the server writes its AOF and exits
        during, refused = submit(web, 5, "during")
        assert not during and set(refused) == {503}, refused  # clear refusal, nothing half-stored
        time.sleep(2)
        valkey.start()

        after, refused = submit(web, 50, "after")  # the web app's own clients reconnect
        assert len(after) == 50, refused
        accepted = before + after
        wait_for(lambda: summary(ctx.tasks.get_many(accepted)) == {"succeeded": len(accepted)}, timeout_s=120,
                 interval_s=0.5, what="every accepted task succeeded")
        assert not redis_leaks(ctx.tasks.r)  # this server is outside the per-module sweep
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nstate: {state(ctx)}\nworker log tail:\n{worker.output()[-3000:]}") from None
    finally:
        worker.kill()
        beat.kill()
        valkey.stop()
