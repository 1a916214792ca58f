"""Lua scripts: every task-state change is one script, so it is atomic and emits its event.

Keys are built inside the scripts from the prefix (ARGV[1]); this targets a single Redis
(or a Sentinel-managed primary), not Redis Cluster.
"""

_EMIT = """
local function emit(tstream, gstream, tmax, gmax, etype, data)
  if etype == '' then return end
  redis.call('XADD', tstream, 'MAXLEN', '~', tmax, '*', 'type', etype, 'data', data)
  redis.call('XADD', gstream, 'MAXLEN', '~', gmax, '*', 'type', etype, 'data', data)
end
-- The four task counters that follow from state changes are counted here, with the change, so
-- they are exact; every other metric is buffered by the process (store/metrics.py).
local function count(p, field)
  redis.call('HINCRBYFLOAT', p .. ':metrics', field, 1)
end
local function move_status(p, id, old, new, created)
  if old ~= '' then redis.call('ZREM', p .. ':idx:status:' .. old, id) end
  redis.call('ZADD', p .. ':idx:status:' .. new, created, id)
end
"""

# A finished record is kept `ttl` seconds: `expires_at` in the record says until when, and
# `idx:upkeep` (member id|status|tenant|requested_by) says when the cleanup sweep looks at it
# next: at `visit` (its event stream folded into the record then, UPKEEP), and at `expires_at`,
# when the sweep deletes the record and its stream and drops its id from every listing index.
# The sweep deletes, not a Redis EXPIRE: the sweep has to visit anyway for the indexes, and a
# record that left its retention (a DLQ entry retried) must not vanish under a stale entry.
# The record's own HSET writes `expires_at` (TRANSITION adds it to its fields).
_RETAIN = """
local function retain(p, id, status, tenant, by, visit)
  redis.call('ZADD', p .. ':idx:upkeep', visit, id .. '|' .. status .. '|' .. (tenant or 'default') .. '|' .. (by or ''))
end
"""

# The task a submission names already: {0, id} (its own id, from a redelivered message, or the
# first task its idempotency key named for the same request), {2, first id} (the key named a
# task made from a different request), or nil (none).
_FIND = """
local function find(p, id, task_key, idem_key, fingerprint)
  if task_key ~= '' and redis.call('EXISTS', task_key) == 1 then return {0, id} end
  if idem_key == '' then return nil end
  local existing = redis.call('GET', idem_key)
  if not existing then return nil end
  local first, fp = string.match(existing, '^([^ ]+) ?(.*)$')
  if redis.call('EXISTS', p .. ':task:' .. first) == 0 then return nil end  -- it expired: the key is free
  if fp ~= '' and fp ~= fingerprint then return {2, first} end
  return {0, first}
end
"""

# KEYS: task, task stream, global stream, idempotency key ('' for none; scoped to the tenant)
# ARGV: prefix, id, created, idem ttl, requested_by, event data, tmax, gmax, tenant,
#       request fingerprint, started event data ('' = queued), due time (when started),
#       named ('1' when the caller named the id: a record may exist already; '' for an id
#       made for this call, which cannot), field, value, ...
# Returns {1, id} (created), {0, first id} (the key named a task made from the same request)
# or {2, first id} (the key named a task made from a different request: nothing written).
# Started: the record is made running, its first attempt claimed by the caller in the same
# step (the fields say by whom): what CLAIM would do next, without a second script.
CREATE = _EMIT + _FIND + """
local p, id = ARGV[1], ARGV[2]
local found = find(p, id, ARGV[13] == '1' and KEYS[1] or '', KEYS[4], ARGV[10])
if found then return found end
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], id .. ' ' .. ARGV[10], 'EX', ARGV[4]) end
local fields, ttype, started = {}, '', ARGV[11]
for i = 14, #ARGV, 2 do
  fields[#fields + 1], fields[#fields + 2] = ARGV[i], ARGV[i + 1]
  if ARGV[i] == 'task_type' then ttype = ARGV[i + 1] end
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', p .. ':idx:tasks', ARGV[3], id)
redis.call('ZADD', p .. ':idx:by:' .. ARGV[5], ARGV[3], id)
redis.call('ZADD', p .. ':idx:tenant:' .. ARGV[9], ARGV[3], id)
move_status(p, id, '', started ~= '' and 'running' or 'queued', ARGV[3])
if started ~= '' then redis.call('ZADD', p .. ':idx:due', ARGV[12], id) end
count(p, 'aii_tasks_created_total|task_type=' .. ttype)
emit(KEYS[2], KEYS[3], ARGV[7], ARGV[8], 'task.created', ARGV[6])
if started ~= '' then emit(KEYS[2], KEYS[3], ARGV[7], ARGV[8], 'task.started', started) end
return {1, id}
"""

