-- Stores readings as their sensors' latest, only when newer; atomic per call.
-- KEYS[1] hash member -> latest reading JSON
-- KEYS[2] hash member -> ts_ms of that reading
-- KEYS[3] geo set of members
-- KEYS[4] stream of readings that became latest
-- ARGV[1] stream MAXLEN (approximate); then per reading: member, ts_ms, lon, lat, json
local updated = 0
for i = 2, #ARGV, 5 do
  local member, ts = ARGV[i], tonumber(ARGV[i + 1])
  local cur = redis.call('HGET', KEYS[2], member)
  if (not cur) or tonumber(cur) < ts then
    redis.call('HSET', KEYS[2], member, ARGV[i + 1])
    redis.call('HSET', KEYS[1], member, ARGV[i + 4])
    redis.call('GEOADD', KEYS[3], ARGV[i + 2], ARGV[i + 3], member)
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], '*', 'r', ARGV[i + 4])
    updated = updated + 1
  end
end
return updated
