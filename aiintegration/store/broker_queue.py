"""What the broker holds, read from kombu's Redis transport layout: one list per priority
step behind the Celery queue, and the `unacked` hash of messages workers have taken but
not acknowledged. The pending sweep compares these with the queued records; /metrics
reports the depth per priority."""

from __future__ import annotations

import base64
import json

import redis

BROKER_QUEUE = "celery"
PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport default list separator
UNACKED_KEY = "unacked"  # kombu's Redis transport default (`unacked_key`)
PROCESS_TASK = "aiintegration.process_task"


def broker_lists(queue: str = BROKER_QUEUE) -> list[str]:
    """The Redis lists behind one Celery queue, broker priority 0 (most urgent) first."""
    return [queue] + [f"{queue}{PRIORITY_SEP}{step}" for step in range(1, 10)]


class BrokerQueue:
    def __init__(self, client: redis.Redis, *, queue: str = BROKER_QUEUE):
        self.r = client
        self.lists = broker_lists(queue)

    def depth_by_step(self) -> list[int]:
        """Messages waiting per broker priority step (0 = most urgent first)."""
        pipe = self.r.pipeline(transaction=False)
        for name in self.lists:
            pipe.llen(name)
        return [int(n) for n in pipe.execute()]

    def unacked_process_task_ids(self) -> set[str]:
        """Task ids of process_task messages a worker has taken but not acknowledged
        (prefetched, running, waiting for their countdown or ETA, or waiting to be restored
        after a crash). Countdown messages are reserved beyond the prefetch, so the hash can
        be large: it is read in HSCAN pages, not in one reply."""
        ids: set[str] = set()
        for _, raw in self.r.hscan_iter(UNACKED_KEY, count=1000):
            try:
                message = json.loads(raw)[0]
                if message.get("headers", {}).get("task") != PROCESS_TASK:
                    continue
                body = message["body"]
                if message.get("properties", {}).get("body_encoding") == "base64":
                    body = base64.b64decode(body)
                ids.add(str(json.loads(body)[1]["task_id"]))
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                continue  # not a message we wrote: it covers nothing
        return ids
