"""The dead-letter queue: one JSON entry per task in a hash (`Keys.dlq`), an index of the
entries waiting for a decision (`Keys.index("dlq")`) and one of every entry
(`Keys.index("dlq_kept")`), both scored by when they arrived. An entry is written by the
transition that dead-letters its task (`TaskStore.transition` with `dlq_entry`), in the same
atomic step, and removed when the task is replayed or discarded or its retention ends."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis

from aiintegration.domain.records import dumps
from aiintegration.store.keys import Keys

DlqEntry = dict[str, Any]


class DlqStore:
    def __init__(self, client: redis.Redis, *, keys: Keys):
        self.r = client
        self.keys = keys
        self.index = keys.index("dlq")  # entries waiting for a decision
        self.kept = keys.index("dlq_kept")  # every entry, by arrival: the retention sweep's list

    def get(self, task_id: str) -> DlqEntry | None:
        raw = cast(str | None, self.r.hget(self.keys.dlq, task_id))
        return cast(DlqEntry, json.loads(raw)) if raw else None

    def get_many(self, task_ids: Sequence[str]) -> list[DlqEntry | None]:
        if not task_ids:
            return []
        raws = cast(list[str | None], self.r.hmget(self.keys.dlq, list(task_ids)))
        return [json.loads(raw) if raw else None for raw in raws]

    def update(self, task_id: str, change: Callable[[DlqEntry], DlqEntry]) -> DlqEntry | None:
        """Rewrite an entry from what it is now (`change` of the stored entry), retried when
        another writer changed the DLQ between the read and the write, so two notes added at
        once both stay; an entry that left the queue is not written back. None when the entry
        is not (or no longer) there."""
        written: list[DlqEntry | None] = [None]

        def attempt(pipe: redis.client.Pipeline) -> None:
            raw = cast(str | None, pipe.hget(self.keys.dlq, task_id))
            written[0] = None if raw is None else change(json.loads(raw))
            if written[0] is not None:
                pipe.multi()
                pipe.hset(self.keys.dlq, task_id, dumps(written[0]))

        self.r.transaction(attempt, self.keys.dlq)
        return written[0]

    def remove(self, task_id: str) -> None:
        """The entry leaves the DLQ for good (replayed, discarded, past its retention)."""
        pipe = self.r.pipeline()
        pipe.hdel(self.keys.dlq, task_id)
        pipe.zrem(self.index, task_id)
        pipe.zrem(self.kept, task_id)
        pipe.execute()

    def older_than(self, before: float, *, limit: int) -> list[str]:
        """Entries that arrived before `before`, oldest first, whatever their review state."""
        return cast(list[str], self.r.zrangebyscore(self.kept, "-inf", before, start=0, num=limit))

    def waiting_after(self, after: tuple[float, str] | None, *, before: float, limit: int) -> list[tuple[str, float]]:
        """(task id, arrival) of entries still in the queue that arrived before `before`, oldest
        first (ties by id), strictly after `after` (an (arrival, id) a previous page ended on)."""
        if after is None:
            return cast(list[tuple[str, float]],
                        self.r.zrangebyscore(self.index, "-inf", before, start=0, num=limit, withscores=True))
        score, last = after
        out: list[tuple[str, float]] = []
        # the page's last arrival again (ties are ordered by id), then what comes after it
        for task_id, at in cast(list[tuple[str, float]], self.r.zrangebyscore(self.index, score, score, withscores=True)):
            if task_id > last:
                out.append((task_id, at))
        out += cast(list[tuple[str, float]], self.r.zrangebyscore(self.index, f"({score!r}", before, start=0,
                                                                   num=limit, withscores=True))
        return out[:limit]

    def size(self) -> int:
        return int(self.r.zcard(self.index))

    def scan(self, matches: Callable[[DlqEntry], bool], *, limit: int, cursor: str | None = None,
             max_scanned: int = 10000) -> tuple[list[DlqEntry], str | None]:
        """Entries still in the queue that `matches`, newest first; the cursor is the score
        of the last one returned. Bounded work per call (`max_scanned`)."""
        max_score = f"({cursor}" if cursor else "+inf"
        items: list[DlqEntry] = []
        last: float | None = None
        scanned = 0
        while len(items) < limit and scanned < max_scanned:
            rows = cast(list[tuple[str, float]],
                        self.r.zrevrangebyscore(self.index, max_score, "-inf", start=0, num=200, withscores=True))
            if not rows:
                break
            scanned += len(rows)
            for (_member, score), entry in zip(rows, self.get_many([m for m, _ in rows]), strict=True):
                last = score
                if entry and matches(entry):
                    items.append(entry)
                    if len(items) == limit:
                        break
            max_score = f"({last!r}"
        more = last is not None and len(items) == limit and self.r.zcount(self.index, "-inf", f"({last!r}") > 0
        return items, (repr(last) if more else None)
