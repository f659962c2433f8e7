-- The blocks now: record id, ms left and user name of each (for an instance that missed
-- their announcements, being disconnected).
-- KEYS: the index of blocks. ARGV: key prefix.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. 'b:' .. id
  local left = redis.call('PTTL', key)
  if left > 0 then
    out[#out + 1] = id
    out[#out + 1] = left
    out[#out + 1] = redis.call('GET', key) or ''
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
