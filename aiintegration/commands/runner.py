"""Runs one attempt's provider call so that it can be stopped from outside.

The call runs on a helper thread; the worker's thread waits for it, for its deadline, or
for the watchdog to report that the task was cancelled or taken over. One watchdog thread
per process extends the leases of all running attempts in one Redis call every
`HEARTBEAT_S`, so a fast call costs no extra round trip and a slow one is checked twice a
second. A blocking call that is stopped is abandoned: its result is discarded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from aiintegration.store.tasks import TaskStore

log = logging.getLogger(__name__)
T = TypeVar("T")
HEARTBEAT_S = 0.5


@dataclass
class Attempt:
    task_id: str
    run_id: str
    deadline: float  # epoch seconds
    wake: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None  # "cancelled", "timed_out", or the status that replaced ours

    def should_stop(self) -> bool:
        return self.stop_reason is not None or time.time() >= self.deadline

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.wake.set()


@dataclass
class Outcome(Generic[T]):
    value: T | None = None
    error: BaseException | None = None
    stopped: str | None = None  # why the call was abandoned; None when it finished


class AttemptRunner:
    def __init__(self, store: TaskStore, *, lease_s: float, max_threads: int = 512):
        self.store = store
        self.lease_s = lease_s
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="aii-call")
        self._running: dict[str, Attempt] = {}
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None

    def run(self, attempt: Attempt, call: Callable[[Attempt], T]) -> Outcome[T]:
        self._register(attempt)
        try:
            future: Future[T] = self._pool.submit(call, attempt)
            future.add_done_callback(lambda _f: attempt.wake.set())
            while not future.done():
                left = attempt.deadline - time.time()
                if left <= 0:
                    attempt.stop("timed_out")
                if attempt.stop_reason:
                    return Outcome(stopped=attempt.stop_reason)
                attempt.wake.wait(min(left, HEARTBEAT_S * 2))
            if attempt.stop_reason:  # finished, but after a cancel: the result is discarded
                return Outcome(stopped=attempt.stop_reason)
            try:
                return Outcome(value=future.result())
            except Exception as exc:  # noqa: BLE001 - handed to the caller's error policy
                return Outcome(error=exc)
        finally:
            with self._lock:
                self._running.pop(attempt.task_id, None)

    def _register(self, attempt: Attempt) -> None:
        with self._lock:
            self._running[attempt.task_id] = attempt
            if self._watchdog is None or not self._watchdog.is_alive():
                self._watchdog = threading.Thread(target=self._watch, name="aii-watchdog", daemon=True)
                self._watchdog.start()

    def _watch(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            with self._lock:
                attempts = list(self._running.values())
            if not attempts:
                continue
            try:
                answers = self.store.heartbeat([(a.task_id, a.run_id) for a in attempts],
                                               lease_until=time.time() + self.lease_s)
            except Exception:  # noqa: BLE001 - Redis hiccup: leases are long enough to wait
                log.warning("heartbeat failed; retrying", exc_info=True)
                continue
            for attempt, answer in zip(attempts, answers, strict=True):
                if answer != "ok":
                    attempt.stop("cancelled" if answer == "cancelled" else f"lost:{answer or 'gone'}")
