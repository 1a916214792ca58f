"""Flower from the Procfile's command line: basic auth, our tasks with their arguments, and a
Flower restarted while a worker keeps running."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from aiintegration.embedded import free_port
from tests.support import ROOT, Worker, redis_url, wait_for, wait_status

CREDS = "ops:pw-123"


def submit(client, auth):
    body = {"task_type": "text_generation", "request_content": {"prompt": "flower"}, "requested_by": "ops"}
    return client.post("/v1/tasks", json=body, headers=auth).json["id"]


def status(url: str, creds: str | None = None) -> int:
    req = urllib.request.Request(url)
    if creds:
        req.add_header("Authorization", "Basic " + base64.b64encode(creds.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def flower_tasks(port: int) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/tasks")
    req.add_header("Authorization", "Basic " + base64.b64encode(CREDS.encode()).decode())
    with urllib.request.urlopen(req, timeout=2) as resp:
        return json.loads(resp.read())


def wait_listed(port: int, task_id: str) -> None:
    def listed() -> bool:
        return any(t.get("name") == "aiintegration.process_task" and task_id in (t.get("kwargs") or "")
                   for t in flower_tasks(port).values())

    try:
        wait_for(listed, timeout_s=20, interval_s=0.5, what="flower to list the task")
    except AssertionError:
        raise AssertionError(json.dumps(flower_tasks(port))[:1500]) from None


@contextmanager
def flower(db: int) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url(db)}
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "aiintegration.celery_app", "flower",
                             f"--port={port}", "--address=127.0.0.1", f"--basic-auth={CREDS}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for(lambda: status(f"http://127.0.0.1:{port}/") == 401, timeout_s=30, what="flower up")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_flower_needs_basic_auth_and_lists_our_tasks(client, auth, ctx, db):
    # Flower starts first so it follows the worker's events from the worker's start.
    with flower(db) as port:
        with Worker(db, concurrency=2):
            task_id = submit(client, auth)
            wait_status(ctx, task_id, ["succeeded"])
        wait_listed(port, task_id)
        assert status(f"http://127.0.0.1:{port}/api/tasks", "ops:wrong") == 401
        # The broker view and queue lengths read the broker URL's scheme (they broke once
        # when the transport was selected by class path).
        assert status(f"http://127.0.0.1:{port}/api/queues/length", CREDS) == 200
        assert status(f"http://127.0.0.1:{port}/broker", CREDS) == 200


def test_a_flower_started_after_the_worker_follows_the_tasks_that_run_after_it(client, auth, ctx, db):
    """An operator restarting Flower while workers keep running: it lists what runs after its
    event receiver subscribed. Celery events are pub/sub, so what ran before that (including
    the first ~0.25 s after Flower's web server answers) is not replayed: that was the late
    Flower that once "saw no events" in an earlier session."""
    with Worker(db, concurrency=2):
        wait_status(ctx, submit(client, auth), ["succeeded"])
        time.sleep(3)  # the worker has been up a while before Flower starts
        with flower(db) as port:
            time.sleep(1)  # its event receiver subscribes a moment after the web server is up
            task_id = submit(client, auth)
            wait_status(ctx, task_id, ["succeeded"])
            wait_listed(port, task_id)


def test_flower_shows_ids_and_sizes_never_keys_prompts_or_chat_messages(client, auth, ctx, db):
    """A plain Celery client puts the repr of every argument in the message; the worker tells
    Flower ids and sizes only (tasks/__init__.py SafeRequest). Part of the secrets sweep."""
    from tests.support import celery_for
    from tests.support.secrets import MARKER

    prompt, secret_key = "PROMPT-NOT-FOR-FLOWER about a blue mug", f"sk-{MARKER}-flower-0123456789abcdef"
    by_name = celery_for(redis_url(db))
    with flower(db) as port, Worker(db, concurrency=2):
        created = by_name.send_task("aiintegration.create_generation_task", kwargs={
            "task_type": "text_generation", "request_content": {"prompt": prompt}, "requested_by": "flower-test",
            "tenant": "billing"}).get(timeout=15)
        by_name.send_task("aiintegration.update_provider_config", kwargs={
            "provider": "local", "config": {"api_key": secret_key}}).get(timeout=15)
        session = by_name.send_task("aiintegration.start_chat_session", kwargs={
            "user_id": "u", "item_id": "i", "initial_context": prompt}).get(timeout=15)
        by_name.send_task("aiintegration.send_chat_message", kwargs={
            "session_id": session["session"]["id"], "message": prompt}).get(timeout=15)
        wait_status(ctx, created["id"], ["succeeded"])

        def everything_listed() -> bool:
            listed = flower_tasks(port)
            names = {t.get("name") for t in listed.values()}
            return created["id"] in listed and {  # by name, one message: the create's runs the attempt
                "aiintegration.update_provider_config", "aiintegration.send_chat_message"} <= names

        wait_for(everything_listed, timeout_s=20, interval_s=0.5, what="flower to list the calls by name")
        shown = json.dumps(flower_tasks(port))
    assert MARKER not in shown and "PROMPT-NOT-FOR-FLOWER" not in shown
    assert created["id"] in shown and "'tenant': 'billing'" in shown and "<object, 1 keys>" in shown
