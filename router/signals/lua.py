"""Redis Lua scripts for the aggregates (docs/redis.md). Each runs atomically.

`UNIT_UPDATE` and `RECORD_FEEDBACK` are shared functions, prepended to the scripts that use
them, after the key names of router/keys.py (`keys.LUA_KEYS`). Per-unit totals live in one hash
per arm (one field per unit); the sums over units in one hash per arm: ``n`` (distinct units),
``s1:<field>`` (Σ y), ``s2:<field>`` (Σ y²), ``x:<num>|<den>`` (Σ y·n) for every pair of a
ratio metric and ``nz:<den>`` (units whose total of a denominator is non-zero). They change by the
difference of each unit's old and new totals, so reading them is O(1) whatever the traffic.
Requests without a unit id count in the per-arm totals but not in the unit-level sums.
The same sums are also kept per period of the experiment (`unit_update` below, docs/redis.md),
so that an estimate can compare the arms within periods of a fixed share and treatment.

An arm holds at most `max_units` units (ARGV of RECORD_EVENTS; ``ABGATE_MAX_UNITS_PER_ARM``):
a unit new to an arm that holds as many is not stored, so that unit ids a client invents cannot
grow Redis without bound. Its requests count in the per-arm totals, as those without a unit id,
and in the arm's ``units_over_cap``. Feedback never adds a unit: its request's event did (or,
over the cap or after the end, did not).

Each arm's totals also hold a histogram of request latencies, ``lh:<k>`` (geometric buckets of
ratio 1.02, at most 801 fields; analysis/types.py), for the p95 guardrail.
"""

from __future__ import annotations

import math

from analysis.types import LATENCY_BUCKET_RATIO, LATENCY_BUCKETS_MAX
from router import keys

# The latency histogram's bucket (analysis/stats/bernoulli.py `latency_bucket` computes the same)
LATENCY_BUCKET = f"""
local LH_LOG_RATIO = {math.log(LATENCY_BUCKET_RATIO)!r}
local LH_MAX = {LATENCY_BUCKETS_MAX:d}
local function latency_bucket(ms)
  local k = math.floor(math.log(math.max(ms, 1)) / LH_LOG_RATIO)
  if k > LH_MAX then k = LH_MAX end
  return k
end
"""

