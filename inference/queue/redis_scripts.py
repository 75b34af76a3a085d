"""The Redis queue's key layout and its transitions, each one Lua script so that Redis runs it atomically.

Keys, under a prefix P (`key_prefix`, "ferry"):

    P:request:<id>  hash    the record: app_id path input_json expires_in state attempt lease entry
                            output_json failure_code failure_message failure_reason, and `events`
                            (the last event's seq); PEXPIREd result_ttl after completion
    P:events:<id>   stream  the event log, entry ids 0-<seq> (seq from 1), trimmed to MAX_EVENTS;
                            expires with the record
    P:stream:<app>  stream  one entry {id} per queued or running request; consumer group `replicas`.
                            XREADGROUP hands new ones out, XAUTOCLAIM (min idle = lease) takes back
                            those whose replica stopped renewing (XCLAIM JUSTID), completion XACKs and
                            XDELs, so it holds only what is queued or running
    P:queued:<app>  zset    queued ids scored by submission order: ZRANK is the exact position,
                            ZCARD the depth
    P:submitted     counter the submission order
    P:cancelled     channel ids of running requests as they are cancelled

A script learns a request's app (so its stream) from the record, and a reclaimed entry's record from
the entry, so the scripts derive keys from the prefix rather than receive them all as KEYS: this
needs one Redis (or, on a cluster, a hash-tagged prefix such as "{ferry}", putting every key in one slot).
"""

from __future__ import annotations

GROUP = "replicas"

_COMMON = f"""
local prefix = ARGV[1]
local GROUP = '{GROUP}'
local function key(kind, name) return prefix .. ':' .. kind .. ':' .. name end

local function ensure_group(stream)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
  end
end

local function append(id, kind, data, max_events)
  local seq = redis.call('HINCRBY', key('request', id), 'events', 1)
  redis.call('XADD', key('events', id), 'MAXLEN', max_events, '0-' .. seq, 'kind', kind, 'data', data)
end

-- Completed: out of the queue and the stream, its log ends with FINISHED, the record starts to age.
local function complete(id, output, code, message, reason, ttl_ms, max_events)
  local request = key('request', id)
  local app, entry = unpack(redis.call('HMGET', request, 'app_id', 'entry'))
  local stream = key('stream', app)
  redis.call('HSET', request, 'state', 'completed', 'output_json', output,
    'failure_code', code, 'failure_message', message, 'failure_reason', reason)
  redis.call('HDEL', request, 'lease')
  redis.call('ZREM', key('queued', app), id)
  redis.call('XACK', stream, GROUP, entry)
  redis.call('XDEL', stream, entry)
  append(id, 'finished', '', max_events)
  redis.call('PEXPIRE', request, ttl_ms)
  redis.call('PEXPIRE', key('events', id), ttl_ms)
end
"""

# A delivered stream entry becomes a claim: {'claimed', id, attempt, path, input_json, expires_in},
# or {'skipped'} (nothing to run), or {'failed'} (lapsed once too often: failed MAX_ATTEMPTS).
_HAND_OUT = """
local function hand_out(app, entry, id, lease, max_attempts, ttl_ms, max_events)
  local stream = key('stream', app)
  local request = key('request', id)
  local state, attempt, held = unpack(redis.call('HMGET', request, 'state', 'attempt', 'lease'))
  if not state or state == 'completed' then  -- its record was evicted, or it completed: nothing to run
    redis.call('XACK', stream, GROUP, entry)
    redis.call('XDEL', stream, entry)
    redis.call('ZREM', key('queued', app), id)
    return {'skipped'}
  end
  attempt = tonumber(attempt)
  if held ~= lease then  -- else: this very hand-out, retried after its reply was lost
    if state == 'in_progress' and attempt >= max_attempts then
      complete(id, '', 'UNAVAILABLE', 'the request ran ' .. attempt .. ' times and its replica died each time',
        'MAX_ATTEMPTS', ttl_ms, max_events)
      return {'failed'}
    end
    attempt = attempt + 1
    redis.call('HSET', request, 'state', 'in_progress', 'attempt', attempt, 'lease', lease)
    redis.call('ZREM', key('queued', app), id)
  end
  local path, input_json, expires_in = unpack(redis.call('HMGET', request, 'path', 'input_json', 'expires_in'))
  return {'claimed', id, attempt, path, input_json, expires_in}
end
"""

# ARGV: prefix, id, app, path, input_json, expires_in ('' for none). 1, or 0 for a retried submit.
SUBMIT = (
    _COMMON
    + """
local id, app = ARGV[2], ARGV[3]
local request = key('request', id)
if redis.call('EXISTS', request) == 1 then return 0 end
local stream = key('stream', app)
ensure_group(stream)
local order = redis.call('INCR', prefix .. ':submitted')
local entry = redis.call('XADD', stream, '*', 'id', id)
redis.call('HSET', request, 'app_id', app, 'path', ARGV[4], 'input_json', ARGV[5], 'expires_in', ARGV[6],
  'state', 'queued', 'attempt', 0, 'entry', entry)
redis.call('ZADD', key('queued', app), order, id)
return 1
"""
)

