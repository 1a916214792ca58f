"""Task records in Redis: create, claim, transition, heartbeat, look up and list.

A record is a hash `{p}:task:{id}`; its events go to `{p}:events:task:{id}` and the global
stream `{p}:events` (a succeeded or cancelled task's own stream is later folded into the
record as `events`, see `compact_finished`). Listing, deadlines, leases, retries and
expiry use sorted sets, never a keyspace scan. Every state change is one Lua script (see
`scripts.py`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from aiintegration.domain.records import decode, dumps, iso
from aiintegration.domain.states import TaskStatus
from aiintegration.domain.submission import Submission
from aiintegration.store import scripts

FEED_FINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.CANCELLED, TaskStatus.DEAD_LETTERED})


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def stream_after(client: redis.Redis, key: str, after: str) -> list[tuple[str, dict[str, str]]]:
    """Every entry of stream `key` after id `after` ("0-0": all of them)."""
    rows = client.xrange(key, f"({after}" if after != "0-0" else "-", "+")
    return [(str(entry_id), dict(fields)) for entry_id, fields in rows]


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to start an attempt."""

    claimed: bool
    status: str  # the status before the claim (or the current one when not claimed)
    record: dict[str, Any]

    @property
    def recovered(self) -> bool:
        return self.claimed and self.status == TaskStatus.RUNNING


