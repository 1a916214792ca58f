"""Task records in Redis: create, claim, transition, heartbeat, look up and list.

A record is a hash (`Keys.task`); its events go to its own stream and the global one (a
succeeded or cancelled task's own stream is later folded into the record as `events`, and a
kept record is deleted when its retention ends: both by the cleanup sweep, see `upkeep`).
Listing, deadlines, leases, retries and retention use sorted sets, never a keyspace scan.
Every state change is one Lua script (`scripts.py`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from aiintegration.domain.batching import LANE
from aiintegration.domain.records import TaskRecord, dumps, encode_field, iso
from aiintegration.domain.routing import Route
from aiintegration.domain.states import ALLOWED_FROM, FINAL, TERMINAL, TaskStatus
from aiintegration.domain.submission import Submission
from aiintegration.errors import IdempotencyKeyReused
from aiintegration.store import scripts
from aiintegration.store.keys import Keys
from aiintegration.store.metrics import MetricsStore, Sample, observation
from aiintegration.store.streams import Rows, StreamReader, stream_after, stream_id_key

S = TaskStatus
# Running attempts were indexed twice, by deadline and by lease end, before `due` held the
# earlier of the two; the sweep empties these as it meets their ids (a rolling upgrade).
LEGACY_DUE = ("deadline", "lease")
Event = tuple[str, Mapping[str, Any]]  # (name, fields)


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to start an attempt."""

    claimed: bool
    status: str  # the status before the claim (or the current one when not claimed; '' if gone)
    record: TaskRecord | None = None
    lane: bool = False  # not claimed: the task belongs to the batch lane
    off_route: bool = False  # not claimed: the record's task type or pinned provider is not the route's

    @property
    def recovered(self) -> bool:
        """The attempt takes over a running task whose worker stopped renewing its lease."""
        return self.claimed and self.status == TaskStatus.RUNNING


@dataclass(frozen=True)
class Start:
    """Who claims a task's first attempt in the step that creates it (`TaskStore.create`)."""

    worker_id: str
    lease_s: float
    max_processing_time: float


def event_data(event: str, task_id: str, now: float, **fields: Any) -> str:
    return dumps({"type": event, "at": iso(now), "task_id": task_id, **fields})


