"""The batch lane in Redis: the tasks waiting per provider|model (`Keys.lane_waiting`), our
batch records (`Keys.lane_batch`, a `LaneBatch` each) and their indexes.

A waiting task moves into a batch in one script (`take`): it leaves the waiting set and its
record gets `batch_ref` in the same step, so a task is in at most one batch, and admission
(`admit`) refuses a task a batch holds. Task states themselves change only through
`TaskStore.transition`; these scripts touch the lane's own fields and indexes.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import redis

from aiintegration.domain.batching import group_name
from aiintegration.domain.lane_batch import LaneBatch
from aiintegration.domain.records import HashValue
from aiintegration.store.keys import Keys

# KEYS: task, waiting set, groups set. ARGV: now, group.
# Returns the group's size after admitting, or -1 when the task may not wait (not queued, not a
# lane task, or held by a batch being submitted).
ADMIT = """
local st, lane, ref = unpack(redis.call('HMGET', KEYS[1], 'status', 'lane', 'batch_ref'))
if st ~= 'queued' or lane ~= 'batch' or (ref and ref ~= '') then return -1 end
redis.call('ZADD', KEYS[2], 'NX', ARGV[1], redis.call('HGET', KEYS[1], 'id'))
redis.call('SADD', KEYS[3], ARGV[2])
return redis.call('ZCARD', KEYS[2])
"""

# KEYS: task, its waiting set now, the waiting set it moves to, groups set. ARGV: group now,
#       group it moves to ('' = it leaves the lane: the caller sends it to a worker), now,
#       then field, value pairs set with the move (a re-pin).
# A task still waiting in group `now` (queued, in the lane, held by no batch) moves: it keeps
# its place in line (the time it was admitted). Returns 1, or 0 when a batch took it first
# or it no longer waits there.
MOVE = """
local st, lane, ref, grp, id = unpack(redis.call('HMGET', KEYS[1], 'status', 'lane', 'batch_ref', 'lane_group', 'id'))
if st ~= 'queued' or lane ~= 'batch' or (ref and ref ~= '') or grp ~= ARGV[1] then return 0 end
local since = redis.call('ZSCORE', KEYS[2], id) or ARGV[3]
redis.call('ZREM', KEYS[2], id)
local fields = {}
for i = 4, #ARGV, 2 do fields[#fields + 1], fields[#fields + 2] = ARGV[i], ARGV[i + 1] end
if ARGV[2] == '' then
  fields[#fields + 1], fields[#fields + 2] = 'lane', ''
  fields[#fields + 1], fields[#fields + 2] = 'lane_group', ''
else
  fields[#fields + 1], fields[#fields + 2] = 'lane_group', ARGV[2]
  redis.call('ZADD', KEYS[3], 'NX', since, id)
  redis.call('SADD', KEYS[4], ARGV[2])
end
redis.call('HSET', KEYS[1], unpack(fields))
return 1
"""

# KEYS: waiting set, batch hash, batches index, live index. ARGV: prefix, batch id, created_at,
# n field pairs, field, value, ..., then task ids.
# Each task leaves the waiting set; those still queued lane tasks held by no batch get
# `batch_ref` and make up the batch, which is written with them. Returns the ids taken.
TAKE = """
local p, bid, created, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local taken = {}
for i = 5 + 2 * n, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local key = p .. ':task:' .. id
    local st, lane, ref = unpack(redis.call('HMGET', key, 'status', 'lane', 'batch_ref'))
    if st == 'queued' and lane == 'batch' and (not ref or ref == '') then
      redis.call('HSET', key, 'batch_ref', bid)
      taken[#taken + 1] = id
    end
  end
end
if #taken == 0 then return taken end
local fields = {'tasks', cjson.encode(taken)}
for i = 5, 4 + 2 * n do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('ZADD', KEYS[3], created, bid)
redis.call('ZADD', KEYS[4], created, bid)
return taken
"""

# KEYS: waiting set, groups set. ARGV: prefix, batch id, now, group, task ids.
# A batch that never reached the provider gives its tasks back: `batch_ref` cleared, and the
# ones still queued in the lane wait again. Returns how many wait again.
RELEASE = """
local p, bid = ARGV[1], ARGV[2]
local back = 0
for i = 5, #ARGV do
  local key = p .. ':task:' .. ARGV[i]
  local st, lane, ref = unpack(redis.call('HMGET', key, 'status', 'lane', 'batch_ref'))
  if ref == bid then
    redis.call('HSET', key, 'batch_ref', '')
    if st == 'queued' and lane == 'batch' then
      redis.call('ZADD', KEYS[1], 'NX', ARGV[3], ARGV[i])
      back = back + 1
    end
  end
end
if back > 0 then redis.call('SADD', KEYS[2], ARGV[4]) end
return back
"""

# KEYS: lock. ARGV: token, ttl ms. Extends the lock only while it is still ours.
RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

# KEYS: waiting set, groups set. ARGV: group. A group whose set emptied leaves the groups set.
FORGET_EMPTY = """
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) return 1 end
return 0
"""


def _changed(batch: LaneBatch, changes: Mapping[str, Any]) -> tuple[LaneBatch, dict[Any, HashValue]]:
    """The batch with `changes`, and the hash fields they rewrite (keys typed Any: redis-py's
    `hset` wants its own key union)."""
    changed = batch.with_changes(**changes)
    return changed, {k: v for k, v in changed.to_hash().items() if k in changes}


class BatchStore:
    def __init__(self, client: redis.Redis, *, keys: Keys, retention_s: int = 604800):
        self.r = client
        self.keys = keys
        self.retention_s = retention_s
        self._admit = client.register_script(ADMIT)
        self._take = client.register_script(TAKE)
        self._release = client.register_script(RELEASE)
        self._forget_empty = client.register_script(FORGET_EMPTY)
        self._move = client.register_script(MOVE)
        self._renew = client.register_script(RENEW)
        self._unlock = client.register_script(UNLOCK)

    @contextmanager
    def lock(self, name: str, *, ttl_s: float) -> Iterator[bool]:
        """Yields whether this caller holds the lane's `name` lock. A thread renews it every
        third of `ttl_s` while the holder runs, so a long collect or apply keeps it and a
        killed holder's lock is free again within `ttl_s`."""
        key, token, ttl_ms = self.keys.lock(name), uuid.uuid4().hex, max(1000, int(ttl_s * 1000))
        got = bool(self.r.set(key, token, nx=True, px=ttl_ms))
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(ttl_ms / 3000):
                try:
                    self._renew(keys=[key], args=[token, ttl_ms])
                except redis.RedisError:
                    pass  # the next renewal tries again; the lock lasts ttl_s meanwhile

        renewer = threading.Thread(target=renew, name=f"aii-lock-{name}", daemon=True) if got else None
        if renewer:
            renewer.start()
        try:
            yield got
        finally:
            stop.set()
            if got:
                self._unlock(keys=[key], args=[token])

    # waiting tasks -------------------------------------------------------------------------
    def admit(self, task_id: str, group: str, *, now: float) -> int:
        """The task waits for its group's next batch (once, however often it is admitted);
        returns the group's size, or -1 when the task may not wait."""
        return int(self._admit(keys=[self.keys.task(task_id), self.keys.lane_waiting(group), self.keys.lane_groups],
                               args=[now, group]))

    def groups(self) -> list[str]:
        return sorted(cast(set[str], self.r.smembers(self.keys.lane_groups)))

    def group_states(self, groups: Sequence[str]) -> list[tuple[int, float | None]]:
        """(waiting, when the oldest was admitted) per group, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for group in groups:
            pipe.zcard(self.keys.lane_waiting(group))
            pipe.zrange(self.keys.lane_waiting(group), 0, 0, withscores=True)
        raw = pipe.execute()
        out = []
        for count, first in zip(raw[::2], raw[1::2], strict=True):
            out.append((int(count), float(first[0][1]) if first else None))
        return out

    def waiting(self, group: str, *, limit: int) -> list[str]:
        """The group's waiting task ids, longest waiting first."""
        return cast(list[str], self.r.zrange(self.keys.lane_waiting(group), 0, max(0, limit - 1)))

    def drop_waiting(self, group: str, task_ids: Sequence[str]) -> None:
        if task_ids:
            self.r.zrem(self.keys.lane_waiting(group), *task_ids)

    def move(self, task_id: str, group: str, to: str | None, *, now: float,
             fields: Mapping[str, HashValue] | None = None) -> bool:
        """A task waiting in `group` waits in `to` instead (None: it leaves the lane), with
        `fields` changed in the same step; False when a batch took it first."""
        args: list[Any] = [group, to or "", now]
        for k, v in (fields or {}).items():
            args += [k, v]
        target = self.keys.lane_waiting(to or group)
        return bool(self._move(keys=[self.keys.task(task_id), self.keys.lane_waiting(group), target,
                                     self.keys.lane_groups], args=args))

    def forget_if_empty(self, group: str) -> bool:
        return bool(self._forget_empty(keys=[self.keys.lane_waiting(group), self.keys.lane_groups], args=[group]))

    def depths(self) -> dict[str, int]:
        """Waiting tasks per group (the lane depth)."""
        groups = self.groups()
        return {g: n for g, (n, _) in zip(groups, self.group_states(groups), strict=True)}

    # batches ---------------------------------------------------------------------------------
    def take(self, group: str, batch: LaneBatch, task_ids: Sequence[str]) -> list[str]:
        """Move waiting tasks into a new batch record (written only if it got any task)."""
        fields = [x for name, value in batch.to_hash().items() if name != "tasks" for x in (name, value)]
        out = self._take(keys=[self.keys.lane_waiting(group), self.keys.lane_batch(batch.id), self.keys.lane_batches,
                               self.keys.lane_live],
                         args=[self.keys.prefix, batch.id, batch.created_at, len(fields) // 2, *fields, *task_ids])
        return [str(t) for t in out]

    def release(self, batch: LaneBatch, *, now: float) -> int:
        """The batch's tasks wait in the lane again (it never reached the provider)."""
        group = group_name(batch.provider, batch.model)
        return int(self._release(keys=[self.keys.lane_waiting(group), self.keys.lane_groups],
                                 args=[self.keys.prefix, batch.id, now, group, *batch.tasks]))

    def update(self, batch: LaneBatch, **changes: Any) -> LaneBatch:
        """Write the changed fields of a batch; returns the changed batch."""
        changed, fields = _changed(batch, changes)
        if fields:
            self.r.hset(self.keys.lane_batch(batch.id), mapping=fields)
        return changed

    def mark_submitted(self, batch: LaneBatch, **changes: Any) -> LaneBatch:
        """The provider accepted the batch: its id goes on record with the batch's new state
        in one step (reconciling tells our provider batches from others by these ids)."""
        changed, fields = _changed(batch, changes)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.lane_batch(batch.id), mapping=fields)
        pipe.zadd(self.keys.lane_provider_ids, {str(changed.provider_id): batch.created_at})
        pipe.execute()
        return changed

    def provider_ids_since(self, since: float) -> set[str]:
        """Provider batch ids recorded for batches created since `since`."""
        return set(cast(list[str], self.r.zrangebyscore(self.keys.lane_provider_ids, since, "+inf")))

    def finish(self, batch: LaneBatch, **changes: Any) -> LaneBatch:
        """The batch is over: off the live index, its record kept for the retention period
        with its counts but without its task list (~39 B a task, no longer needed)."""
        changes.setdefault("counts", {**batch.counts, "total": len(batch.tasks)})
        done, fields = _changed(batch, changes)
        pipe = self.r.pipeline()  # one round trip, in one transaction
        pipe.hset(self.keys.lane_batch(batch.id), mapping=fields)
        pipe.zrem(self.keys.lane_live, batch.id)
        pipe.hdel(self.keys.lane_batch(batch.id), "tasks")
        pipe.expire(self.keys.lane_batch(batch.id), self.retention_s)
        pipe.execute()
        return done.with_changes(tasks=())

    def get(self, batch_id: str) -> LaneBatch | None:
        raw = cast(dict[str, str], self.r.hgetall(self.keys.lane_batch(batch_id)))
        return LaneBatch.from_hash(raw) if raw.get("id") else None

    def get_many(self, batch_ids: Sequence[str]) -> list[LaneBatch | None]:
        pipe = self.r.pipeline(transaction=False)
        for batch_id in batch_ids:
            pipe.hgetall(self.keys.lane_batch(batch_id))
        return [LaneBatch.from_hash(raw) if raw.get("id") else None
                for raw in cast(list[dict[str, str]], pipe.execute())]

    def live(self) -> list[str]:
        """Batches not ended, oldest first: all of them (ids only; a poll reads their records
        a page at a time)."""
        return cast(list[str], self.r.zrange(self.keys.lane_live, 0, -1))

    def in_flight(self) -> dict[str, int]:
        """Live batches per provider."""
        pipe = self.r.pipeline(transaction=False)
        for batch_id in self.live():
            pipe.hget(self.keys.lane_batch(batch_id), "provider")  # not the whole record: no task list per scrape
        out: dict[str, int] = {}
        for provider in cast(list[str | None], pipe.execute()):
            if provider:
                out[provider] = out.get(provider, 0) + 1
        return out

    def page(self, *, limit: int, cursor: str | None = None) -> tuple[list[tuple[LaneBatch, float]], bool]:
        """Batches newest first, strictly older than `cursor` (a creation time); whether more follow."""
        top = f"({cursor}" if cursor else "+inf"
        rows = cast(list[tuple[str, float]], self.r.zrevrangebyscore(self.keys.lane_batches, top, "-inf", start=0,
                                                                      num=limit + 1, withscores=True))
        batches = self.get_many([m for m, _ in rows[:limit]])
        stale = [m for (m, _), b in zip(rows, batches, strict=False) if b is None]
        if stale:
            self.r.zrem(self.keys.lane_batches, *stale)
        kept = [(b, s) for (_, s), b in zip(rows, batches, strict=False) if b is not None]
        return kept, len(rows) > limit

    def trim(self, *, before: float) -> int:
        """Forget listing entries and provider ids of batches created before `before` (their
        records expire by themselves)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zremrangebyscore(self.keys.lane_batches, "-inf", f"({before}")
        pipe.zremrangebyscore(self.keys.lane_provider_ids, "-inf", f"({before}")
        return int(pipe.execute()[0])

    # the tasks a batch holds --------------------------------------------------------------
    def owners(self, task_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(status, run_id) of each task ('' when unset or gone): which still run in a batch."""
        pipe = self.r.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hmget(self.keys.task(task_id), "status", "run_id")
        return [(status or "", run or "") for status, run in cast(list[list[str | None]], pipe.execute())]
