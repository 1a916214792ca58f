"""Provider quotas enforced across every worker process: one bucket per provider (or per
model with limits of its own), a sliding-window log of reservations, and a wait line that
decides who gets capacity when there is not enough for everyone.

- A reservation is one request plus its estimated tokens, logged at admission
  (`Keys.quota_log`, score = time; amounts in `Keys.quota_amounts` as "<requests> <tokens>")
  and settled to the real usage after the call, so estimates never leak capacity. The window
  is a strict 60 s sliding window: stricter than the providers' own token buckets, so what it
  admits they admit.
- Waiting callers queue in `Keys.quota_waiting`, ranked by priority band (9 first) and,
  within a band, by a weighted-fair virtual time per tenant: a tenant's burst of 10,000 and
  another's trickle alternate. A caller is admitted only when the capacity left covers it and
  everyone ranked ahead of it, so a priority-9 task that arrives behind a throttled backlog
  gets the next slot. A waiter that does not come back in time loses its place.
- The provider's headers move the bucket (learned limits when none are configured), and a
  429 pauses the bucket for everyone until its reset. When the provider has counted more than
  our own reservations (another client on the account, calls made before a limit was known,
  a provider that counts estimates where we settle to real usage), the difference is held as
  one entry per dimension until the provider's reset — replaced by each answer, compared with
  what we had reserved when that request was admitted, so answers that overlap never stack.

All of it is a few Lua scripts: the `limits` and `pyrate-limiter` libraries count hits in a
window (with weights) but cannot settle a reservation afterwards, hold a ranked wait line,
or be told by the provider what is left (README, "Provider quotas").
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from aiintegration.domain.quotas import WINDOW_S, RateLimitInfo, RateLimits
from aiintegration.store.keys import Keys

_EXPIRE = """
local function expire_old(bucket, log, amounts, now, window)
  while true do
    local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - window, 'LIMIT', 0, 500)
    if #old == 0 then return end
    local amts = redis.call('HMGET', amounts, unpack(old))
    local req, tok = 0, 0
    for _, a in ipairs(amts) do
      if a then
        local r, t = string.match(a, '^(%S+) (%S+)$')
        req = req + tonumber(r); tok = tok + tonumber(t)
      end
    end
    redis.call('HINCRBYFLOAT', bucket, 'used_requests', -req)
    redis.call('HINCRBYFLOAT', bucket, 'used_tokens', -tok)
    redis.call('ZREM', log, unpack(old))
    redis.call('HDEL', amounts, unpack(old))
  end
end
local function limits(bucket, rpm, tpm)
  if rpm <= 0 then rpm = tonumber(redis.call('HGET', bucket, 'learned_rpm') or '0') end
  if tpm <= 0 then tpm = tonumber(redis.call('HGET', bucket, 'learned_tpm') or '0') end
  return rpm, tpm
end
-- seconds until `need` more of the dimension (1: requests, 2: tokens) has left the window,
-- which holds `used` of it now and lets `limit` through per window
local function wait_for(log, amounts, now, window, need, dim, used, limit)
  if need <= 0 then return 0 end
  if need > used then
    -- more than the window holds (a line longer than one window lets through): the window
    -- empties within `window`, then each further window lets `limit` through
    return window + window * (need - used) / math.max(limit, 1)
  end
  local freed = 0
  local rows = redis.call('ZRANGE', log, 0, 999, 'WITHSCORES')
  for i = 1, #rows, 2 do
    local a = redis.call('HGET', amounts, rows[i])
    if a then
      local r, t = string.match(a, '^(%S+) (%S+)$')
      freed = freed + tonumber(dim == 1 and r or t)
      if freed >= need then return math.max(tonumber(rows[i + 1]) + window - now, 0.001) end
    end
  end
  return window
