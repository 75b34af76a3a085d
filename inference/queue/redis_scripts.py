"""The Redis queue's key layout and its transitions, each one Lua script so that Redis runs it atomically.

Keys, under a prefix P (`key_prefix`, "ferry"):

    P:request:<id>     hash    the record: app_id path input_json expires_in priority start_timeout start_by
                               output_salt trace_parent state attempt lease entry output_json failure_code
                               failure_message failure_reason, and `events` (the last event's seq); PEXPIREd result_ttl
                               after completion
    P:events:<id>      stream  the event log, entry ids 0-<seq> (seq from 1), trimmed to MAX_EVENTS;
                               expires with the record
    P:stream:<app>     stream  one entry {id} per queued or running NORMAL request; consumer group
    P:stream-low:<app>         `replicas`. LOW requests' entries are in the second stream. TAKE hands the
                               next one out (XREADGROUP inside the script), takes back those whose
                               replica stopped renewing (XAUTOCLAIM, min idle = the lease; renew is
                               XCLAIM JUSTID); completion XACKs and XDELs, so each holds only what is
                               queued or running (the autoscaler counts them, XLEN)
    P:queued:<app>     zset    queued NORMAL ids, and queued LOW ids, scored by submission order: the
    P:queued-low:<app>         exact position is ZRANK (LOW: ZCARD of the NORMAL set + ZRANK), the
                               depth the two ZCARDs
    P:start-by:<app>   zset    queued ids that have a start timeout, scored by their deadline (ms): STATUS
                               and DEPTH fail those past it first, so no reader sees one still queued
    P:doorbell:<app>   list    one ring per submit (at most MAX_RINGS kept): a waiting taker BLPOPs it,
                               so each new request wakes one taker, not all of them
    P:taken:<lease>    string  the request a TAKE handed out under that lease, kept one lease long: a
                               TAKE sent again after its reply was lost returns the same claim
    P:submitted        counter the submission order
    P:cancelled        channel ids of running requests as they are cancelled

Choosing and claiming are one script (TAKE): a lapsed request first, then the oldest NORMAL entry,
then the oldest LOW one, so no NORMAL request can slip in between a taker's look at the NORMAL stream
and its claim of a LOW entry. Start timeouts are judged by Redis's clock (TIME), not a replica's; a
request past its start timeout fails the moment anything reads it (status, its log, the depth, a take
or peek), not only when a take reaches it.

A script learns a request's app (so its stream) from the record, and a reclaimed entry's record from
the entry, so the scripts derive keys from the prefix rather than receive them all as KEYS: this
needs one Redis (or, on a cluster, a hash-tagged prefix such as "{ferry}", putting every key in one slot).
"""

from __future__ import annotations

GROUP = "replicas"
# Rings kept for takers not yet waiting: more than any deployment's takers of one app; bounds what
# cancelled and timed-out requests (whose rings nobody needs) leave behind.
MAX_RINGS = 1000
# Entries one TAKE or PEEK skips or fails (evicted, lapsed too often, past their start timeout) before it
# returns and is called again, so that a backlog of dead entries never holds Redis for long: failing one
# measured 60-90 µs of Redis time (redis-server 7.0.15, 2-CPU VM shared with other work), so 10 ≈ 1 ms.
HANDLED_PER_CALL = 10

