-- The admin actions (lifts, revocations, purges) of the last while, for an instance that may
-- have missed their announcements; and Redis's time now.
-- KEYS: 1 the log of admin actions. ARGV: 1 how far back (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
for _, text in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')) do
  out[#out + 1] = text
end
return out