end
"""

# KEYS: bucket, log, amounts, waiting, needs, tenant clocks
# ARGV: now, window, reservation id, waiter id, priority (0-9), tenant, weight, tokens, rpm, tpm,
#       waiter grace s, scan limit
# Returns {1, requests left, tokens left, own requests, own tokens} when admitted (-1: unlimited;
# own: what our reservations hold, this one included, without the provider's hold), or
# {0, wait s, reason}.
ADMIT = _EXPIRE + """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local rid, wid, prio, tenant, weight = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local est = tonumber(ARGV[8])
local rpm, tpm = limits(KEYS[1], tonumber(ARGV[9]), tonumber(ARGV[10]))
if rpm <= 0 and tpm <= 0 and tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0') <= now then
  return {1, '-1', '-1'}  -- no limit known yet: nothing to count (the answer's headers may teach one)
end
expire_old(KEYS[1], KEYS[2], KEYS[3], now, window)
if tpm > 0 and est > tpm then est = tpm end  -- larger than the whole limit: it takes all of it
local used_req = tonumber(redis.call('HGET', KEYS[1], 'used_requests') or '0')
local used_tok = tonumber(redis.call('HGET', KEYS[1], 'used_tokens') or '0')
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0')
local score = tonumber(redis.call('ZSCORE', KEYS[4], wid))
local vt
if score then
  vt = score - (9 - prio) * 1e12
else
  local vnow = tonumber(redis.call('HGET', KEYS[1], 'vnow') or '0')
  vt = math.max(vnow, tonumber(redis.call('HGET', KEYS[6], tenant) or '0')) + 1 / weight
  score = (9 - prio) * 1e12 + vt
end
local ahead_req, ahead_tok = 0, 0
local ahead = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. string.format('%.17g', score),
                        'LIMIT', 0, tonumber(ARGV[12]))
for _, other in ipairs(ahead) do
  local need = other ~= wid and redis.call('HGET', KEYS[5], other)
  local tokens, expires = 0, 0
  if need then tokens, expires = string.match(need, '^(%S+) (%S+)$') end
  if other == wid then
    -- itself (a rounding of the bound): not ahead
  elseif not need or tonumber(expires) < now then  -- it did not come back: its place goes
    redis.call('ZREM', KEYS[4], other)
    redis.call('HDEL', KEYS[5], other)
  else
    ahead_req = ahead_req + 1
    ahead_tok = ahead_tok + tonumber(tokens)
  end
end
if #ahead >= tonumber(ARGV[12]) then
  -- the line goes on past the waiters read one by one: count the rest (each taken to need
  -- what this one does), so a waiter far back learns its real wait instead of one window
  local rest = redis.call('ZCOUNT', KEYS[4], '-inf', '(' .. string.format('%.17g', score)) - ahead_req
  if rest > 0 then ahead_req, ahead_tok = ahead_req + rest, ahead_tok + rest * est end
end
local fits_req = rpm <= 0 or used_req + ahead_req + 1 <= rpm
local fits_tok = tpm <= 0 or used_tok + ahead_tok + est <= tpm
if now >= paused and fits_req and fits_tok then
  redis.call('ZADD', KEYS[2], now, rid)
  redis.call('HSET', KEYS[3], rid, '1 ' .. est)
  redis.call('HINCRBYFLOAT', KEYS[1], 'used_requests', 1)
  redis.call('HINCRBYFLOAT', KEYS[1], 'used_tokens', est)
  redis.call('ZREM', KEYS[4], wid)
  redis.call('HDEL', KEYS[5], wid)
  if vt > tonumber(redis.call('HGET', KEYS[1], 'vnow') or '0') then redis.call('HSET', KEYS[1], 'vnow', vt) end
  for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, 86400) end
  local held = redis.call('HMGET', KEYS[3], 'provider:req', 'provider:tok')
  local own_req = used_req + 1 - tonumber(string.match(held[1] or '0 0', '^(%S+)'))
  local own_tok = used_tok + est - tonumber(string.match(held[2] or '0 0', ' (%S+)$'))
  return {1, rpm > 0 and tostring(rpm - used_req - 1) or '-1', tpm > 0 and tostring(tpm - used_tok - est) or '-1',
          tostring(own_req), tostring(own_tok)}
end
local wait, reason = 0, 'paused'
if now < paused then wait = paused - now end
if not fits_req then
  local w = wait_for(KEYS[2], KEYS[3], now, window, used_req + ahead_req + 1 - rpm, 1, used_req, rpm)
  if w > wait then wait, reason = w, 'requests' end
end
if not fits_tok then
  local w = wait_for(KEYS[2], KEYS[3], now, window, used_tok + ahead_tok + est - tpm, 2, used_tok, tpm)
  if w > wait then wait, reason = w, 'tokens' end