_COMMON = f"""
local prefix = ARGV[1]
local GROUP = '{GROUP}'
local function key(kind, name) return prefix .. ':' .. kind .. ':' .. name end

-- A request's stream and queued set by its priority: '1' is LOW; '0', or none (a record written
-- before priorities existed), NORMAL.
local function stream_of(app, priority)
  if priority == '1' then return key('stream-low', app) end
  return key('stream', app)
end
local function queued_of(app, priority)
  if priority == '1' then return key('queued-low', app) end
  return key('queued', app)
end

-- Milliseconds since the epoch by Redis's clock (13 digits: exact through Lua's number formatting).
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local function ensure_group(stream)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
  end
end

-- One ring of the app's doorbell: it wakes one waiting taker, or is left for the next (the newest {MAX_RINGS} kept).
local function ring(app)
  local doorbell = key('doorbell', app)
  redis.call('RPUSH', doorbell, 1)
  redis.call('LTRIM', doorbell, -{MAX_RINGS}, -1)
end

local function append(id, kind, data, max_events)
  local seq = redis.call('HINCRBY', key('request', id), 'events', 1)
  redis.call('XADD', key('events', id), 'MAXLEN', max_events, '0-' .. seq, 'kind', kind, 'data', data)
end

-- Completed: out of the queue and the stream, its log ends with FINISHED, the record starts to age.
local function complete(id, output, code, message, reason, ttl_ms, max_events)
  local request = key('request', id)
  local app, entry, priority = unpack(redis.call('HMGET', request, 'app_id', 'entry', 'priority'))
  local stream = stream_of(app, priority)
  redis.call('HSET', request, 'state', 'completed', 'output_json', output,
    'failure_code', code, 'failure_message', message, 'failure_reason', reason)
  redis.call('HDEL', request, 'lease')
  redis.call('ZREM', queued_of(app, priority), id)
  redis.call('ZREM', key('start-by', app), id)
  redis.call('XACK', stream, GROUP, entry)
  redis.call('XDEL', stream, entry)
  append(id, 'finished', '', max_events)
  redis.call('PEXPIRE', request, ttl_ms)
  redis.call('PEXPIRE', key('events', id), ttl_ms)
end

-- A queued request past its start timeout fails DEADLINE_EXCEEDED (START_TIMEOUT), never to run; true if so.
local function expire_if_late(id, ttl_ms, max_events)
  local start_by, timeout = unpack(redis.call('HMGET', key('request', id), 'start_by', 'start_timeout'))
  if not start_by or start_by == '' or tonumber(start_by) >= now_ms() then return false end
  local message = string.format('the request did not start within %g s of its submit', tonumber(timeout))
  complete(id, '', 'DEADLINE_EXCEEDED', message, 'START_TIMEOUT', ttl_ms, max_events)
  return true
end

-- Fails the app's queued requests past their start timeout, the earliest deadline first, at most
-- {HANDLED_PER_CALL}; true if more may be left (then the caller returns 'more' and is called again).
local function expire_late(app, ttl_ms, max_events)
  local start_by = key('start-by', app)
  local late = redis.call('ZRANGEBYSCORE', start_by, '-inf', '(' .. now_ms(), 'LIMIT', 0, {HANDLED_PER_CALL})
  for _, id in ipairs(late) do
    local state = redis.call('HGET', key('request', id), 'state')
    -- Not queued (taken meanwhile, or its record evicted): it only leaves the set.
    if not (state == 'queued' and expire_if_late(id, ttl_ms, max_events)) then redis.call('ZREM', start_by, id) end
  end
  return #late == {HANDLED_PER_CALL}
end

-- The request as a claim or a peek shows it:
-- {{id, attempt, path, input_json, expires_in, priority, start_timeout, output_salt, trace_parent, waited_ms}},
-- waited_ms being the milliseconds since its submit ('' for a request submitted by a version that did not record it).
local function described(id, attempt)
  local fields = redis.call('HMGET', key('request', id), 'path', 'input_json', 'expires_in', 'priority',
    'start_timeout', 'output_salt', 'submitted_ms', 'trace_parent')
  local waited = ''
  if fields[7] then waited = tostring(now_ms() - tonumber(fields[7])) end
  return {{id, attempt, fields[1], fields[2], fields[3], fields[4] or '0', fields[5] or '', fields[6] or '',
    fields[8] or '', waited}}
end
"""


def _script(body: str) -> str:
    """A script: the common functions above, then `body`."""
    return _COMMON + body


