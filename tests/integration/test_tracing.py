"""One trace from POST /v1/tasks to the provider call, across processes: gunicorn as the
Procfile runs it and a real worker, each writing its spans to a file (AII_OTEL_FILE), the
context carried by the Celery message and stored with the record. And the worker's one log
line per attempt outcome, which names the Celery message id Flower shows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from aiintegration.domain.providers import ProviderConfig
from aiintegration.embedded import free_port
from tests.conftest import TOKEN
from tests.fake_provider import FakeProvider, Fault
from tests.support import Web, Worker, wait_for, wait_status

AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEY = "sk-test-LEAKCHECK-tracing-0123456789"


def spans(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def traced(ctx, db):
    tmp = Path(os.environ["AII_TEST_TMP"]) / f"otel-{db}"
    tmp.mkdir(exist_ok=True)
    files = {"web": tmp / "web.jsonl", "worker": tmp / "worker.jsonl"}
    with FakeProvider() as fake:
        ctx.providers.put(ProviderConfig("openai", "openai", api_key=KEY, base_url=fake.base_url, timeout_s=10))
        ctx.providers.set_order(["openai", "local"])
        worker_env = {"AII_OTEL_FILE": str(files["worker"]), "AII_LOG_FORMAT": "json"}
        with Worker(db, concurrency=4, env=worker_env) as worker, \
                Web(db, free_port(), env={"AII_OTEL_FILE": str(files["web"])}) as web:
            yield f"http://127.0.0.1:{web.port}", fake, files, worker


def test_one_trace_runs_from_the_request_through_every_attempt_to_the_provider_call(traced, ctx):
    base, fake, files, _ = traced
    fake.script(Fault(status=500))  # the first attempt fails: the retry must join the same trace
    body = {"task_type": "text_generation", "request_content": {"prompt": "trace me"}, "requested_by": "otel",
            "options": {"provider": "openai", "max_retries": 2}}
    task_id = httpx.post(f"{base}/v1/tasks", json=body, headers=AUTH).json()["id"]
    wait_status(ctx, task_id, ["succeeded"], timeout_s=20)

    def attempts() -> list[dict]:
        return [s for s in spans(files["worker"]) if s["name"] == "aiintegration.attempt"
                and s["attributes"].get("aiintegration.task_id") == task_id]

    wait_for(lambda: len(attempts()) == 2, timeout_s=10, what="both attempts' spans")
    request = next(s for s in spans(files["web"]) if s["attributes"].get("http.route") == "/v1/tasks"
                   or s["name"].startswith("POST /v1/tasks"))
    trace_id = request["context"]["trace_id"]
    assert {s["context"]["trace_id"] for s in attempts()} == {trace_id}
    published = [s for s in spans(files["web"]) if "process_task" in s["name"]]
    assert published and published[0]["context"]["trace_id"] == trace_id  # Celery's publish span
    worker = spans(files["worker"])
    calls = [s for s in worker if s["context"]["trace_id"] == trace_id and s["name"].startswith("chat ")]
    assert len(calls) == 2
    failed, ok = sorted(calls, key=lambda s: s["start_time"])
    assert failed["attributes"]["error.type"] == "provider_unavailable" and failed["status"]["status_code"] == "ERROR"
    attrs = ok["attributes"]
    assert attrs["gen_ai.system"] == "openai" and attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    attempt_ids = {s["context"]["span_id"] for s in attempts()}
    assert {c["parent_id"] for c in calls} == attempt_ids  # each call inside its own attempt


def test_each_attempt_leaves_one_json_line_that_leads_to_its_record_and_to_flower(traced, ctx):
    base, _, _, worker = traced
    body = {"task_type": "text_generation", "request_content": {"prompt": "log me"}, "requested_by": "logs",
            "options": {"provider": "openai"}}
    task_id = httpx.post(f"{base}/v1/tasks", json=body, headers=AUTH).json()["id"]
    wait_status(ctx, task_id, ["succeeded"])

    def lines() -> list[dict]:
        out = []
        for raw in worker.output().splitlines():
            if raw.startswith("{") and task_id in raw:
                record = json.loads(raw)
                if record.get("logger") == "aiintegration.attempts":
                    out.append(record)
        return out

    (line,) = wait_for(lines, timeout_s=10, what="the attempt's log line")
    assert line["status"] == "succeeded" and line["attempt"] == 1 and line["provider"] == "openai"
    assert line["model"] == "gpt-4o-mini" and line["input_tokens"] > 0 and line["duration_s"] > 0
    assert line["celery_id"] == f"{task_id}.1"  # the message id Flower lists for this attempt
    assert "cost" in line and line["tenant"] == "default"
