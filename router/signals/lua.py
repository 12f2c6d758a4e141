"""Redis Lua scripts for the aggregates (docs/redis.md). Each runs atomically.

`UNIT_UPDATE` and `RECORD_FEEDBACK` are shared functions, prepended to the scripts that use
them, after the key names of router/keys.py (`keys.LUA_KEYS`). Per-unit totals live in one hash
per unit and arm; the sums over units in one hash per arm: ``n`` (distinct units),
``s1:<field>`` (Σ y), ``s2:<field>`` (Σ y²) and ``x:<num>|<den>`` (Σ y·n) for every pair of a
ratio metric. They change by the
difference of each unit's old and new totals, so reading them is O(1) whatever the traffic.
Requests without a unit id count in the per-arm totals but not in the unit-level sums.
"""

from __future__ import annotations

from router import keys

UNIT_UPDATE = (
    keys.LUA_KEYS
    + """
-- Increments of shared hashes (per-arm totals, sums over units, per-minute counters) are added
-- up in `acc` during the script and written once per field at the end (`flush`): one event's
-- many HINCRBYFLOATs become one per field per batch. Per-unit hashes are written at once, since
-- a later event of the same unit in the batch reads them.
local acc = {}
local function add(key, field, value)
  if value == 0 then return end
  local h = acc[key]
  if h == nil then h = {}; acc[key] = h end
  h[field] = (h[field] or 0) + value
end
local function flush()
  for key, fields in pairs(acc) do
    for field, value in pairs(fields) do
      if value ~= 0 then redis.call('HINCRBYFLOAT', key, field, value) end
    end
  end
  acc = {}
end
local DENOMINATORS = {requests = true, ttft_n = true, votes = true}
local EXTRA_PAIRS = {{'ttft_ms', 'ttft_n'}, {'fb:thumbs_up', 'votes'}, {'fb:thumbs_down', 'votes'}}

local function unit_update(tag, arm, unit, deltas)
  if unit == '' then return end
  local ukey = unit_key(tag, arm, unit)
  local skey = unit_sums_key(tag, arm)
  local flat = redis.call('HGETALL', ukey)
  if #flat == 0 then
    add(skey, 'n', 1)
    -- a unit new to this arm but known to the other moved (the share went up): SRM excludes it
    local other = 'control'
    if arm == 'control' then other = 'treatment' end
    if redis.call('EXISTS', unit_key(tag, other, unit)) == 1 then
      add(skey, 'moved_in', 1)
    end
  end
  local old, new = {}, {}
  for i = 1, #flat, 2 do
    local v = tonumber(flat[i + 1])
    old[flat[i]] = v
    new[flat[i]] = v
  end
  for f, d in pairs(deltas) do
    if d ~= 0 then
      local o = old[f] or 0
      old[f] = o
      new[f] = o + d
      redis.call('HINCRBYFLOAT', ukey, f, d)
      add(skey, 's1:' .. f, d)
      add(skey, 's2:' .. f, new[f] * new[f] - o * o)
    end
  end
  local function pair(num, den)
    local dn, dd = deltas[num] or 0, deltas[den] or 0
    if dn == 0 and dd == 0 then return end
    local before = (old[num] or 0) * (old[den] or 0)
    local after = (new[num] or 0) * (new[den] or 0)
    add(skey, 'x:' .. num .. '|' .. den, after - before)
  end
  for f, _ in pairs(new) do
    if f ~= 'requests' then pair(f, 'requests') end
  end
  for _, p in ipairs(EXTRA_PAIRS) do pair(p[1], p[2]) end
end
"""
)

RECORD_FEEDBACK = """
local function record_feedback(tag, rid, arm, unit, signal, value, ttl, minute, keep)
  local dkey = feedback_key(tag, rid)
  if redis.call('SADD', dkey, signal) == 0 then return 0 end
  redis.call('EXPIRE', dkey, ttl)
  -- a captured request (router/signals/capture.py) carries its feedback for the flywheel export
  local ckey = capture_key(tag, rid)
  if redis.call('EXISTS', ckey) == 1 then redis.call('HSET', ckey, 'fb:' .. signal, value) end
  local agg = arm_key(tag, arm)
  add(agg, 'feedback', 1)
  add(agg, 'fb:' .. signal, 1)
  add(agg, 'fv:' .. signal, value)
  local mkey = minute_key(tag, arm, minute)
  add(mkey, 'feedback', 1)
  redis.call('EXPIRE', mkey, keep)
  local deltas = {['fb:' .. signal] = 1, ['fv:' .. signal] = value}
  if signal == 'thumbs_up' or signal == 'thumbs_down' then deltas['votes'] = 1 end
  unit_update(tag, arm, unit, deltas)
  return 1
end
"""