# KEYS: task ('' for none), idempotency key ('' for none). ARGV: prefix, id, request fingerprint.
# CREATE's first step alone (what it would return without writing), or {1, ''} when it would create.
FIND = _FIND + """
return find(ARGV[1], ARGV[2], KEYS[1], KEYS[2], ARGV[3]) or {1, ''}
"""

# KEYS: task, task stream, global stream
# ARGV: prefix, now, now iso, worker_id, run_id, lease_s, max_processing_time, tmax, gmax, provider,
#       route task type, route pinned provider ('' = none): with a task type, the provider was
#       chosen from the message's route without reading the record, and the claim is refused
#       ({0, status, 'route'}) unless the record has that task type and pinned provider.
# Claims a queued task, a retrying task that is due, or a running task whose lease has
# expired (its worker died). Returns {1, old status, seconds it waited in the queue, seconds
# it waited for quota ('' if it did not), hash...} (the record as claimed) or
# {0, current status}, or {0, current status, 'lane'} for a task of the batch lane: a worker
# never runs those, it hands them (back) to the lane. The record is read once, whole.
# A running attempt is on `idx:due` at the earlier of its lease end and its deadline: when the
# cleanup sweep has to look at it (store/tasks.py `overdue`).
CLAIM = _EMIT + """
local p, now = ARGV[1], tonumber(ARGV[2])
local h = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do h[all[i]] = all[i + 1] end
local st = h['status']
if not st then return {0, ''} end
if h['lane'] == 'batch' then return {0, st, 'lane'} end
local ok, recovered = false, false
if st == 'queued' then ok = true
elseif st == 'retrying' then ok = (tonumber(h['retry_at']) or 0) <= now + 1
elseif st == 'running' then
  recovered = (tonumber(h['lease_until']) or 0) < now
  ok = recovered
end
if not ok then return {0, st} end
local ttype = h['task_type'] or ''
if ARGV[11] ~= '' then
  local decoded, options = pcall(cjson.decode, h['options'] or '{}')
  local pinned = decoded and type(options) == 'table' and options['provider'] or ''
  if type(pinned) ~= 'string' then pinned = '' end
  if ttype ~= ARGV[11] or pinned ~= ARGV[12] then return {0, st, 'route'} end
end
local id = h['id']
local attempt = (tonumber(h['attempts']) or 0) + 1
local since = tonumber(h['enqueued_at']) or now
if st == 'retrying' then since = tonumber(h['retry_at']) or since end
local queued_s = string.format('%.6f', math.max(0, now - since))
local throttled, throttled_s = tonumber(h['throttled_at']), ''
if throttled then  -- admitted after waiting for a provider's quota
  throttled_s = string.format('%.6f', math.max(0, now - throttled))
  redis.call('HDEL', KEYS[1], 'throttled_at', 'throttled_in')  -- admitted: it left the wait line
  h['throttled_at'], h['throttled_in'] = nil, nil
end
local timeout = math.min(tonumber(h['timeout_s']) or 300, tonumber(ARGV[7]))
local deadline = string.format('%.17g', now + timeout)
local lease = string.format('%.17g', now + tonumber(ARGV[6]))
local changes = {'status', 'running', 'worker_id', ARGV[4], 'run_id', ARGV[5], 'started_at', ARGV[2],
  'updated_at', ARGV[2], 'lease_until', lease, 'deadline_at', deadline, 'retry_at', '', 'attempts', tostring(attempt)}
redis.call('HSET', KEYS[1], unpack(changes))
redis.call('ZADD', p .. ':idx:due', string.format('%.17g', now + math.min(timeout, tonumber(ARGV[6]))), id)
if st == 'retrying' then redis.call('ZREM', p .. ':idx:retry', id) end  -- only a retrying task is there
move_status(p, id, st, 'running', h['created_at'])
emit(KEYS[2], KEYS[3], ARGV[8], ARGV[9], 'task.started', cjson.encode({type = 'task.started', at = ARGV[3],
  task_id = id, attempt = attempt, worker_id = ARGV[4], recovered = recovered}))
for i = 1, #changes, 2 do h[changes[i]] = changes[i + 1] end
local out = {1, st, queued_s, throttled_s}
for k, v in pairs(h) do out[#out + 1] = k; out[#out + 1] = v end
return out
"""