# ARGV: prefix, id, app, path, input_json, expires_in ('' for none), priority ('0' NORMAL, '1' LOW),
# start_timeout (seconds as given; '' for none), start timeout in ms ('' for no deadline), output_salt,
# trace_parent ('' for none).
# 1, or 0 for a retried submit.
SUBMIT = _script("""
local id, app, priority = ARGV[2], ARGV[3], ARGV[7]
local request = key('request', id)
if redis.call('EXISTS', request) == 1 then return 0 end
local start_by = ''
if ARGV[9] ~= '' then start_by = now_ms() + tonumber(ARGV[9]) end
local stream = stream_of(app, priority)
ensure_group(stream)
local order = redis.call('INCR', prefix .. ':submitted')
local entry = redis.call('XADD', stream, '*', 'id', id)
redis.call('HSET', request, 'app_id', app, 'path', ARGV[4], 'input_json', ARGV[5], 'expires_in', ARGV[6],
  'priority', priority, 'start_timeout', ARGV[8], 'start_by', start_by, 'state', 'queued', 'attempt', 0,
  'entry', entry, 'output_salt', ARGV[10], 'order', order, 'submitted_ms', now_ms(),
  'trace_parent', ARGV[11] or '')
redis.call('ZADD', queued_of(app, priority), order, id)
if start_by ~= '' then redis.call('ZADD', key('start-by', app), start_by, id) end
ring(app)
return 1
""")

# ARGV: prefix, app, consumer, lease_ms, lease, max_attempts, ttl_ms, max_events, rang ('1': the taker was
# woken by a ring of the doorbell; '0': it took one of the rings left for waiting takers, if any).
# The app's next request under `lease`: {'claimed', id, attempt, path, input_json, expires_in, priority,
# start_timeout}; {'none'} if there is none; {'more'} if it stopped after HANDLED_PER_CALL dead entries.
# Lapsed requests past max_attempts are failed MAX_ATTEMPTS, queued ones past their start timeout
# START_TIMEOUT, entries of completed (or evicted) requests dropped.
TAKE = _script(f"""
local app, consumer, lease_ms, lease = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_attempts, ttl_ms, max_events, rang = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9] == '1'
local receipt = key('taken', lease)

local already = redis.call('GET', receipt)
if already then  -- this very TAKE, sent again after its reply was lost
  local state, held, attempt = unpack(redis.call('HMGET', key('request', already), 'state', 'lease', 'attempt'))
  if state == 'in_progress' and held == lease then
    return {{'claimed', unpack(described(already, tonumber(attempt)))}}
  end
end

local handled = 0
-- The entry's request under `lease`, or nil when it is not to run (then `handled` counts it).
local function hand_out(priority, entry, id)
  local stream = stream_of(app, priority)
  local request = key('request', id)
  local state, attempt = unpack(redis.call('HMGET', request, 'state', 'attempt'))
  handled = handled + 1
  if not state or state == 'completed' then  -- its record was evicted, or it completed: nothing to run
    redis.call('XACK', stream, GROUP, entry)
    redis.call('XDEL', stream, entry)
    redis.call('ZREM', queued_of(app, priority), id)
    return nil
  end
  attempt = tonumber(attempt)
  if state == 'in_progress' and attempt >= max_attempts then
    complete(id, '', 'UNAVAILABLE', 'the request ran ' .. attempt .. ' times and its replica died each time',
      'MAX_ATTEMPTS', ttl_ms, max_events)
    return nil
  end
  if state == 'queued' and expire_if_late(id, ttl_ms, max_events) then return nil end
  handled = handled - 1
  attempt = attempt + 1
  redis.call('HSET', request, 'state', 'in_progress', 'attempt', attempt, 'lease', lease)
  redis.call('ZREM', queued_of(app, priority), id)
  redis.call('ZREM', key('start-by', app), id)
  redis.call('SET', receipt, id, 'PX', lease_ms)
  return {{'claimed', unpack(described(id, attempt))}}
end

-- A lapsed lease first: that request has waited longest.
for _, priority in ipairs({{'0', '1'}}) do
  local stream = stream_of(app, priority)
  ensure_group(stream)
  local cursor = '0-0'
  repeat
    local reply = redis.call('XAUTOCLAIM', stream, GROUP, consumer, lease_ms, cursor, 'COUNT', 1)
    cursor = reply[1]
    local claimed = reply[2][1]
    if claimed then
      local entry, fields = claimed[1], claimed[2]
      if fields and fields[2] then
        local outcome = hand_out(priority, entry, fields[2])
        if outcome then return outcome end
        if handled >= {HANDLED_PER_CALL} then return {{'more'}} end
      else  -- deleted while pending (Redis 6.2 still lists it): nothing to run
        redis.call('XACK', stream, GROUP, entry)
      end
    end
  until cursor == '0-0'
end

-- Then the oldest queued NORMAL request, else the oldest queued LOW one.
for _, priority in ipairs({{'0', '1'}}) do
  local stream = stream_of(app, priority)
  while true do
    local reply = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', 1, 'STREAMS', stream, '>')
    if not reply then break end
    local entry = reply[1][2][1]
    local outcome = hand_out(priority, entry[1], entry[2][2])
    if outcome then
      -- A taker that was not woken takes a ring left for a waiting one: rings stay one per unclaimed request.
      if not rang then redis.call('LPOP', key('doorbell', app)) end
      return outcome
    end
    if handled >= {HANDLED_PER_CALL} then return {{'more'}} end
  end
end
return {{'none'}}
""")