end
if ahead_req > 0 and reason ~= 'paused' then reason = reason .. '_queued' end
redis.call('ZADD', KEYS[4], score, wid)
redis.call('HSET', KEYS[5], wid, est .. ' ' .. (now + wait + tonumber(ARGV[11])))
redis.call('HSET', KEYS[6], tenant, vt)
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, 86400) end
return {0, tostring(wait), reason}
"""

# settle(K: bucket, amounts, log; A: reservation id, real tokens (-1: give the reservation back
# whole), when the request was sent). A settled reservation counts from when the request was
# sent: the provider counted it when it arrived, a moment later (the window's margin covers
# that moment). Counting from the call's end instead would hold every slot for the window plus
# the call's length (17 % of the capacity with 1-3 s calls in a 10 s window: bench/quota.py).
_SETTLE = """
local function settle(K, A)
  local a = redis.call('HGET', K[2], A[1])
  if not a then return 0 end
  local r, t = string.match(a, '^(%S+) (%S+)$')
  local real = tonumber(A[2])
  if real < 0 then
    redis.call('HINCRBYFLOAT', K[1], 'used_requests', -tonumber(r))
    redis.call('HINCRBYFLOAT', K[1], 'used_tokens', -tonumber(t))
    redis.call('HSET', K[2], A[1], '0 0')
  else
    redis.call('HINCRBYFLOAT', K[1], 'used_tokens', real - tonumber(t))
    redis.call('HSET', K[2], A[1], r .. ' ' .. real)
    if A[3] ~= '' then redis.call('ZADD', K[3], 'XX', A[3], A[1]) end
  end
  return 1
end
"""

# learn(K: bucket, log, amounts; A: now, window, rpm, tpm (configured; 0 = learn), limit req,
# remaining req, reset req s, limit tok, remaining tok, reset tok s, pause s, own req, own tok
# ('' = unknown)). What the provider said: learned limits (used where none is configured), a
# pause (a 429's Retry-After) for everyone, and what it counted beyond our own reservations:
# `limit - remaining - own`, where own is what we had reserved when this request was admitted
# (the moment the provider's `remaining` describes), held as ONE entry per dimension until the
# provider's reset. Each answer replaces the entry rather than adding to it: overlapping answers
# measure the same difference. Unknown own (admitted before a limit was known): our reservations
# now.
_LEARN = """
local function learn(K, A)
  local now, window = tonumber(A[1]), tonumber(A[2])
  local function num(i) if A[i] == '' then return nil end return tonumber(A[i]) end
  if num(5) then redis.call('HSET', K[1], 'learned_rpm', num(5)) end
  if num(8) then redis.call('HSET', K[1], 'learned_tpm', num(8)) end
  local rpm, tpm = limits(K[1], tonumber(A[3]), tonumber(A[4]))
  expire_old(K[1], K[2], K[3], now, window)
  local function hold(dim, limit, remaining, reset, own)
    if not remaining or not reset or limit <= 0 then return end
    local id, field = 'provider:' .. dim, dim == 'req' and 'used_requests' or 'used_tokens'
    local old = redis.call('HGET', K[3], id)
    local held = 0
    if old then held = tonumber(string.match(old, dim == 'req' and '^(%S+)' or ' (%S+)$')) end
    if not own then own = tonumber(redis.call('HGET', K[1], field) or '0') - held end
    local extra = limit - remaining - own
    if extra <= 0 and not old then return end
    redis.call('HINCRBYFLOAT', K[1], field, math.max(extra, 0) - held)
    if extra <= 0 then
      redis.call('ZREM', K[2], id)
      redis.call('HDEL', K[3], id)
      return
    end
    redis.call('ZADD', K[2], now - window + math.min(reset, window), id)
    redis.call('HSET', K[3], id, dim == 'req' and (extra .. ' 0') or ('0 ' .. extra))
  end
  hold('req', rpm, num(6), num(7), num(12))
  hold('tok', tpm, num(9), num(10), num(13))
  if num(11) then
    local until_ = now + num(11)
    if until_ > tonumber(redis.call('HGET', K[1], 'paused_until') or '0') then
      redis.call('HSET', K[1], 'paused_until', until_)
    end
  end
  for _, key in ipairs(K) do redis.call('EXPIRE', key, 86400) end
  return 1
