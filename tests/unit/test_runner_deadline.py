"""The attempt runner's deadline wins over whatever the call has queued: a stream whose deltas
are written slower than they arrive, or one that ended because the deadline stopped it, ends
`timed_out` (not a provider error that would count against its circuit breaker), and no delta
is written after the deadline but the one being written when it passed."""

from __future__ import annotations

import asyncio
import time

from aiintegration.commands.runner import Attempt, AttemptRunner


class Leases:
    def heartbeat(self, attempts, *, lease_until):
        return ["ok"] * len(attempts)


def test_a_deadline_reached_while_deltas_wait_to_be_written_ends_the_attempt_timed_out():
    runner = AttemptRunner(Leases(), lease_s=10)  # type: ignore[arg-type]
    start = time.time()
    attempt = Attempt("t1", "r1", deadline=start + 0.4)

    async def stream(a: Attempt) -> str:
        for i in range(40):  # 40 deltas 20 ms apart, then the stream stops itself at the deadline
            if a.should_stop():
                raise ConnectionError("the stream ended early")
            a.emit(f"w{i} ")
            await asyncio.sleep(0.02)
        return "done"

    written: list[float] = []

    def slow_write(text: str) -> None:  # a slow XADD: Redis under load, or failing over
        written.append(time.time())
        time.sleep(0.1)

    outcome = runner.run(attempt, stream, slow_write)
    assert outcome.stopped == "timed_out" and outcome.error is None and outcome.value is None
    assert [t for t in written if t > attempt.deadline] == []
    assert time.time() - attempt.deadline < 0.3