# ARGV: prefix, id, ttl_ms, max_events. {position in its app's queue (0 unless queued), the record as
# HGETALL gives it}; nil for an unknown (or expired) id; {'more'} if it stopped after failing
# HANDLED_PER_CALL of the app's requests past their start timeout (the id's own, or ones ahead of it).
STATUS = _script("""
local id = ARGV[2]
local app = redis.call('HGET', key('request', id), 'app_id')
if not app then return nil end
if expire_late(app, ARGV[3], ARGV[4]) then return {'more'} end
local record = redis.call('HGETALL', key('request', id))
local state, priority = unpack(redis.call('HMGET', key('request', id), 'state', 'priority'))
local position = 0
if state == 'queued' then
  position = redis.call('ZRANK', queued_of(app, priority), id) or 0
  if priority == '1' then position = position + redis.call('ZCARD', queued_of(app, '0')) end
end
return {position, record}
""")

# ARGV: prefix, app, ttl_ms, max_events. The app's next queued request (NORMAL before LOW) as
# {id, attempt, path, input_json, expires_in, priority, start_timeout}; nil if none; {'more'} if it stopped
# after HANDLED_PER_CALL dead ones. Those it finds past their start timeout are failed (START_TIMEOUT) on
# the way, as TAKE would fail them; ids whose record was evicted are dropped.
PEEK = _script(f"""
local app, ttl_ms, max_events = ARGV[2], ARGV[3], ARGV[4]
local handled = 0
for _, priority in ipairs({{'0', '1'}}) do
  local queued = queued_of(app, priority)
  while true do
    local first = redis.call('ZRANGE', queued, 0, 0)[1]
    if not first then break end
    if redis.call('EXISTS', key('request', first)) == 0 then
      redis.call('ZREM', queued, first)
    elseif not expire_if_late(first, ttl_ms, max_events) then
      return described(first, 0)
    end
    handled = handled + 1
    if handled >= {HANDLED_PER_CALL} then return {{'more'}} end
  end
end
return nil
""")

# ARGV: prefix, app, ttl_ms, max_events. How many of the app's requests are queued, once those past their
# start timeout are failed; -1 if it stopped after failing HANDLED_PER_CALL of them.
DEPTH = _script("""
local app = ARGV[2]
if expire_late(app, ARGV[3], ARGV[4]) then return -1 end
return redis.call('ZCARD', queued_of(app, '0')) + redis.call('ZCARD', queued_of(app, '1'))
""")

