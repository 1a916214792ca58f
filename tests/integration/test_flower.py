"""Flower from the Procfile's command line: basic auth, and our tasks with their arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

from aiintegration.embedded import free_port
from tests.support import ROOT, Worker, redis_url, wait_for, wait_status


def submit(client, auth):
    body = {"task_type": "text_generation", "request_content": {"prompt": "flower"}, "requested_by": "ops"}
    return client.post("/v1/tasks", json=body, headers=auth).json["id"]


def test_flower_needs_basic_auth_and_lists_our_tasks(client, auth, ctx, db):
    # Flower starts first so it follows the worker's events from the worker's start.
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url(db)}
    flower = subprocess.Popen([sys.executable, "-m", "celery", "-A", "aiintegration.celery_app", "flower",
                               f"--port={port}", "--address=127.0.0.1", "--basic-auth=ops:pw-123"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        def status(url: str, creds: str | None = None) -> int:
            req = urllib.request.Request(url)
            if creds:
                import base64
                req.add_header("Authorization", "Basic " + base64.b64encode(creds.encode()).decode())
            try:
                with urllib.request.urlopen(req, timeout=2) as resp:
                    return resp.status
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:
                return 0

        wait_for(lambda: status(f"http://127.0.0.1:{port}/") == 401, timeout_s=30, what="flower up")
        with Worker(db, concurrency=2):
            task_id = submit(client, auth)
            wait_status(ctx, task_id, ["succeeded"])

        def listed() -> bool:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/tasks")
            import base64
            req.add_header("Authorization", "Basic " + base64.b64encode(b"ops:pw-123").decode())
            with urllib.request.urlopen(req, timeout=2) as resp:
                tasks = json.loads(resp.read())
            return any(t.get("name") == "aiintegration.process_task" and task_id in (t.get("kwargs") or "")
                       for t in tasks.values())

        try:
            wait_for(listed, timeout_s=20, interval_s=0.5, what="flower to list the task")
        except AssertionError:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/tasks")
            import base64
            req.add_header("Authorization", "Basic " + base64.b64encode(b"ops:pw-123").decode())
            raise AssertionError(urllib.request.urlopen(req, timeout=2).read()[:1500]) from None
        assert status(f"http://127.0.0.1:{port}/api/tasks", "ops:wrong") == 401
        # The broker view and queue lengths read the broker URL's scheme (they broke once
        # when the transport was selected by class path).
        assert status(f"http://127.0.0.1:{port}/api/queues/length", "ops:pw-123") == 200
        assert status(f"http://127.0.0.1:{port}/broker", "ops:pw-123") == 200
    finally:
        flower.terminate()
        flower.wait(10)
