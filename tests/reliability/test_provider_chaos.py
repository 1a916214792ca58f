"""Provider chaos through the fake provider server and the real openai SDK in a real worker:
30% 5xx, 10% 429 with Retry-After, 5% hangs past the call timeout, 3% 400s. Every task ends
`succeeded` or in the DLQ with the right cause: transient faults are retried at most 3 times
(then `retries_exhausted`), a 400 goes to the DLQ at once; nothing is left running."""

from __future__ import annotations

from collections import Counter

import pytest

from aiintegration.domain.providers import ProviderConfig
from tests.fake_provider import Behaviour, FakeProvider
from tests.reliability.conftest import event_counts, summary, wait_all_terminal
from tests.support import Worker, events_of

N = 150
TRANSIENT = {"ProviderUnavailable", "RateLimited", "ProviderTimeout"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_chaos_ends_every_task_succeeded_or_dead_lettered_for_the_right_reason(client, auth, ctx, db):
    with FakeProvider(seed=11) as server:
        server.default = Behaviour(fail_rate={500: 0.15, 503: 0.15, 429: 0.10, 400: 0.03}, hang_rate=0.05,
                                   hang_s=6.0)
        # One provider, no fallback, a breaker that stays closed: this is about the retry policy.
        ctx.providers.put(ProviderConfig("openai", "openai", api_key="sk-chaos-LEAKCHECK-0123456789",
                                         base_url=server.base_url, timeout_s=1.0))
        ctx.providers.set_order(["openai"])
        env = {"AII_BREAKER_FAIL_MAX": "100000", "AII_RETRY_AFTER_MAX_S": "1"}
        with Worker(db, concurrency=32, env=env, name="chaos"):
            ids = []
            for i in range(N):
                resp = client.post("/v1/tasks", headers=auth, json={
                    "task_type": "text_generation", "request_content": {"prompt": f"chaos {i}"},
                    "requested_by": "chaos", "options": {"provider": "openai"}})
                assert resp.status_code == 202, resp.json
                ids.append(resp.json["id"])
            wait_all_terminal(ctx, N, timeout_s=240)
        statuses = Counter(r.status for r in ctx.tasks.get_many(ids))

    records = ctx.tasks.get_many(ids)
    assert set(summary(records)) <= {"succeeded", "dead_lettered"}, summary(records)
    assert ctx.tasks.count("running") == 0 and ctx.tasks.count("retrying") == 0
    counts = event_counts(ctx, ids)
    for record, events in zip(records, counts, strict=True):
        assert record.attempts <= 4, record  # the first attempt and at most 3 retries
        assert events["task.started"] == record.attempts
        if record.status == "succeeded":
            assert events["task.succeeded"] == 1 and events["task.dead_lettered"] == 0
            continue
        error_class = record.error["class"]
        if error_class == "InvalidRequest":  # permanent: no retry after it
            assert events["task.retrying"] == record.attempts - 1
            assert events["task.dead_lettered"] == 1
        else:
            assert error_class in TRANSIENT, record.error
            assert record.attempts == 4, record
        assert record.error.get("provider") == "openai"
    reasons = Counter((e["reason"], e["error_class"]) for tid in ids for e in events_of(ctx, tid)
                      if e["type"] == "task.dead_lettered")
    # Every kind of fault really happened, and the policy really absorbed most of them.
    retry_causes = Counter(e["reason"] for tid in ids for e in events_of(ctx, tid) if e["type"] == "task.retrying")
    assert {"provider_unavailable", "rate_limited", "provider_timeout"} <= set(retry_causes), retry_causes
    assert statuses["succeeded"] >= N * 0.8, (statuses, reasons)
    assert ("permanent_error", "InvalidRequest") in reasons, reasons
    print(f"chaos: {dict(statuses)}, dead-letter reasons {dict(reasons)}, retries {dict(retry_causes)}")
    assert all(reason == ("permanent_error", "InvalidRequest") or reason[0] == "retries_exhausted"
               for reason in reasons), reasons