# KEYS: task, task stream, global stream
# ARGV: prefix, from (comma list), to, require field, require value, now, ttl (>0 kept that
#       long (_RETAIN), -1 kept for good, 0 leave), n events, tmax, gmax,
#       retry_at, dlq entry, terminal ('1' when `to` is terminal: counted as finished, and a
#       budget reservation made at submission is released), usage ('' or store/usage.py's
#       encoding: the call's tokens and cost into the day's and month's ledgers), the sweep's
#       first visit in seconds from now (with ttl > 0), then n (type, data) pairs, then
#       field, value, ...
# Returns {1, old status, task type, seconds since it was created} (the caller buffers the
# metrics, store/metrics.py) or {0, current status ('' when the task does not exist)}.
# The record is read once (one HMGET of the fields it needs; `provider` as the change leaves it).
TRANSITION = _EMIT + _RETAIN + """
local p, to, now = ARGV[1], ARGV[3], ARGV[6]
local st, id, tenant, by, created, ttype, prov, bc, bt, bd, bm, line, kept, required = unpack(redis.call('HMGET',
  KEYS[1], 'status', 'id', 'tenant', 'requested_by', 'created_at', 'task_type', 'provider', 'budget_cost',
  'budget_tokens', 'budget_day', 'budget_month', 'throttled_in', 'expires_at', ARGV[4] ~= '' and ARGV[4] or 'status'))
if not st then return {0, ''} end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == st then allowed = true end end
if not allowed then return {0, st} end
if ARGV[4] ~= '' and required ~= ARGV[5] then return {0, st} end
tenant, ttype, created = tenant or 'default', ttype or '', tonumber(created) or tonumber(now)
local nev = tonumber(ARGV[8])
local fields = {'status', to, 'updated_at', now}
local ttl = tonumber(ARGV[7])
if ttl > 0 then fields[5], fields[6] = 'expires_at', string.format('%.17g', tonumber(now) + ttl) end
for i = 16 + 2 * nev, #ARGV, 2 do
  fields[#fields + 1], fields[#fields + 2] = ARGV[i], ARGV[i + 1]
  if ARGV[i] == 'provider' then prov = ARGV[i + 1] end
end
redis.call('HSET', KEYS[1], unpack(fields))
if to ~= 'running' then redis.call('ZREM', p .. ':idx:due', id) end
if to == 'retrying' then redis.call('ZADD', p .. ':idx:retry', ARGV[11], id)
elseif st == 'retrying' then redis.call('ZREM', p .. ':idx:retry', id) end  -- only a retrying task is there
if ARGV[12] ~= '' then
  redis.call('HSET', p .. ':dlq', id, ARGV[12])
  redis.call('ZADD', p .. ':idx:dlq', now, id)  -- waiting for a decision
  redis.call('ZADD', p .. ':idx:dlq_kept', now, id)  -- every entry, for the DLQ retention
end
if ttl > 0 then
  retain(p, id, to, tenant, by, string.format('%.17g', tonumber(now) + tonumber(ARGV[15])))
elseif ttl < 0 or kept or st == 'dead_lettered' then
  -- A kept record that moves on (a discarded DLQ entry retried) is kept for good again: its
  -- upkeep entry is stale now, and a Redis TTL an earlier version gave it goes too.
  if kept then redis.call('HDEL', KEYS[1], 'expires_at') end
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
move_status(p, id, st, to, created)
if line and line ~= '' and to ~= 'queued' and to ~= 'retrying' then
  -- it waited in a provider's quota line and no longer waits (cancelled, dead-lettered...):
  -- its place goes now, not when it would have come back (store/keys.py Keys.quota_waiting)
  local qprov, qbucket = string.match(line, '^([^|]*)|(.*)$')
  local q = p .. ':quota:{' .. qprov .. '}:' .. qbucket
  redis.call('ZREM', q .. ':waiting', id)
  redis.call('HDEL', q .. ':needs', id)
  redis.call('ZREM', p .. ':idx:deferred', id)  -- and its next ask, if it was deferred
  redis.call('HDEL', KEYS[1], 'throttled_at', 'throttled_in')
end
if ARGV[14] ~= '' then
  local day, month, who, via, model, req, inp, cached, out, cost = string.match(ARGV[14],
    '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  local dkey, mkey = p .. ':usage:' .. day, p .. ':usage:month:' .. month
  local f = who .. '|' .. via .. '|' .. model .. '|'
  -- The row's first request of the day starts both ledgers' 400 days (a later write leaves them).
  local first = tonumber(redis.call('HINCRBYFLOAT', dkey, f .. 'requests', req)) == tonumber(req)
  -- Amounts of 0 are not written: a missing field reads as 0 (store/usage.py).
  for name, amount in pairs({input_tokens = inp, cached_input_tokens = cached, output_tokens = out, cost = cost}) do
    if tonumber(amount) ~= 0 then redis.call('HINCRBYFLOAT', dkey, f .. name, amount) end
  end
  local tokens = tonumber(inp) + tonumber(out)
  redis.call('HINCRBYFLOAT', dkey, who .. '|tokens', tokens)
  redis.call('HINCRBYFLOAT', mkey, who .. '|tokens', tokens)
  if tonumber(cost) ~= 0 then
    redis.call('HINCRBYFLOAT', dkey, who .. '|cost', cost)
    redis.call('HINCRBYFLOAT', mkey, who .. '|cost', cost)
  end
  if first then
    redis.call('EXPIRE', dkey, 400 * 86400)
    redis.call('EXPIRE', mkey, 400 * 86400)
  end
end
if ARGV[13] == '1' then
  if bd and bd ~= '' then  -- a reservation made at submission (a record without one holds '')
    for _, window in ipairs({'day:' .. bd, 'month:' .. bm}) do
      local rkey = p .. ':budget:' .. tenant .. ':' .. window
      if redis.call('EXISTS', rkey) == 1 then  -- a window that ended took its reservations with it
        redis.call('HINCRBYFLOAT', rkey, 'cost', -(tonumber(bc) or 0))
        redis.call('HINCRBYFLOAT', rkey, 'tokens', -(tonumber(bt) or 0))
      end
    end
    redis.call('HDEL', KEYS[1], 'budget_cost', 'budget_tokens', 'budget_day', 'budget_month')
  end
  count(p, 'aii_tasks_finished_total|status=' .. to .. ',task_type=' .. ttype .. ',provider=' .. (prov or ''))
elseif to == 'retrying' then
  count(p, 'aii_task_retries_total|task_type=' .. ttype)
elseif to == 'timed_out' then
  count(p, 'aii_tasks_timed_out_total|task_type=' .. ttype)
end
for i = 0, nev - 1 do emit(KEYS[2], KEYS[3], ARGV[9], ARGV[10], ARGV[16 + 2 * i], ARGV[17 + 2 * i]) end
return {1, st, ttype, string.format('%.6f', math.max(0, tonumber(now) - created))}
"""