end
"""

# KEYS: bucket, log, amounts. ARGV: reservation id ('' = none was made), its real tokens (-1: give
# it back whole), when its request was sent, then learn()'s arguments (none: nothing to learn).
# After a call, in one round trip: the reservation settled, what the answer said learned.
AFTER_CALL = _EXPIRE + _SETTLE + _LEARN + """
if ARGV[1] ~= '' then settle({KEYS[1], KEYS[3], KEYS[2]}, {ARGV[1], ARGV[2], ARGV[3]}) end
if #ARGV > 3 then learn(KEYS, {unpack(ARGV, 4)}) end
return 1
"""


# KEYS: bucket, log, amounts. ARGV: now, window, rpm, tpm.
# Returns {rpm, tpm, requests left, tokens left, paused s} (-1: not limited).
STATE = _EXPIRE + """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local rpm, tpm = limits(KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]))
expire_old(KEYS[1], KEYS[2], KEYS[3], now, window)
local used_req = tonumber(redis.call('HGET', KEYS[1], 'used_requests') or '0')
local used_tok = tonumber(redis.call('HGET', KEYS[1], 'used_tokens') or '0')
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0')
return {tostring(rpm), tostring(tpm), rpm > 0 and tostring(math.max(rpm - used_req, 0)) or '-1',
        tpm > 0 and tostring(math.max(tpm - used_tok, 0)) or '-1', tostring(math.max(paused - now, 0))}