class TaskStore:
    def __init__(self, client: redis.Redis, *, prefix: str = "aii", retention_s: int = 604800,
                 idempotency_ttl_s: int = 86400, task_stream_maxlen: int = 2000, global_stream_maxlen: int = 100000):
        self.r = client
        self.p = prefix
        self.retention_s = retention_s
        self.idempotency_ttl_s = idempotency_ttl_s
        self.maxlens = (str(task_stream_maxlen), str(global_stream_maxlen))
        self._create = client.register_script(scripts.CREATE)
        self._claim = client.register_script(scripts.CLAIM)
        self._transition = client.register_script(scripts.TRANSITION)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._compact = client.register_script(scripts.COMPACT)

    # keys ------------------------------------------------------------------------------
    def key(self, task_id: str) -> str:
        return f"{self.p}:task:{task_id}"

    def stream_key(self, task_id: str) -> str:
        return f"{self.p}:events:task:{task_id}"

    @property
    def global_stream(self) -> str:
        return f"{self.p}:events"

    def _keys(self, task_id: str) -> list[str]:
        return [self.key(task_id), self.stream_key(task_id), self.global_stream]

    # writes ----------------------------------------------------------------------------
    def create(self, sub: Submission, *, now: float | None = None) -> tuple[str, bool]:
        """Store a new queued record. Returns (id, created); created is False when the
        idempotency key already named a task, whose id is returned instead."""
        now = time.time() if now is None else now
        task_id = str(uuid.uuid4())
        fields = {
            "id": task_id, "task_type": sub.task_type, "status": TaskStatus.QUEUED, "priority": sub.priority,
            "requested_by": sub.requested_by, "request_content": dumps(sub.request_content),
            "metadata": dumps(sub.metadata), "options": dumps(sub.options), "attempts": 0,
            "max_retries": sub.max_retries, "timeout_s": sub.timeout_s,
            "provider": sub.options.get("provider") or "", "worker_id": "", "result": "", "error": "",
            "created_at": now, "started_at": "", "finished_at": "", "updated_at": now, "deadline_at": "",
            "enqueued_at": now, "idempotency_key": sub.idempotency_key or "", "auto_retries": 0,
        }
        event = self.event_data("task.created", task_id, now, task_type=sub.task_type, priority=sub.priority,
                                requested_by=sub.requested_by)
        idem = f"{self.p}:idem:{sub.idempotency_key}" if sub.idempotency_key else ""
        argv: list[Any] = [self.p, task_id, now, self.idempotency_ttl_s, sub.requested_by, event, *self.maxlens]
        for k, v in fields.items():
            argv += [k, v]
        created, tid = self._create(keys=[*self._keys(task_id), idem], args=argv)
        return tid, bool(created)

    def claim(self, task_id: str, *, worker_id: str, lease_s: float, max_processing_time: float,
              now: float | None = None) -> Claim:
        now = time.time() if now is None else now
        run_id = uuid.uuid4().hex
        out = self._claim(keys=self._keys(task_id), args=[
            self.p, now, iso(now), worker_id, run_id, lease_s, max_processing_time, *self.maxlens])
        if not out[0]:
            return Claim(False, out[1], {})
        flat = out[2:]
        return Claim(True, out[1], decode(dict(zip(flat[::2], flat[1::2], strict=True))))

    def transition(self, task_id: str, *, to: TaskStatus, allowed_from: Iterable[str],
                   events: Sequence[tuple[str, dict[str, Any]]] = (), fields: dict[str, Any] | None = None,
                   require: tuple[str, str] | None = None, retry_at: float | None = None,
                   dlq_entry: dict[str, Any] | None = None, now: float | None = None,
                   metrics: dict[str, float] | None = None) -> tuple[bool, str]:
        """Move a task to `to` if its status is in `allowed_from` (and `require` matches),
        appending `events` (name, fields) in the same atomic step. Returns (done, status
        before). Succeeded and cancelled start the retention clock; queued stops it."""
        now = time.time() if now is None else now
        ttl = self.retention_s if to in (TaskStatus.SUCCEEDED, TaskStatus.CANCELLED) else 0
        if to == TaskStatus.QUEUED:
            ttl = -1
        req_field, req_value = require or ("", "")
        argv: list[Any] = [
            self.p, ",".join(allowed_from), str(to), req_field, req_value, now, ttl, len(events),
            ";".join(f"{k}={v}" for k, v in (metrics or {}).items()),
            *self.maxlens, retry_at if retry_at is not None else "", dumps(dlq_entry) if dlq_entry else "",
        ]
        for name, event_fields in events:
            argv += [name, self.event_data(name, task_id, now, **event_fields)]
        for k, v in (fields or {}).items():
            argv += [k, dumps(v) if isinstance(v, dict | list) else ("" if v is None else v)]
        done, before = self._transition(keys=self._keys(task_id), args=argv)
        return bool(done), before

    def heartbeat(self, attempts: Sequence[tuple[str, str]], *, lease_until: float) -> list[str]:
        """Extend the leases of (task_id, run_id) pairs; returns 'ok' or the current status."""
        if not attempts:
            return []
        keys = [self.key(tid) for tid, _ in attempts]
        return list(self._heartbeat(keys=keys, args=[self.p, lease_until, *[run for _, run in attempts]]))

    def append_global(self, event: str, **event_fields: Any) -> str:
        """An event about no task in particular (providers, sweeps), global stream only."""
        data = dumps({"type": event, "at": iso(time.time()), **event_fields})
        return str(self.r.xadd(self.global_stream, {"type": event, "data": data},
                               maxlen=int(self.maxlens[1]), approximate=True))

    def dlq_mark(self, task_id: str, review_state: str) -> None:
        """Leave the DLQ (replayed, discarded): the entry is kept for the record, out of the index."""
        raw = self.r.hget(f"{self.p}:dlq", task_id)
        if raw:
            entry = json.loads(raw)
            entry["review_state"] = review_state
            pipe = self.r.pipeline()
            pipe.hset(f"{self.p}:dlq", task_id, dumps(entry))
            pipe.zrem(f"{self.p}:idx:dlq", task_id)
            pipe.execute()

    def set_fields(self, task_id: str, **fields: Any) -> None:
        """Plain field updates that are not state changes (e.g. `enqueued_at`)."""
        self.r.hset(self.key(task_id), mapping={k: dumps(v) if isinstance(v, dict | list) else v
                                                for k, v in fields.items()})

    @staticmethod
    def event_data(event: str, task_id: str, now: float, **fields: Any) -> str:
        return dumps({"type": event, "at": iso(now), "task_id": task_id, **fields})

    # reads -----------------------------------------------------------------------------
    def get(self, task_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(self.key(task_id))
        return decode(raw) if raw else None

    def get_many(self, task_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        pipe = self.r.pipeline(transaction=False)
        for tid in task_ids:
            pipe.hgetall(self.key(tid))
        return [decode(raw) if raw else None for raw in pipe.execute()]

    def ids_by_score(self, index: str, *, max_score: float, limit: int) -> list[tuple[str, float]]:
        """Members of `{p}:idx:{index}` with score ≤ max_score, lowest first (sweeps)."""
        rows = self.r.zrangebyscore(f"{self.p}:idx:{index}", "-inf", max_score, start=0, num=limit, withscores=True)
        return [(m, float(s)) for m, s in rows]

    def list(self, *, status: str | None = None, requested_by: str | None = None, limit: int = 50,
             cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first. The cursor is `score|id` of the last item returned."""
        if status:
            index = f"{self.p}:idx:status:{status}"
        elif requested_by:
            index = f"{self.p}:idx:by:{requested_by}"
        else:
            index = f"{self.p}:idx:tasks"
        max_score, last_id = "+inf", None
        if cursor:
            score_s, _, last_id = cursor.partition("|")
            max_score = score_s
        items: list[tuple[dict[str, Any], str]] = []  # (record, cursor just after it)
        scanned, batch, stale = 0, max(limit * 2, 50), []
        while len(items) <= limit and scanned < 5000:  # one extra item tells whether a next page exists
            rows = self.r.zrevrangebyscore(index, max_score, "-inf", start=0, num=batch, withscores=True)
            rows = [(m, s) for m, s in rows if not (last_id is not None and repr(s) == max_score and m >= last_id)]
            if not rows:
                break
            scanned += len(rows)
            for (member, score), rec in zip(rows, self.get_many([m for m, _ in rows]), strict=True):
                max_score, last_id = repr(score), member
                if rec is None:
                    stale.append(member)
                elif requested_by is None or rec["requested_by"] == requested_by:
                    items.append((rec, f"{max_score}|{last_id}"))
                    if len(items) > limit:
                        break
        if stale:
            self.r.zrem(index, *stale)
        next_cursor = items[limit - 1][1] if len(items) > limit else None
        if scanned >= 5000 and len(items) <= limit:
            next_cursor = f"{max_score}|{last_id}"  # bounded work per request: the caller may continue
        return [rec for rec, _ in items[:limit]], next_cursor

    def drop_expired(self, *, now: float, limit: int = 1000) -> int:
        """Remove records whose retention ran out from the listing indexes (the hashes and
        streams expire by themselves). Work follows the number expired, not the total."""
        key = f"{self.p}:idx:expiry"
        members = self.r.zrangebyscore(key, "-inf", now, start=0, num=limit)
        if not members:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for member in members:
            task_id, status, requested_by = member.split("|", 2)
            pipe.zrem(f"{self.p}:idx:tasks", task_id)
            pipe.zrem(f"{self.p}:idx:status:{status}", task_id)
            pipe.zrem(f"{self.p}:idx:by:{requested_by}", task_id)
        pipe.zrem(key, *members)
        pipe.execute()
        return len(members)

    def compact_finished(self, *, before: float, limit: int = 50000, batch: int = 500) -> int:
        """Fold the event streams of tasks that finished (succeeded/cancelled) before `before`
        into their records. Work follows the number finished since the last run."""
        done = 0
        while done < limit:
            ids = self.r.zrangebyscore(f"{self.p}:idx:compact", "-inf", before, start=0, num=min(batch, limit - done))
            if not ids:
                break
            pipe = self.r.pipeline(transaction=False)
            for task_id in ids:
                self._compact(keys=[self.key(task_id), self.stream_key(task_id)], args=[self.p, task_id], client=pipe)
            pipe.execute()
            done += len(ids)
        return done

    def final_events(self, task_id: str, after: str) -> list[tuple[str, dict[str, str]]] | None:
        """None while the task may still change; once it is final for a feed (succeeded,
        cancelled, dead-lettered), its events after stream id `after`, wherever they are
        kept (the stream, or the record once compacted)."""
        status, folded = self.r.hmget(self.key(task_id), "status", "events")
        if status not in FEED_FINAL:
            return None
        if folded is None:
            return stream_after(self.r, self.stream_key(task_id), after)
        start = _stream_id(after)
        out = []
        for line in folded.split("\n") if folded else []:
            entry_id, data = line.split(" ", 1)
            if _stream_id(entry_id) > start:
                out.append((entry_id, {"type": json.loads(data)["type"], "data": data}))
        return out

    def count(self, status: str) -> int:
        return int(self.r.zcard(f"{self.p}:idx:status:{status}"))