# KEYS: task keys. ARGV: prefix, lease_until, run_id per key.
# Extends the lease of attempts that still own their task; returns, per key, 'ok' or the
# task's status ('' if gone) so the worker can stop attempts that were cancelled. `idx:due`
# is written whether or not the id is there: an entry the sweep dropped comes back in one beat.
HEARTBEAT = """
local p, lease = ARGV[1], ARGV[2]
local out = {}
for i, key in ipairs(KEYS) do
  local st, run, id, deadline = unpack(redis.call('HMGET', key, 'status', 'run_id', 'id', 'deadline_at'))
  if st == 'running' and run == ARGV[i + 2] then
    redis.call('HSET', key, 'lease_until', lease)
    local due = math.min(tonumber(lease), tonumber(deadline) or tonumber(lease))
    redis.call('ZADD', p .. ':idx:due', string.format('%.17g', due), id)
    out[i] = 'ok'
  else
    out[i] = st or ''
  end
end
return out
"""


# A succeeded or cancelled task gets no more events: its stream (a Redis stream costs ~1.3
# KiB even for three events) is folded into the record as `events`, one "<stream id>
# <data JSON>" line per event, and deleted; fields of the running attempt go too. Returns 1
# when it did, 0 when there was nothing to fold. Idempotent.
_FOLD = """
local function fold(record, stream)
  local st = redis.call('HGET', record, 'status')
  if (st ~= 'succeeded' and st ~= 'cancelled') or redis.call('HEXISTS', record, 'events') == 1 then return 0 end
  local lines = {}
  for _, entry in ipairs(redis.call('XRANGE', stream, '-', '+')) do
    local f = entry[2]
    for j = 1, #f, 2 do
      if f[j] == 'data' then lines[#lines + 1] = entry[1] .. ' ' .. f[j + 1] end
    end
  end
  redis.call('HSET', record, 'events', table.concat(lines, '\\n'))
  redis.call('DEL', stream)
  -- fields that only mattered while it ran, and empty ones (a missing field reads as empty)
  local drop = {'run_id', 'lease_until', 'enqueued_at'}
  local all = redis.call('HGETALL', record)
  for i = 1, #all, 2 do if all[i + 1] == '' then drop[#drop + 1] = all[i] end end
  redis.call('HDEL', record, unpack(drop))
  return 1
end
"""