class TaskStore:
    def __init__(self, client: redis.Redis, *, keys: Keys, metrics: MetricsStore, retention_s: int = 604800,
                 compact_after_s: float = 300.0, idempotency_ttl_s: int = 86400, task_stream_maxlen: int = 2000,
                 global_stream_maxlen: int = 100000):
        self.r = client
        self.keys = keys
        self.metrics = metrics  # where the samples of a change go, once it is made
        self.retention_s = retention_s
        self.compact_after_s = compact_after_s  # a kept record's stream is folded in this long after it ended
        self.idempotency_ttl_s = idempotency_ttl_s
        self.maxlens = (str(task_stream_maxlen), str(global_stream_maxlen))
        self._create = client.register_script(scripts.CREATE)
        self._find = client.register_script(scripts.FIND)
        self._claim = client.register_script(scripts.CLAIM)
        self._transition = client.register_script(scripts.TRANSITION)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._compact = client.register_script(scripts.COMPACT)
        self._upkeep = client.register_script(scripts.UPKEEP)
        self._retain = client.register_script(scripts.RETAIN)
        self._note = client.register_script(scripts.NOTE)
        self._take_due = client.register_script(scripts.TAKE_DUE)

    def _script_keys(self, task_id: str) -> list[str]:
        return [self.keys.task(task_id), self.keys.task_stream(task_id), self.keys.global_stream]

    # writes ----------------------------------------------------------------------------
    def create(self, sub: Submission, *, task_id: str | None = None, now: float | None = None,
               start: Start | None = None) -> tuple[str, bool, Claim | None]:
        """Store a new queued record. Returns (id, created, claim); created is False when the
        tenant's idempotency key already named a task made from the same request (or `task_id`
        a record made already), whose id is returned instead. The same key with a different
        request raises IdempotencyKeyReused. With `start` (not for the batch lane), a record
        created is running, its first attempt claimed as `claim` would (one script, not two)."""
        now = time.time() if now is None else now
        cost, tokens, day, month = sub.budget or (None, None, None, None)
        start = None if sub.lane_group else start
        run: dict[str, Any] = {}
        if start is not None:
            run = {"status": S.RUNNING, "worker_id": start.worker_id, "run_id": uuid.uuid4().hex, "started_at": now,
                   "lease_until": now + start.lease_s, "attempts": 1,
                   "deadline_at": now + min(sub.options.timeout_s, start.max_processing_time)}
        record = TaskRecord(
            id=task_id or str(uuid.uuid4()), task_type=sub.task_type, status=S.QUEUED, requested_by=sub.requested_by,
            request_content=sub.request_content, priority=sub.priority, tenant=sub.tenant, metadata=sub.metadata,
            options=sub.options, provider=sub.options.provider, created_at=now, updated_at=now, enqueued_at=now,
            idempotency_key=sub.idempotency_key, chat_session_id=sub.chat_session_id,
            chat_message_id=sub.chat_message_id, trace_context=sub.trace_context,
            budget_cost=cost, budget_tokens=tokens, budget_day=day, budget_month=month,
            lane=LANE if sub.lane_group else None, lane_group=sub.lane_group)
        record = record.with_changes(**run) if run else record
        event = event_data("task.created", record.id, now, task_type=sub.task_type, priority=sub.priority,
                           requested_by=sub.requested_by, tenant=sub.tenant)
        started = "" if start is None else event_data("task.started", record.id, now, attempt=1,
                                                       worker_id=start.worker_id, recovered=False)
        due = min(record.lease_until, record.deadline_at) if record.lease_until and record.deadline_at else ""
        idem = self._idempotency_key(sub)
        argv: list[Any] = [self.keys.prefix, record.id, now, self.idempotency_ttl_s, sub.requested_by, event,
                           *self.maxlens, sub.tenant, sub.fingerprint() if idem else "",  # read only with a key
                           started, due, "1" if task_id else ""]
        for k, v in record.to_hash().items():
            if v != "":  # unset: absent (NOTE's "first" fields are set only where the record has none)
                argv += [k, v]
        tid, created = _outcome(self._create(keys=[*self._script_keys(record.id), idem], args=argv))
        if not created or start is None:
            return tid, created, None
        self.metrics.record([observation("aii_task_queue_wait_seconds", 0.0, task_type=record.task_type)])
        return tid, created, Claim(True, S.QUEUED, record)

    def existing(self, sub: Submission, *, task_id: str | None = None) -> str | None:
        """The task `create` would return instead of creating one (named by `task_id` or by the
        tenant's idempotency key for the same request), or None; IdempotencyKeyReused as there.
        Nothing is written."""
        idem = self._idempotency_key(sub)
        if not task_id and not idem:
            return None
        tid, created = _outcome(self._find(keys=[self.keys.task(task_id) if task_id else "", idem],
                                           args=[self.keys.prefix, task_id or "", sub.fingerprint() if idem else ""]))
        return None if created else tid

    def _idempotency_key(self, sub: Submission) -> str:
        return self.keys.idempotency(f"{sub.tenant}:{sub.idempotency_key}") if sub.idempotency_key else ""

    def claim(self, task_id: str, *, worker_id: str, lease_s: float, max_processing_time: float,
              provider: str = "", route: Route | None = None, now: float | None = None) -> Claim:
        """Start an attempt: a queued task, a retrying one that is due, or a running one whose
        lease ran out. The claimed record carries the attempt's fresh `run_id`. With a `route`
        (the provider was chosen from it, not from the record), only a record on that route."""
        now = time.time() if now is None else now
        out = self._claim(keys=self._script_keys(task_id), args=[
            self.keys.prefix, now, iso(now) or "", worker_id, uuid.uuid4().hex, lease_s, max_processing_time,
            *self.maxlens, provider, route.task_type if route else "", (route.pinned or "") if route else ""])
        if not out[0]:
            why = str(out[2]) if len(out) > 2 else ""
            return Claim(False, str(out[1]), lane=why == "lane", off_route=why == "route")
        queued_s, throttled_s, flat = out[2], out[3], out[4:]
        record = TaskRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
        waits = [observation("aii_task_queue_wait_seconds", float(queued_s), task_type=record.task_type)]
        if throttled_s:  # admitted after waiting for the provider's quota
            waits.append(observation("aii_ratelimit_wait_seconds", float(throttled_s), provider=provider))
        self.metrics.record(waits)
        return Claim(True, str(out[1]), record)

    def transition(self, task_id: str, *, to: TaskStatus, allowed_from: Iterable[TaskStatus] | None = None,
                   events: Sequence[Event] = (), fields: Mapping[str, Any] | None = None,
                   run_id: str | None = None, retry_at: float | None = None,
                   dlq_entry: Mapping[str, Any] | None = None, now: float | None = None,
                   metrics: Sequence[Sample] = (), usage: str = "",
                   require: tuple[str, str] | None = None) -> tuple[bool, str]:
        """Move a task to `to` if its status is one the state table allows (`allowed_from`
        may narrow it) and, with `run_id`, only if that attempt still owns it (`require`:
        another (field, value) that must hold, e.g. the lane batch holding a queued task);
        `events`, field changes, the usage ledger and a DLQ entry go in the same atomic step,
        and `metrics` to this process's buffer once it is made. Returns (done, status before;
        '' when the task does not exist). Final states start the retention clock (`upkeep`);
        queued stops it."""
        allowed = ALLOWED_FROM[to] if allowed_from is None else frozenset(allowed_from)
        if not allowed <= ALLOWED_FROM[to]:
            raise ValueError(f"{sorted(allowed - ALLOWED_FROM[to])} -> {to} is not in the state table")
        now = time.time() if now is None else now
        ttl = self.retention_s if to in FINAL else (-1 if to == S.QUEUED else 0)
        field, value = ("run_id", run_id) if run_id else require or ("", "")
        argv: list[Any] = [
            self.keys.prefix, ",".join(sorted(allowed)), str(to), field, value, now, ttl,
            len(events), *self.maxlens, "" if retry_at is None else retry_at,
            dumps(dict(dlq_entry)) if dlq_entry else "", "1" if to in TERMINAL else "", usage,
            min(self.compact_after_s, ttl) if ttl > 0 else "",
        ]
        for name, event_fields in events:
            argv += [name, event_data(name, task_id, now, **event_fields)]
        for k, v in (fields or {}).items():
            argv += [k, encode_field(v)]
        out = self._transition(keys=self._script_keys(task_id), args=argv)
        if not out[0]:
            return False, str(out[1])
        if to in TERMINAL:
            task_type, since_created = out[2], float(out[3])
            metrics = [*metrics, observation("aii_task_duration_seconds", since_created, status=str(to),
                                             task_type=str(task_type))]
        self.metrics.record(metrics)
        return True, str(out[1])

    def note(self, task_id: str, event: str, event_fields: Mapping[str, Any], *, metrics: Sequence[Sample] = (),
             fields: Mapping[str, Any] | None = None, first: Mapping[str, Any] | None = None,
             now: float | None = None) -> bool:
        """An event that changes no state (e.g. `task.throttled`), with its metrics; `fields`
        are set, `first` fields only where the record has none yet. False when the task is gone."""
        now = time.time() if now is None else now
        argv: list[Any] = [self.keys.prefix, event, event_data(event, task_id, now, **event_fields), *self.maxlens,
                           len(fields or {})]
        for k, v in [*(fields or {}).items(), *(first or {}).items()]:
            argv += [k, encode_field(v)]
        noted = bool(self._note(keys=self._script_keys(task_id), args=argv))
        if noted:
            self.metrics.record(metrics)
        return noted

    def heartbeat(self, attempts: Sequence[tuple[str, str]], *, lease_until: float) -> list[str]:
        """Extend the leases of (task_id, run_id) pairs; returns 'ok' or the current status."""
        if not attempts:
            return []
        keys = [self.keys.task(tid) for tid, _ in attempts]
        return [str(a) for a in self._heartbeat(keys=keys, args=[self.keys.prefix, lease_until,
                                                                 *[run for _, run in attempts]])]

    def set_fields(self, task_id: str, **fields: Any) -> None:
        """Plain field updates that are not state changes (e.g. `enqueued_at`); nothing is
        written when the record is gone."""
        if self.r.exists(self.keys.task(task_id)):
            self.r.hset(self.keys.task(task_id), mapping={k: encode_field(v) for k, v in fields.items()})

    def defer(self, task_id: str, *, until: float) -> None:
        """The task's next message is sent at `until` by the deferred sweep, rather than held in
        a worker's memory as an ETA message until then; a retrying task is due on `idx:retry`
        then too (the pending sweep does not look at it before)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zadd(self.keys.index("deferred"), {task_id: until})
        pipe.zadd(self.keys.index("retry"), {task_id: until}, xx=True)
        pipe.execute()

    def take_deferred(self, *, before: float, limit: int) -> list[str]:
        """Deferred tasks due by `before`, taken off the index: each is handed out once."""
        return [str(i) for i in self._take_due(keys=[self.keys.index("deferred")], args=[before, limit])]

    def deferred_among(self, task_ids: Sequence[str]) -> set[str]:
        """Which of these tasks wait in the deferred index (they have no broker message on purpose)."""
        pipe = self.r.pipeline(transaction=False)
        for tid in task_ids:
            pipe.zscore(self.keys.index("deferred"), tid)
        return {tid for tid, score in zip(task_ids, pipe.execute(), strict=True) if score is not None}

    def count_deferred(self) -> int:
        return int(self.r.zcard(self.keys.index("deferred")))

    def retry_resent(self, task_id: str, *, now: float) -> None:
        """A retrying task's message was sent again (the pending sweep): due from `now`."""
        self.r.zadd(self.keys.index("retry"), {task_id: now}, xx=True)

    def start_retention(self, task_id: str, *, ttl_s: float | None = None, now: float | None = None,
                        status: TaskStatus = S.DEAD_LETTERED) -> bool:
        """The record and its events are kept `ttl_s` more (default: the retention period), then
        deleted and dropped from every index by `upkeep` (a discarded or too old DLQ entry).
        False if it is gone already, or no longer in `status`."""
        ttl = max(1, int(self.retention_s if ttl_s is None else ttl_s))
        now = time.time() if now is None else now
        return bool(self._retain(keys=[self.keys.task(task_id)], args=[self.keys.prefix, ttl, now, str(status)]))

    # reads -----------------------------------------------------------------------------
    def get(self, task_id: str) -> TaskRecord | None:
        return _record(cast(dict[str, str], self.r.hgetall(self.keys.task(task_id))))

    def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        pipe = self.r.pipeline(transaction=False)
        for tid in task_ids:
            pipe.hgetall(self.keys.task(tid))
        return [_record(raw) for raw in cast(list[dict[str, str]], pipe.execute())]

    def statuses(self, task_ids: Sequence[str], *, page: int = 1000) -> list[str | None]:
        """Each task's status (None when it is gone), without reading the records whole."""
        out: list[str | None] = []
        for start in range(0, len(task_ids), page):
            pipe = self.r.pipeline(transaction=False)
            for tid in task_ids[start:start + page]:
                pipe.hget(self.keys.task(tid), "status")
            out += cast(list[str | None], pipe.execute())
        return out

    def _due(self, index: str, *, before: float, limit: int, offset: int = 0) -> list[str]:
        """Members of an index with score ≤ `before`, lowest first (the sweeps' work lists)."""
        return cast(list[str], self.r.zrangebyscore(self.keys.index(index), "-inf", before, start=offset, num=limit))

    def overdue(self, *, before: float, limit: int) -> list[str]:
        """Running attempts whose lease end or deadline, the earlier of the two, came before
        `before` by the index (the record decides), and those listed by the two indexes
        earlier code kept (`LEGACY_DUE`), until `settle_overdue` drops them."""
        pipe = self.r.pipeline(transaction=False)
        for index in ("due", *LEGACY_DUE):
            pipe.zrangebyscore(self.keys.index(index), "-inf", before, start=0, num=limit)
        return list(dict.fromkeys(tid for found in pipe.execute() for tid in found))[:limit]

    def settle_overdue(self, *, rescore: Mapping[str, float], gone: Sequence[str], seen: Sequence[str]) -> None:
        """After the sweep looked at `overdue` ids: those still running well go back on the
        index at their current due time, those no longer running leave it (a heartbeat puts
        back one re-claimed meanwhile), and every id seen leaves the indexes of older versions."""
        pipe = self.r.pipeline(transaction=False)
        if rescore:
            pipe.zadd(self.keys.index("due"), dict(rescore))
        if gone:
            pipe.zrem(self.keys.index("due"), *gone)
        if seen:
            for index in LEGACY_DUE:
                pipe.zrem(self.keys.index(index), *seen)
        pipe.execute()

    def retries_due(self, *, before: float, limit: int) -> list[str]:
        return self._due("retry", before=before, limit=limit)

    def in_status(self, status: TaskStatus, *, created_before: float = float("inf"), limit: int,
                  offset: int = 0) -> list[str]:
        """Oldest first, from the `offset`-th."""
        return self._due(f"status:{status}", before=created_before, limit=limit, offset=offset)

    def list(self, *, tenant: str | None = None, status: str | None = None, requested_by: str | None = None,
             limit: int = 50, cursor: str | None = None) -> tuple[list[TaskRecord], str | None]:
        """Newest first, every filter applied. The cursor is `score|id` of the last item
        returned. The narrowest index is walked; the other filters are checked per record."""
        if tenant:
            index = self.keys.index(f"tenant:{tenant}")
        elif status:
            index = self.keys.index(f"status:{status}")
        elif requested_by:
            index = self.keys.index(f"by:{requested_by}")
        else:
            index = self.keys.index("tasks")

        def wanted(rec: TaskRecord) -> bool:
            return ((tenant is None or rec.tenant == tenant) and (status is None or rec.status == status)
                    and (requested_by is None or rec.requested_by == requested_by))

        max_score, last_id = "+inf", None
        if cursor:
            score_s, _, last_id = cursor.partition("|")
            max_score = score_s
        items: list[tuple[TaskRecord, str]] = []  # (record, cursor just after it)
        scanned, batch, stale = 0, max(limit * 2, 50), []
        while len(items) <= limit and scanned < 5000:  # one extra item tells whether a next page exists
            found = cast(list[tuple[str, float]],
                         self.r.zrevrangebyscore(index, max_score, "-inf", start=0, num=batch, withscores=True))
            rows = [(m, s) for m, s in found if not (last_id is not None and repr(s) == max_score and m >= last_id)]
            if not rows:
                break
            scanned += len(rows)
            for (member, score), rec in zip(rows, self.get_many([m for m, _ in rows]), strict=True):
                max_score, last_id = repr(score), member
                if rec is None:
                    stale.append(member)
                elif wanted(rec):
                    items.append((rec, f"{max_score}|{last_id}"))
                    if len(items) > limit:
                        break
        if stale:
            self.r.zrem(index, *stale)
        next_cursor = items[limit - 1][1] if len(items) > limit else None
        if scanned >= 5000 and len(items) <= limit:
            next_cursor = f"{max_score}|{last_id}"  # bounded work per request: the caller may continue
        return [rec for rec, _ in items[:limit]], next_cursor

    def count(self, status: TaskStatus) -> int:
        return int(self.r.zcard(self.keys.index(f"status:{status}")))

    def counts(self) -> dict[str, int]:
        """Records by status, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for status in S:
            pipe.zcard(self.keys.index(f"status:{status}"))
        return {status.value: int(n) for status, n in zip(S, pipe.execute(), strict=True)}

    # upkeep ------------------------------------------------------------------------------
    def upkeep(self, *, now: float, limit: int = 1_000_000, batch: int = 1000,
               budget_s: float = 60.0) -> dict[str, int]:
        """The cleanup sweep's visits of kept records that are due (`idx:upkeep`, scripts.UPKEEP):
        a stream folded into its record `compact_after_s` after the task ended, a record and
        its events deleted, and its id dropped from every listing index, once its retention ran
        out. Work follows the number due, in pipelined batches, until none is due, `limit`
        visits or `budget_s` seconds (what is left waits for the next run). Also drains the
        indexes earlier versions kept (`_drop_legacy_expired`, `compact_listed`).
        Returns the visits by outcome: folded, expired, stale."""
        done: dict[str, int] = {"folded": 0, "expired": 0, "stale": 0}
        until = time.monotonic() + budget_s
        for members in self._batches("upkeep", before=now, limit=limit, batch=batch, until=until):
            pipe = self.r.pipeline(transaction=False)
            for member in members:
                task_id = member.split("|", 1)[0]
                self._upkeep(keys=[self.keys.task(task_id), self.keys.task_stream(task_id)],
                             args=[self.keys.prefix, member, now], client=pipe)
            for outcome in pipe.execute():
                done[str(outcome)] = done.get(str(outcome), 0) + 1
        done["expired"] += self._drop_legacy_expired(now=now, limit=limit, until=until)
        done["folded"] += self.compact_listed(before=now - self.compact_after_s, limit=limit, until=until)
        return done

    def _batches(self, index: str, *, before: float, limit: int, batch: int,
                 until: float = float("inf")) -> Iterator[Sequence[str]]:
        """The members of `index` due by `before`, a batch at a time, lowest first: for work
        that takes each batch off the index (or re-scores it past `before`). Ends when none is
        due, after `limit` members, or at `until` (time.monotonic())."""
        seen = 0
        while seen < limit and time.monotonic() < until:
            members = self._due(index, before=before, limit=min(batch, limit - seen))
            if not members:
                return
            yield members
            seen += len(members)

    def _drop_legacy_expired(self, *, now: float, limit: int, until: float) -> int:
        """`idx:expiry`, where versions before `idx:upkeep` listed kept records (which expire by
        a Redis TTL): ids whose retention ran out leave the listing indexes."""
        dropped = 0
        for members in self._batches("expiry", before=now, limit=limit, batch=1000, until=until):
            pipe = self.r.pipeline(transaction=False)
            for member in members:
                if member.startswith("2|"):
                    _, task_id, status, tenant, requested_by = member.split("|", 4)
                    pipe.zrem(self.keys.index(f"tenant:{tenant}"), task_id)
                else:  # written before tenants: id|status|requested_by
                    task_id, status, requested_by = member.split("|", 2)
                pipe.zrem(self.keys.index("tasks"), task_id)
                pipe.zrem(self.keys.index(f"status:{status}"), task_id)
                pipe.zrem(self.keys.index(f"by:{requested_by}"), task_id)
            pipe.zrem(self.keys.index("expiry"), *members)
            pipe.execute()
            dropped += len(members)
        return dropped

    def compact_listed(self, *, before: float, limit: int = 50000, until: float = float("inf")) -> int:
        """Fold the event streams of the tasks `idx:compact` lists (versions before `idx:upkeep`)
        that finished before `before` into their records."""
        folded = 0
        for ids in self._batches("compact", before=before, limit=limit, batch=500, until=until):
            pipe = self.r.pipeline(transaction=False)
            for task_id in ids:  # each leaves the index (COMPACT)
                self._compact(keys=[self.keys.task(task_id), self.keys.task_stream(task_id)],
                              args=[self.keys.prefix, task_id], client=pipe)
            folded += sum(int(n) for n in pipe.execute())
        return folded

    def reader(self, task_id: str) -> StreamReader:
        """A reader of the task's own event stream (an SSE feed)."""
        return StreamReader(self.r, self.keys.task_stream(task_id))

    def final_events(self, task_id: str, after: str) -> Rows | None:
        """None while the task may still change; once it is terminal, its events after stream
        id `after`, wherever they are kept (the stream, or the record once compacted)."""
        status, folded = cast(list[str | None], self.r.hmget(self.keys.task(task_id), "status", "events"))
        if status not in TERMINAL:
            return None
        if folded is None:
            return stream_after(self.r, self.keys.task_stream(task_id), after)
        start = stream_id_key(after)
        out: Rows = []
        for line in folded.split("\n") if folded else []:
            entry_id, data = line.split(" ", 1)
            if stream_id_key(entry_id) > start:
                out.append((entry_id, {"type": json.loads(data)["type"], "data": data}))
        return out


def _outcome(out: Sequence[Any]) -> tuple[str, bool]:
    """CREATE's or FIND's answer: (task id, created), or IdempotencyKeyReused."""
    outcome, tid = out
    if outcome == 2:
        raise IdempotencyKeyReused("this Idempotency-Key was already used for a different request",
                                   details={"idempotency_key": "reused with a different body", "task_id": str(tid)})
    return str(tid), bool(outcome)


def _record(raw: Mapping[str, str] | None) -> TaskRecord | None:
    # A hash without an id is not a record (a field written after it expired).
    return TaskRecord.from_hash(raw) if raw and raw.get("id") else None