# ARGV: stream maxlen, minute retention, then one JSON event per argument
# (router/signals/events.py).
RECORD_EVENTS = (
    UNIT_UPDATE
    + RECORD_FEEDBACK
    + """
local maxlen = ARGV[1]
local keep = tonumber(ARGV[2])
local written = 0
local minutes_seen = {}
for i = 3, #ARGV do
  local e = cjson.decode(ARGV[i])
  local tag = exp_tag(e.experiment)
  local index = string.sub(e.arm, 1, 1) .. '|' .. e.experiment .. '|' .. e.unit
  if redis.call('SET', request_key(e.request_id), index, 'NX', 'EX', e.ttl) then
    written = written + 1
    redis.call('XADD', events_key(tag), 'MAXLEN', '~', maxlen, '*',
      'request_id', e.request_id, 'ts', e.ts, 'route', e.route, 'arm', e.arm,
      'unit', e.unit, 'model', e.model, 'status', e.status, 'error', e.error,
      'stream', e.stream, 'latency_ms', e.latency_ms, 'ttft_ms', e.ttft_ms,
      'prompt_tokens', e.prompt_tokens, 'completion_tokens', e.completion_tokens,
      'cost_usd', e.cost_usd)
    local agg = arm_key(tag, e.arm)
    local is_error = 0
    if e.error ~= '' then is_error = 1 end
    add(agg, 'requests', 1)
    add(agg, 'errors', is_error)
    add(agg, 'status_' .. string.sub(tostring(e.status), 1, 1) .. 'xx', 1)
    add(agg, 'latency_ms_sum', e.latency_ms)
    add(agg, 'latency_ms_sq_sum', e.latency_ms * e.latency_ms)
    local deltas = {requests = 1, errors = is_error, latency_ms = e.latency_ms,
                    prompt_tokens = e.prompt_tokens, completion_tokens = e.completion_tokens,
                    cost_usd = e.cost_usd}
    if e.ttft_ms >= 0 then
      add(agg, 'ttft_count', 1)
      add(agg, 'ttft_ms_sum', e.ttft_ms)
      add(agg, 'ttft_ms_sq_sum', e.ttft_ms * e.ttft_ms)
      deltas['ttft_ms'] = e.ttft_ms
      deltas['ttft_n'] = 1
    end
    add(agg, 'prompt_tokens', e.prompt_tokens)
    add(agg, 'completion_tokens', e.completion_tokens)
    add(agg, 'cost_usd', e.cost_usd)
    local minute = math.floor(e.ts / 60)
    local mkey = minute_key(tag, e.arm, minute)
    add(mkey, 'requests', 1)
    add(mkey, 'errors', is_error)
    add(mkey, 'latency_ms_sum', e.latency_ms)
    add(mkey, 'completion_tokens', e.completion_tokens)
    if minutes_seen[mkey] == nil then
      minutes_seen[mkey] = true
      redis.call('EXPIRE', mkey, keep)
    end
    unit_update(tag, e.arm, e.unit, deltas)
    -- implicit `regenerated`: the same unit repeats its last prompt within the window
    if e.regen > 0 and e.unit ~= '' and e.fp ~= '' then
      local lkey = last_key(tag, e.unit)
      local prev = redis.call('HMGET', lkey, 'fp', 'rid', 'ts', 'arm')
      if prev[1] == e.fp and prev[2] ~= e.request_id
         and e.ts - tonumber(prev[3]) <= e.regen then
        record_feedback(tag, prev[2], prev[4], e.unit, 'regenerated', 1, e.ttl, minute, keep)
      end
      redis.call('HSET', lkey, 'fp', e.fp, 'rid', e.request_id, 'ts', e.ts, 'arm', e.arm)
      redis.call('EXPIRE', lkey, math.ceil(e.regen))
    end
  end
end
flush()
return written
"""
)

# ARGV: experiment, request id, arm, unit, signal, value, ttl, minute, minute retention.
FEEDBACK = (
    UNIT_UPDATE
    + RECORD_FEEDBACK
    + """
local tag = exp_tag(ARGV[1])
local fresh = record_feedback(tag, ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]),
                              tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9]))
flush()
return fresh
"""
)