# ARGV: prefix, id, lease, consumer. 1 if the lease is still the request's (its idle clock restarts), else 0.
RENEW = _script("""
local request = key('request', ARGV[2])
local state, held, app, entry, priority = unpack(redis.call('HMGET', request, 'state', 'lease', 'app_id', 'entry',
  'priority'))
if state ~= 'in_progress' or held ~= ARGV[3] then return 0 end
redis.call('XCLAIM', stream_of(app, priority), GROUP, ARGV[4], 0, entry, 'JUSTID')
return 1
""")

# ARGV: prefix, id, lease, consumer, lease_ms. 1 if released: queued again in its place (its submission order; 0, the
# front, for a record written before the order was kept), its attempt not counted, its entry claimable by the
# next TAKE at once (idle as long as a lapsed lease), a waiting taker woken.
RELEASE = _script("""
local id = ARGV[2]
local request = key('request', id)
local state, held, app, entry, priority, attempt, order = unpack(redis.call('HMGET', request, 'state', 'lease',
  'app_id', 'entry', 'priority', 'attempt', 'order'))
if state ~= 'in_progress' or held ~= ARGV[3] then return 0 end
redis.call('HSET', request, 'state', 'queued', 'attempt', tonumber(attempt) - 1, 'lease', '', 'start_by', '')
redis.call('ZADD', queued_of(app, priority), tonumber(order) or 0, id)
redis.call('XCLAIM', stream_of(app, priority), GROUP, ARGV[4], 0, entry, 'IDLE', tonumber(ARGV[5]) * 2, 'JUSTID')
ring(app)
return 1
""")

# ARGV: prefix, id, lease, output_json, failure code, message, reason, ttl_ms, max_events. 1 if finished.
FINISH = _script("""
local state, held = unpack(redis.call('HMGET', key('request', ARGV[2]), 'state', 'lease'))
if state ~= 'in_progress' or held ~= ARGV[3] then return 0 end
complete(ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
return 1
""")

# ARGV: prefix, id, ttl_ms, max_events. {previous state, 1 if this cancelled it}; nil for an unknown id.
CANCEL = _script("""
local id = ARGV[2]
local state = redis.call('HGET', key('request', id), 'state')
if not state then return nil end
if state == 'completed' then return {state, 0} end
complete(id, '', 'CANCELLED', 'cancelled by the caller', '', ARGV[3], ARGV[4])
if state == 'in_progress' then redis.call('PUBLISH', prefix .. ':cancelled', id) end
return {state, 1}
""")

# ARGV: prefix, id, kind, data, max_events. Nothing follows FINISHED, and an unknown request has no log.
APPEND = _script("""
local state = redis.call('HGET', key('request', ARGV[2]), 'state')
if state and state ~= 'completed' then append(ARGV[2], ARGV[3], ARGV[4], ARGV[5]) end
return 0
""")

# ARGV: prefix, app, consumer. Forgets a closing replica's consumer unless it still holds requests
# (deleting it then would drop them from the pending list, where XAUTOCLAIM finds them).
FORGET_CONSUMER = _script("""
for _, priority in ipairs({'0', '1'}) do
  local stream = stream_of(ARGV[2], priority)
  if redis.call('EXISTS', stream) == 1
    and #redis.call('XPENDING', stream, GROUP, '-', '+', 1, ARGV[3]) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', stream, GROUP, ARGV[3])
  end
end
return 0
""")


def request_key(prefix: str, request_id: str) -> str:
    return f"{prefix}:request:{request_id}"


def events_key(prefix: str, request_id: str) -> str:
    return f"{prefix}:events:{request_id}"


def stream_key(prefix: str, app_id: str) -> str:
    """The app's NORMAL requests' stream (the one the autoscaler has always followed)."""
    return f"{prefix}:stream:{app_id}"


def low_stream_key(prefix: str, app_id: str) -> str:
    return f"{prefix}:stream-low:{app_id}"


def doorbell_key(prefix: str, app_id: str) -> str:
    return f"{prefix}:doorbell:{app_id}"


def cancelled_channel(prefix: str) -> str:
    return f"{prefix}:cancelled"
