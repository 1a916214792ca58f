"""Runs one attempt's provider call so that it can be stopped from outside.

The call is a coroutine on the process's one event loop (a thread of its own, where the
providers' async SDK clients live); the worker's thread only waits for what the call hands
it: text deltas (which it writes itself), then the answer or the error. One watchdog thread
per process extends the leases of all running attempts in one Redis call every
`HEARTBEAT_S`, so a fast call costs no extra round trip and a slow one is checked twice a
second. A cancel, a lost lease or the deadline stops the attempt: its worker thread returns
at once and the coroutine is cancelled, which closes the provider request.

Measured with 1,000 ten-second calls in one process (bench/RESULTS.md): the helper thread
per attempt this replaced cost ~0.9 ms more CPU per task and ~22 MiB more per 1,000 calls in
flight, and its pool was capped at 512, which held efficiency under 0.51.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiintegration.providers.base import Provider
from aiintegration.store.tasks import TaskStore

log = logging.getLogger(__name__)
T = TypeVar("T")
HEARTBEAT_S = 0.5
_STOP, _DELTA, _VALUE, _ERROR = "stop", "delta", "value", "error"


@dataclass
class Attempt:
    task_id: str
    run_id: str
    deadline: float  # epoch seconds
    stop_reason: str | None = None  # "cancelled", "timed_out", or the status that replaced ours
    inbox: queue.SimpleQueue[tuple[str, Any]] = field(default_factory=queue.SimpleQueue)

    def should_stop(self) -> bool:
        return self.stop_reason is not None or time.time() >= self.deadline

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.inbox.put((_STOP, None))

    def emit(self, text: str) -> None:
        """A text delta from the call, for the worker's thread to write."""
        self.inbox.put((_DELTA, text))


@dataclass
class Outcome(Generic[T]):
    value: T | None = None
    error: BaseException | None = None
    stopped: str | None = None  # why the call was abandoned; None when it finished


Call = Callable[[Attempt], Awaitable[T]]
OnDelta = Callable[[str], None]


class AttemptRunner:
    def __init__(self, store: TaskStore, *, lease_s: float):
        self.store = store
        self.lease_s = lease_s
        self._running: dict[str, Attempt] = {}
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._closing: set[asyncio.Task[None]] = set()  # clients of replaced providers being closed

    def run(self, attempt: Attempt, call: Call[T], on_delta: OnDelta | None = None) -> Outcome[T]:
        """Run `call(attempt)` on the event loop and wait for it here; the deltas it emits are
        passed to `on_delta` on this thread (an error there ends the attempt with that error)."""
        self._register(attempt)
        future: Future[None] = asyncio.run_coroutine_threadsafe(self._guarded(attempt, call), self._event_loop())
        try:
            return self._wait(attempt, on_delta)
        finally:
            future.cancel()  # nothing once the call is done; else its request is closed
            with self._lock:
                self._running.pop(attempt.task_id, None)

    @staticmethod
    def _wait(attempt: Attempt, on_delta: OnDelta | None) -> Outcome[T]:
        while True:
            try:
                kind, item = attempt.inbox.get(timeout=max(0.0, attempt.deadline - time.time()))
            except queue.Empty:
                attempt.stop("timed_out")
                continue
            if attempt.stop_reason is None and time.time() >= attempt.deadline:
                # Past the deadline, whatever is queued (deltas not yet written, or the error of a
                # stream that ended because should_stop() said so) is not the attempt's outcome.
                attempt.stop("timed_out")
            if attempt.stop_reason:  # a late answer after a cancel is discarded
                return Outcome(stopped=attempt.stop_reason)
            if kind == _DELTA:
                if on_delta is not None:
                    try:
                        on_delta(item)
                    except Exception as exc:  # noqa: BLE001 - handed to the caller's error policy
                        return Outcome(error=exc)
                continue
            return Outcome(value=item) if kind == _VALUE else Outcome(error=item)

    @staticmethod
    async def _guarded(attempt: Attempt, call: Call[T]) -> None:
        try:
            value = await call(attempt)
        except BaseException as exc:  # noqa: BLE001 - the waiting thread decides; a cancel is re-raised
            attempt.inbox.put((_ERROR, exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        attempt.inbox.put((_VALUE, value))

    def retire(self, provider: Provider, *, after_s: float) -> None:
        """Close `provider`'s async client and its connections (its config was replaced) once
        every call that may still use it has ended: `after_s`, the longest an attempt may run.
        Nothing to do in a process that never ran a call (no loop, so no async client)."""
        with self._lock:
            loop = self._loop
        if loop is None or loop.is_closed():
            return

        async def close() -> None:
            try:
                await provider.aclose()
            except Exception:  # noqa: BLE001 - its connections go with the object anyway
                log.debug("closing the client of a replaced provider failed", exc_info=True)

        def start() -> None:
            task = loop.create_task(close())
            self._closing.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._closing.discard)

        loop.call_soon_threadsafe(lambda: loop.call_later(after_s, start))

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop_thread is None or not self._loop_thread.is_alive():
                loop = asyncio.new_event_loop()  # the first call's, or a new one if that thread ever ended
                self._loop_thread = threading.Thread(target=loop.run_forever, name="aii-calls", daemon=True)
                self._loop_thread.start()
                self._loop = loop
            return self._loop

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
