-- Purges the caches of every instance (the entries under a path, when given).
-- KEYS: 1 the log of admin actions. ARGV: 1 channel, 2 instance, 3 path prefix ('' for all),
-- 4 a unique tag.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local event = {from = ARGV[2], kind = 'purge', at = now, tag = ARGV[4]}
if ARGV[3] ~= '' then
  event.prefix = ARGV[3]
end
local text = cjson.encode(event)
redis.call('ZADD', KEYS[1], now, text)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1001)
redis.call('PUBLISH', ARGV[1], text)
return 1