# KEYS: task, task stream. ARGV: prefix, id.
# `idx:compact`, where versions before `idx:upkeep` listed finished tasks to fold: drained
# by the cleanup sweep (store/tasks.py `compact_listed`).
COMPACT = _FOLD + """
redis.call('ZREM', ARGV[1] .. ':idx:compact', ARGV[2])
return fold(KEYS[1], KEYS[2])
"""

# KEYS: task, task stream. ARGV: prefix, idx:upkeep member (id|status|tenant|requested_by), now.
# The cleanup sweep's visit of a kept record (_RETAIN): past `expires_at`, the record and its
# stream are deleted and its id leaves every listing index ('expired'); before it, its stream
# is folded in and the next visit is at `expires_at` ('folded'); an entry the record has
# outgrown (kept for good again, or kept again under another status) just goes ('stale').
UPKEEP = _FOLD + """
local p, member, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local index = p .. ':idx:upkeep'
local id, status, tenant, by = string.match(member, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
local st, kept = unpack(redis.call('HMGET', KEYS[1], 'status', 'expires_at'))
kept = tonumber(kept)
if st and (st ~= status or not kept) then
  redis.call('ZREM', index, member)
  return 'stale'
end
if st and kept > now then
  fold(KEYS[1], KEYS[2])
  redis.call('ZADD', index, string.format('%.17g', kept), member)
  return 'folded'
end
redis.call('DEL', KEYS[1], KEYS[2])
for _, name in ipairs({'tasks', 'status:' .. status, 'by:' .. by, 'tenant:' .. tenant}) do
  redis.call('ZREM', p .. ':idx:' .. name, id)
end
redis.call('ZREM', index, member)
return 'expired'
"""

# KEYS: task. ARGV: prefix, ttl, now, status.
# The record is kept `ttl` seconds more (_RETAIN), then deleted with its events by the
# cleanup sweep (a discarded or too old DLQ entry). Returns 1, or 0 if it is gone or no
# longer in `status` (a replay came first).
RETAIN = _RETAIN + """
local p, ttl, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local id, st, tenant, by = unpack(redis.call('HMGET', KEYS[1], 'id', 'status', 'tenant', 'requested_by'))
if not id or st ~= ARGV[4] then return 0 end
local kept = string.format('%.17g', now + ttl)
redis.call('HSET', KEYS[1], 'expires_at', kept)
retain(p, id, st, tenant, by, kept)
return 1
"""


# KEYS: task, task stream, global stream. ARGV: prefix, event type, event data, tmax, gmax,
#       n, then n field, value pairs set, then pairs set only where the record has none yet.
# An event that changes no state (task.throttled): appended to both streams.
# Returns 0 when the task does not exist.
NOTE = _EMIT + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local first = 7 + 2 * tonumber(ARGV[6])
for i = 7, first - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
for i = first, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
emit(KEYS[2], KEYS[3], ARGV[4], ARGV[5], ARGV[2], ARGV[3])
return 1
"""


# KEYS: an index scored by due time. ARGV: due by, limit.
# The members due, removed from the index in the same step (so each is handed out once).
TAKE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end
return ids
"""
