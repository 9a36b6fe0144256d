"""The shared journal's two Redis commands, as Lua scripts: a flush and a poll each
cost the relay one command for every stream at once, not several per stream (redis-py
spends more CPU packing a command than Redis spends running it).

Both touch keys derived from the ones they are given (`:a`, `:r`, `:c`), so the
journal needs one Redis, not a Redis Cluster.
"""

from __future__ import annotations

#: KEYS: the journals. ARGV: ttl ms, liveness ms, then per journal: its entry count,
#: 1 if its stream ended, and (id, field, value) per entry. An entry a retried flush had
#: already written is refused by Redis (same id) and skipped; any other error stops.
APPEND = """
local ttl, alive = ARGV[1], ARGV[2]
local i = 3
for k = 1, #KEYS do
  local key = KEYS[k]
  local count, ended = tonumber(ARGV[i]), ARGV[i + 1]
  i = i + 2
  for _ = 1, count do
    local added = redis.pcall('XADD', key, ARGV[i], ARGV[i + 1], ARGV[i + 2])
    if type(added) == 'table' and added.err
        and not string.find(added.err, 'equal or smaller', 1, true) then
      return added
    end
    i = i + 3
  end
  redis.call('PEXPIRE', key, ttl)
  if ended == '1' then
    redis.call('DEL', key .. ':a')
  else
    redis.call('SET', key .. ':a', '1', 'PX', alive)
  end
end
return #KEYS
"""

#: KEYS: the journals of running streams. ARGV: liveness ms, then per journal 1 if a
#: resumer on this instance took the stream (resumers elsewhere must stop). Renews each
#: liveness key and answers, per journal, the claim of a resumer elsewhere (`:r`, or
#: nil) and whether a cancel waits (`:c`).
POLL = """
local alive = ARGV[1]
local out = {}
for k = 1, #KEYS do
  local key = KEYS[k]
  redis.call('SET', key .. ':a', '1', 'PX', alive)
  if ARGV[k + 1] == '1' then
    redis.call('SET', key .. ':r', 'taken', 'PX', alive)
  end
  out[2 * k - 1] = redis.call('GET', key .. ':r')
  out[2 * k] = redis.call('EXISTS', key .. ':c')
end
return out
"""