"""


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reservation: str  # settle() or give_back() with it
    wait_s: float = 0.0  # when refused: until the bucket can cover this request and those ahead
    reason: str = ""  # "requests" | "tokens" | "paused", "_queued" when others wait ahead
    own_requests: int | None = None  # our reservations at admission, this one included (learn() with them)
    own_tokens: int | None = None


@dataclass(frozen=True)
class BucketState:
    limits: RateLimits  # in force: configured, else learned (0: none)
    requests_left: int  # -1: not limited
    tokens_left: int
    paused_s: float


# The window is held a little longer than the provider's (2% and a quarter of a second): a
# request admitted as an old one leaves our window reaches the provider a moment later — on a
# loaded host hundreds of milliseconds — and the old one must have left the provider's too.
WINDOW_MARGIN, WINDOW_SLACK_S = 1.02, 0.25


# How stale a process's view of "this bucket has no limit" may be: a limit learned or a pause
# set by another worker process reaches this one within it (the process that learned it, at
# once), as a breaker's state does (store/breakers.py). A configured limit needs no such look:
# it is in the provider's config.
UNLIMITED_RECHECK_S = 0.5


class QuotaStore:
    def __init__(self, client: redis.Redis, *, keys: Keys, window_s: float = WINDOW_S, waiter_grace_s: float = 10.0,
                 scan_limit: int = 256, unlimited_recheck_s: float = UNLIMITED_RECHECK_S):
        self.r, self.keys, self.window_s = client, keys, window_s * WINDOW_MARGIN + WINDOW_SLACK_S
        self.waiter_grace_s, self.scan_limit = waiter_grace_s, scan_limit
        self.unlimited_recheck_s = unlimited_recheck_s
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, bool]] = {}  # bucket → (monotonic time, unlimited)
        self._learned = 0  # learn() calls by this process: a look that overlapped one is not kept
        self._admit = client.register_script(ADMIT)
        self._after_call = client.register_script(AFTER_CALL)
        self._state = client.register_script(STATE)

    def _bucket_keys(self, provider: str, bucket: str) -> list[str]:
        return [self.keys.quota(provider, bucket), self.keys.quota_log(provider, bucket),
                self.keys.quota_amounts(provider, bucket)]

    def unlimited(self, provider: str, bucket: str, limits: RateLimits) -> bool:
        """True when the bucket has no limit configured (`limits`) or learned and no pause: an
        attempt has nothing to reserve there, and ADMIT would only say so (a round trip and a
        script per attempt on `local` and most self-hosted servers). What Redis holds is read
        at most every `unlimited_recheck_s` per process, and again at once after learn()."""
        if limits.rpm > 0 or limits.tpm > 0:
            return False
        key = (provider, bucket)
        seen = self._seen.get(key)
        if seen is not None and time.monotonic() - seen[0] < self.unlimited_recheck_s:
            return seen[1]
        learned = self._learned
        rpm, tpm, paused = cast(list[str | None], self.r.hmget(self.keys.quota(provider, bucket), "learned_rpm",
                                                                 "learned_tpm", "paused_until"))
        free = float(rpm or 0) <= 0 and float(tpm or 0) <= 0 and float(paused or 0) <= time.time()
        with self._lock:
            if learned == self._learned:
                self._seen[key] = (time.monotonic(), free)
        return free

    def admit(self, provider: str, bucket: str, limits: RateLimits, *, waiter: str, reservation: str,
              priority: int, tenant: str, weight: float, tokens: int, now: float | None = None) -> Admission:
        """Reserve one request and `tokens` if the bucket covers them and everyone ranked ahead;
        otherwise take (or keep) a place in its wait line and say how long to wait."""
        now = time.time() if now is None else now
        keys = [*self._bucket_keys(provider, bucket), self.keys.quota_waiting(provider, bucket),
                self.keys.quota_needs(provider, bucket), self.keys.quota_clocks(provider, bucket)]
        out = self._admit(keys=keys, args=[now, self.window_s, reservation, waiter, priority, tenant, weight, tokens,
                                           limits.rpm, limits.tpm, self.waiter_grace_s, self.scan_limit])
        if int(out[0]) == 1:
            own = (round(float(out[3])), round(float(out[4]))) if len(out) > 3 else (None, None)
            return Admission(True, reservation, own_requests=own[0], own_tokens=own[1])
        return Admission(False, reservation, wait_s=float(out[1]), reason=str(out[2]))

    def settle(self, provider: str, bucket: str, reservation: str, tokens: int, *, sent_at: float) -> None:
        """The call is over: its reservation becomes what it really used, counted from `sent_at`."""
        self.after_call(provider, bucket, RateLimits(), reservation, tokens, sent_at=sent_at)

    def give_back(self, provider: str, bucket: str, reservation: str) -> None:
        """No call was made (the attempt was not claimed after all): the reservation is returned."""
        self.after_call(provider, bucket, RateLimits(), reservation, None)

    def learn(self, provider: str, bucket: str, limits: RateLimits, info: RateLimitInfo | None = None, *,
              pause_s: float | None = None, own: tuple[int | None, int | None] = (None, None),
              now: float | None = None) -> None:
        """What an answer said: limits, a pause, and the provider's count beyond ours (`own`: our
        reservations when that request was admitted, from its Admission)."""
        self.after_call(provider, bucket, limits, "", None, info=info or RateLimitInfo(), pause_s=pause_s, own=own,
                        now=now)

    def after_call(self, provider: str, bucket: str, limits: RateLimits, reservation: str, tokens: int | None, *,
                   sent_at: float | None = None, info: RateLimitInfo | None = None, pause_s: float | None = None,
                   own: tuple[int | None, int | None] = (None, None), now: float | None = None) -> None:
        """settle() (`tokens`) or give_back() (None) a `reservation` ('': none was made), and
        learn() what the answer said when it said anything (`info`, `pause_s`): one round trip."""
        learning = info is not None or pause_s is not None
        if not reservation and not learning:
            return
        args: list[Any] = [reservation, -1 if tokens is None else max(0, tokens),
                           "" if tokens is None or sent_at is None else sent_at]
        if learning:
            i = info or RateLimitInfo()

            def arg(value: Any) -> Any:
                return "" if value is None else value

            args += [time.time() if now is None else now, self.window_s, limits.rpm, limits.tpm,
                     arg(i.limit_requests), arg(i.remaining_requests), arg(i.reset_requests_s), arg(i.limit_tokens),
                     arg(i.remaining_tokens), arg(i.reset_tokens_s), arg(pause_s), arg(own[0]), arg(own[1])]
        self._after_call(keys=self._bucket_keys(provider, bucket), args=args)
        if learning:
            taught = pause_s is not None or (info is not None and not info.empty)
            with self._lock:
                self._learned += 1  # a look at the bucket that overlapped this is not kept
                if taught:  # a limit or a pause: this process knows without looking that the bucket counts
                    self._seen[(provider, bucket)] = (time.monotonic(), False)

    def state(self, provider: str, bucket: str, limits: RateLimits, *, now: float | None = None) -> BucketState:
        now = time.time() if now is None else now
        out = cast(list[str], self._state(keys=self._bucket_keys(provider, bucket),
                                          args=[now, self.window_s, limits.rpm, limits.tpm]))
        rpm, tpm, req, tok, paused = (float(v) for v in out)
        return BucketState(RateLimits(int(rpm), int(tpm)), int(req), int(tok), paused)

    def leave(self, provider: str, bucket: str, waiter: str) -> None:
        """Give up a place in a bucket's wait line (the attempt went elsewhere)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem(self.keys.quota_waiting(provider, bucket), waiter)
        pipe.hdel(self.keys.quota_needs(provider, bucket), waiter)
        pipe.execute()