# ARGV: prefix, app, consumer, lease_ms, lease, max_attempts, ttl_ms, max_events.
# The app's oldest request whose lease lapsed, taken over under `lease`; {'none'} if there is none.
# Creates the app's stream and group, so that XREADGROUP may follow.
RECLAIM = (
    _COMMON
    + _HAND_OUT
    + """
local app, consumer, lease_ms = ARGV[2], ARGV[3], ARGV[4]
local stream = key('stream', app)
ensure_group(stream)
local cursor = '0-0'
repeat
  local reply = redis.call('XAUTOCLAIM', stream, GROUP, consumer, lease_ms, cursor, 'COUNT', 1)
  cursor = reply[1]
  local claimed = reply[2][1]
  if claimed then
    local entry, fields = claimed[1], claimed[2]
    if fields and fields[2] then
      local outcome = hand_out(app, entry, fields[2], ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8])
      if outcome[1] == 'claimed' then return outcome end
    else  -- deleted while pending (Redis 6.2 still lists it): nothing to run
      redis.call('XACK', stream, GROUP, entry)
    end
  end
until cursor == '0-0'
return {'none'}
"""
)

# ARGV: prefix, app, consumer, entry, id, lease, max_attempts, ttl_ms, max_events.
# An entry XREADGROUP just gave this consumer; {'gone'} if another replica took it over meanwhile.
DELIVER = (
    _COMMON
    + _HAND_OUT
    + """
local app, consumer, entry = ARGV[2], ARGV[3], ARGV[4]
if #redis.call('XPENDING', key('stream', app), GROUP, entry, entry, 1, consumer) == 0 then return {'gone'} end
return hand_out(app, entry, ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8], ARGV[9])
"""
)

# ARGV: prefix, id. {position in its app's queue (0 unless queued), the record as HGETALL gives it};
# nil for an unknown (or expired) id.
STATUS = (
    _COMMON
    + """
local id = ARGV[2]
local record = redis.call('HGETALL', key('request', id))
if #record == 0 then return nil end
local app, state = unpack(redis.call('HMGET', key('request', id), 'app_id', 'state'))
local position = 0
if state == 'queued' then position = redis.call('ZRANK', key('queued', app), id) or 0 end
return {position, record}
"""
)

# ARGV: prefix, app. {id, path, input_json, expires_in} of the app's next queued request, or nil.
PEEK = (
    _COMMON
    + """
local first = redis.call('ZRANGE', key('queued', ARGV[2]), 0, 0)[1]
if not first then return nil end
local request = redis.call('HMGET', key('request', first), 'path', 'input_json', 'expires_in')
return {first, request[1], request[2], request[3]}
"""
)

# ARGV: prefix, id, lease, consumer. 1 if the lease is still the request's (its idle clock restarts), else 0.
RENEW = (
    _COMMON
    + """
local request = key('request', ARGV[2])
local state, held, app, entry = unpack(redis.call('HMGET', request, 'state', 'lease', 'app_id', 'entry'))
if state ~= 'in_progress' or held ~= ARGV[3] then return 0 end
redis.call('XCLAIM', key('stream', app), GROUP, ARGV[4], 0, entry, 'JUSTID')
return 1
"""
)

# ARGV: prefix, id, lease, output_json, failure code, message, reason, ttl_ms, max_events. 1 if finished.
FINISH = (
    _COMMON
    + """
local state, held = unpack(redis.call('HMGET', key('request', ARGV[2]), 'state', 'lease'))
if state ~= 'in_progress' or held ~= ARGV[3] then return 0 end
complete(ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
return 1
"""
)

# ARGV: prefix, id, ttl_ms, max_events. {previous state, 1 if this cancelled it}; nil for an unknown id.
CANCEL = (
    _COMMON
    + """
local id = ARGV[2]
local state = redis.call('HGET', key('request', id), 'state')
if not state then return nil end
if state == 'completed' then return {state, 0} end
complete(id, '', 'CANCELLED', 'cancelled by the caller', '', ARGV[3], ARGV[4])
if state == 'in_progress' then redis.call('PUBLISH', prefix .. ':cancelled', id) end
return {state, 1}
"""
)

# ARGV: prefix, id, kind, data, max_events. Nothing follows FINISHED, and an unknown request has no log.
APPEND = (
    _COMMON
    + """
local state = redis.call('HGET', key('request', ARGV[2]), 'state')
if state and state ~= 'completed' then append(ARGV[2], ARGV[3], ARGV[4], ARGV[5]) end
return 0
"""
)

# ARGV: prefix, app, consumer. Forgets a closing replica's consumer unless it still holds requests
# (deleting it then would drop them from the pending list, where XAUTOCLAIM finds them).
FORGET_CONSUMER = (
    _COMMON
    + """
local stream = key('stream', ARGV[2])
if redis.call('EXISTS', stream) == 0 then return 0 end
if #redis.call('XPENDING', stream, GROUP, '-', '+', 1, ARGV[3]) > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', stream, GROUP, ARGV[3])
"""
)


def request_key(prefix: str, request_id: str) -> str:
    return f"{prefix}:request:{request_id}"


def events_key(prefix: str, request_id: str) -> str:
    return f"{prefix}:events:{request_id}"


def stream_key(prefix: str, app_id: str) -> str:
    return f"{prefix}:stream:{app_id}"


def queued_key(prefix: str, app_id: str) -> str:
    return f"{prefix}:queued:{app_id}"


def cancelled_channel(prefix: str) -> str:
    return f"{prefix}:cancelled"
