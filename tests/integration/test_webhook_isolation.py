"""Hanging webhook receivers do not slow generation. One real worker (threads, -c 8, two
webhook delivery slots, a 2 s cap per delivery) runs generation tasks alone, then while as
many webhook deliveries as it has threads hang on a tarpit (an answer trickled a byte every
1.5 s, an endless body); generation tasks/s are compared in the same run."""

from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aiintegration.commands.create import create_generation_task
from tests.support import Worker, make_context, wait_for, wait_status
from tests.support.tarpit import Tarpit

THREADS = 8
SLOTS = int(os.environ.get("AII_TEST_WEBHOOK_SLOTS", "2"))  # 8 (no bound below -c) makes the test fail
CAP_S = 2.0
TASKS = 600  # per round; each rate is the best of two rounds (other work on the machine comes and goes)
TRICKLING, ENDLESS = THREADS, 2
LATENCY_MS = 5.0  # the local provider's answer: 8 threads keep the worker's one core busy
# Measured on this 2-core machine, shared with other test runs and a CPU hog at times:
# 0.73x-1.49x over 20 runs with two slots. With the cap but as many slots as threads:
# 0.5x-0.65x, and the tarpit sees 8 deliveries at once (the max_open check below). The code
# before the cap and the slots (a per-read timeout, the whole body read) held a thread per
# delivery for the 57 s the trickled answer takes and read the endless body for ever: 0.23x,
# and the test ran out of time.
MIN_RATIO = 0.6


@pytest.fixture(scope="module")
def tarpit():
    receiver = Tarpit(interval_s=1.5)  # a per-read timeout of 2 s never expires
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def ctx(db):
    """The first context on the database seeds the local provider's config, latency included."""
    return make_context(db, local_latency_ms=LATENCY_MS)


@pytest.fixture(scope="module")
def worker(db, ctx):
    env = {"AII_WEBHOOK_ALLOW_PRIVATE": "1", "AII_WEBHOOK_TIMEOUT_S": str(CAP_S),
           "AII_WEBHOOK_CONCURRENCY": str(SLOTS)}
    with Worker(db, concurrency=THREADS, env=env, name="isolation") as w:
        yield w


class Receiver(BaseHTTPRequestHandler):
    """A well-behaved receiver: reads the delivery, answers 204 at once."""

    received: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append(self.headers["X-AII-Task-Id"])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def submit(ctx, prompt: str, callback_url: str | None = None) -> str:
    options = {"callback_url": callback_url} if callback_url else {}
    task_id, _ = create_generation_task(ctx, task_type="text_generation", request_content={"prompt": prompt},
                                        requested_by="isolation", options=options)
    return task_id


def generation_rate(ctx, n: int, label: str) -> float:
    """Tasks/s from the first submission to the n-th success."""
    before = ctx.tasks.count("succeeded")
    started = time.monotonic()
    for i in range(n):
        submit(ctx, f"{label} {i}")
    wait_for(lambda: ctx.tasks.count("succeeded") >= before + n, timeout_s=60, interval_s=0.02,
             what=f"{n} generation tasks ({label})")
    return n / (time.monotonic() - started)


def test_hanging_webhook_receivers_do_not_slow_generation(ctx, worker, tarpit):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        generation_rate(ctx, TASKS // 4, "warm-up")  # pool threads, connections
        without = max(generation_rate(ctx, TASKS, f"without {i}") for i in range(2))

        trickling = [submit(ctx, f"trickle {i}", tarpit.url("/trickle")) for i in range(TRICKLING)]
        endless = [submit(ctx, f"endless {i}", tarpit.url("/endless")) for i in range(ENDLESS)]
        normal = submit(ctx, "normal", f"http://127.0.0.1:{server.server_address[1]}/hook")
        for task_id in [*trickling, *endless, normal]:
            wait_status(ctx, task_id, ["succeeded"])
        finished = time.monotonic()
        wait_for(lambda: tarpit.open >= min(SLOTS, THREADS), what="the tarpit holding every delivery slot")
        with_tarpit = max(generation_rate(ctx, TASKS, f"with tarpit {i}") for i in range(2))
        print(f"\ngeneration tasks/s, worker threads -c {THREADS}, {SLOTS} webhook slots: "
              f"{without:.0f} without the tarpit, {with_tarpit:.0f} with {TRICKLING + ENDLESS} deliveries "
              f"hanging on it ({with_tarpit / without:.2f}x)")

        # Waiting deliveries take free slots in no particular order: the well-behaved
        # receiver's turn comes within about (deliveries ahead x cap / slots), ~10 s here.
        # Trickled deliveries fail at the cap and come back as retries.
        came: dict[str, float] = {}

        def settled() -> bool:
            for what, done in (("normal", normal in Receiver.received),
                               ("endless", all(t in tarpit.attempts for t in endless)),
                               ("retried", any(len(tarpit.attempts.get(t, [])) >= 2 for t in trickling))):
                if done:
                    came.setdefault(what, round(time.monotonic() - finished, 1))
            return len(came) == 3

        wait_for(settled, timeout_s=40, interval_s=0.1, what="the normal, endless and a retried delivery")
        print(f"seconds after the tasks finished: {came}")
    finally:
        server.shutdown()
    assert with_tarpit >= MIN_RATIO * without, (without, with_tarpit)
    # Never more deliveries in progress than slots (+1: the tarpit sees a connection closed a
    # scheduling delay after the worker freed its slot, and a loaded machine lets another
    # delivery connect in between; with no bound it sees all 8 threads), none held past the cap.
    assert tarpit.max_open <= SLOTS + 1, tarpit.max_open
    assert tarpit.held_s and all(seconds < CAP_S + 1.0 for _, seconds in tarpit.held_s), tarpit.held_s
    # Deliveries that found no free slot went back on the queue, spending no retry: each
    # trickled task's attempts are 1, 2, ... with no gaps.
    assert "busy: re-queued" in worker.output()
    for task_id in trickling:
        seen = tarpit.attempts.get(task_id, [])
        assert seen == list(range(1, len(seen) + 1)), (task_id, seen)
    for task_id in endless:  # a 200 and the first 64 KiB of the body: delivered, once
        assert tarpit.attempts[task_id] == [1]