UNIT_UPDATE = (
    keys.LUA_KEYS
    + """
-- Increments of shared hashes (per-arm totals, sums over units, per-minute counters) are added
-- up in `acc` during the script and written once per field at the end (`flush`): one event's
-- many HINCRBYFLOATs become one per field per batch. A unit's totals are written at once, since
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

-- The end of an experiment (router/control/retention.py) leaves a marker: `until`, when its
-- per-unit totals and event stream expire, and `deleted`. Read once per experiment per script.
local markers = {}
local function marker(tag)
  local m = markers[tag]
  if m == nil then
    local v = redis.call('HMGET', ended_key(tag), 'until', 'deleted')
    m = {ends = tonumber(v[1]), deleted = v[2] == '1'}
    markers[tag] = m
  end
  return m
end
-- Events still on their way when the experiment ended are recorded; a key they create again
-- gets the same expiry as the ones the end set, so nothing outlives the retention.
local function settle()
  for tag, m in pairs(markers) do
    if m.ends then
      for _, key in ipairs({unit_key(tag, 'control'), unit_key(tag, 'treatment'),
                            events_key(tag)}) do
        if redis.call('TTL', key) == -1 then
          redis.call('PEXPIREAT', key, math.floor(m.ends * 1000))
        end
      end
    end
  end
end

-- A unit's totals: one field of the arm's hash, `name=value,...`. Numbers are written with the
-- fewest digits that read back as the same double, so the sums below stay those of the stored
-- totals.
local function num(v)
  if v == math.floor(v) and math.abs(v) < 1e15 then return string.format('%d', v) end
  for _, fmt in ipairs({'%.15g', '%.16g'}) do
    local s = string.format(fmt, v)
    if tonumber(s) == v then return s end
  end
  return string.format('%.17g', v)
end
local function decode_totals(raw)
  local t = {}
  for k, v in string.gmatch(raw, '([^,=]+)=([^,]+)') do t[k] = tonumber(v) end
  return t
end
local function encode_totals(t)
  local parts = {}
  for k, v in pairs(t) do parts[#parts + 1] = k .. '=' .. num(v) end
  return table.concat(parts, ',')
end

local EXTRA_PAIRS = {{'ttft_ms', 'ttft_n'}, {'fb:thumbs_up', 'votes'}, {'fb:thumbs_down', 'votes'}}
-- the denominators of the ratio metrics: `nz:<den>` counts the units whose total is non-zero
-- (units that voted, for thumbs metrics), the evidence a test needs before it may act
local DENOMINATORS = {'requests', 'votes', 'ttft_n'}

-- The most units one arm's totals hash holds (the script sets it from its ARGV).
local max_units = 1000000

-- The increments of the sums over units (`s1:`, `s2:`, `x:`, `nz:`, field names after `pre`)
-- when a unit's totals go from `old` to `new` by `deltas`.
local function add_sums(skey, pre, old, new, deltas)
  for f, d in pairs(deltas) do
    if d ~= 0 then
      local o = old[f] or 0
      add(skey, pre .. 's1:' .. f, d)
      add(skey, pre .. 's2:' .. f, new[f] * new[f] - o * o)
    end
  end
  local function pair(num_f, den)
    local dn, dd = deltas[num_f] or 0, deltas[den] or 0
    if dn == 0 and dd == 0 then return end
    local before = (old[num_f] or 0) * (old[den] or 0)
    local after = (new[num_f] or 0) * (new[den] or 0)
    add(skey, pre .. 'x:' .. num_f .. '|' .. den, after - before)
  end
  for f, _ in pairs(new) do
    if f ~= 'requests' then pair(f, 'requests') end
  end
  for _, p in ipairs(EXTRA_PAIRS) do pair(p[1], p[2]) end
  for _, den in ipairs(DENOMINATORS) do
    if (old[den] or 0) == 0 and (new[den] or 0) ~= 0 then add(skey, pre .. 'nz:' .. den, 1) end
  end
end

-- `t` plus `deltas` (a new table; fields whose delta is 0 are left as they are)
local function plus(t, deltas)
  local out = {}
  for f, v in pairs(t) do out[f] = v end
  for f, d in pairs(deltas) do
    if d ~= 0 then out[f] = (t[f] or 0) + d end
  end
  return out
end

-- `create`: the event of a request may add its unit; feedback never does (the request's event
-- added it, or did not: over the cap, or after the end).
-- `period`: the experiment's period the event was routed under (router/experiments.py); nil
-- (feedback, or an event of a gateway that does not send it) means the unit's current one.
-- Besides its cumulative totals a unit keeps those of its current period (`@p=<period>`,
-- `p.<field>=<value>` in the same field), which feed the per-period sums (one hash per arm,
-- fields `<period>:n`, `<period>:s1:<field>`, ...). An event of a later period starts the
-- unit's totals of that period from zero (the unit counts in its `n`); an event of an older
-- period than the unit's (a request still on its way when the period changed) counts in the
-- cumulative sums only.
local function unit_update(tag, arm, unit, deltas, create, period)
  if unit == '' then return end
  local ukey = unit_key(tag, arm)
  local skey = unit_sums_key(tag, arm)
  local raw = redis.call('HGET', ukey, unit)
  local stored = {}
  if raw then
    stored = decode_totals(raw)
  else
    if not create then return end
    -- after its end an experiment counts no new unit (its totals would start from zero)
    if marker(tag).ends then return end
    -- a full arm stores no new unit: its requests count in the arm's totals only (HLEN is
    -- O(1), and the hash is written at once, so it counts this batch's new units too)
    if redis.call('HLEN', ukey) >= max_units then
      add(arm_key(tag, arm), 'units_over_cap', 1)
      return
    end
    add(skey, 'n', 1)
    -- a unit new to this arm but known to the other moved (the share went up): SRM excludes it
    local other = 'control'
    if arm == 'control' then other = 'treatment' end
    if redis.call('HEXISTS', unit_key(tag, other), unit) == 1 then
      add(skey, 'moved_in', 1)
    end
  end
  local old, pold = {}, {}
  local current = stored['@p']
  for f, v in pairs(stored) do
    if string.sub(f, 1, 2) == 'p.' then pold[string.sub(f, 3)] = v
    elseif f ~= '@p' then old[f] = v end
  end
  local new = plus(old, deltas)
  add_sums(skey, '', old, new, deltas)
  if period == nil then
    period = current
    if period == nil and create then period = 0 end
  end
  local pnew
  if period ~= nil and (current == nil or period > current) then
    -- the unit's first event in this period
    pold = {}
    current = period
    add(periods_key(tag, arm), period .. ':n', 1)
  end
  if period ~= nil and period == current then
    pnew = plus(pold, deltas)
    add_sums(periods_key(tag, arm), period .. ':', pold, pnew, deltas)
  else
    pnew = pold  -- an older period's event: cumulative only
  end
  local t = {}
  for f, v in pairs(new) do t[f] = v end
  if current ~= nil then
    t['@p'] = current
    for f, v in pairs(pnew) do t['p.' .. f] = v end
  end
  redis.call('HSET', ukey, unit, encode_totals(t))
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
  unit_update(tag, arm, unit, deltas, false, nil)
  return 1
end
"""

# ARGV: stream maxlen, minute retention, units per arm at most, then one JSON event per argument
# (router/signals/events.py).
RECORD_EVENTS = (
    UNIT_UPDATE
    + RECORD_FEEDBACK
    + LATENCY_BUCKET
    + """
local maxlen = ARGV[1]
local keep = tonumber(ARGV[2])
max_units = tonumber(ARGV[3])
local first = 4
local written = 0
local minutes_seen = {}
for i = first, #ARGV do
  local e = cjson.decode(ARGV[i])
  local tag = exp_tag(e.experiment)
  -- served after its experiment ended: indexed (feedback for it is answered, not counted),
  -- with its arm's initial in upper case, and nothing else
  local counted = e.counted ~= 0
  local index = string.sub(e.arm, 1, 1) .. '|' .. e.experiment .. '|' .. e.unit
  if not counted then
    index = string.upper(string.sub(e.arm, 1, 1)) .. '|' .. e.experiment .. '|'
  end
  -- a deleted experiment records nothing more, not even the events still on their way
  if not marker(tag).deleted
     and redis.call('SET', request_key(e.request_id), index, 'NX', 'EX', e.ttl)
     and counted then
    written = written + 1
    redis.call('XADD', events_key(tag), 'MAXLEN', '~', maxlen, '*',
      'request_id', e.request_id, 'ts', e.ts, 'route', e.route, 'arm', e.arm,
      'unit', e.unit, 'model', e.model, 'status', e.status, 'error', e.error,
      'stream', e.stream, 'latency_ms', e.latency_ms, 'ttft_ms', e.ttft_ms,
      'prompt_tokens', e.prompt_tokens, 'completion_tokens', e.completion_tokens,
      'cost_usd', e.cost_usd)
    local agg = arm_key(tag, e.arm)
    -- a client that went away is its own outcome, never the arm's error (docs/metrics.md)
    local is_error, closed = 0, 0
    if e.error == 'client_closed' then closed = 1 elseif e.error ~= '' then is_error = 1 end
    add(agg, 'requests', 1)
    add(agg, 'errors', is_error)
    add(agg, 'client_closed', closed)
    -- the status class as abgate_requests_total counts it: a stream that broke after its 200
    -- (`stream_*`) is a 5xx
    local class = string.sub(tostring(e.status), 1, 1) .. 'xx'
    if string.sub(e.error, 1, 7) == 'stream_' then class = '5xx' end
    add(agg, 'status_' .. class, 1)
    add(agg, 'latency_ms_sum', e.latency_ms)
    add(agg, 'latency_ms_sq_sum', e.latency_ms * e.latency_ms)
    local bucket = latency_bucket(e.latency_ms)
    local period = tonumber(e.period)  -- nil from a gateway that predates periods
    add(agg, 'lh:' .. bucket, 1)
    -- and per period, so that a swapped adapter's p95 is its own (analysis/periods.py `judged`)
    if period ~= nil then
      add(periods_key(tag, e.arm), period .. ':lh:' .. bucket, 1)
    end
    local deltas = {requests = 1, errors = is_error, client_closed = closed,
                    latency_ms = e.latency_ms,
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
    add(mkey, 'client_closed', closed)
    add(mkey, 'latency_ms_sum', e.latency_ms)
    add(mkey, 'completion_tokens', e.completion_tokens)
    if minutes_seen[mkey] == nil then
      minutes_seen[mkey] = true
      redis.call('EXPIRE', mkey, keep)
    end
    unit_update(tag, e.arm, e.unit, deltas, true, period)
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
settle()
return written
"""
)

# ARGV: experiment, request id, arm, unit, signal, value, ttl, minute, minute retention.
FEEDBACK = (
    UNIT_UPDATE
    + RECORD_FEEDBACK
    + """
local tag = exp_tag(ARGV[1])
if marker(tag).deleted then return 0 end
local fresh = record_feedback(tag, ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]),
                              tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9]))
flush()
settle()
return fresh
"""
)
