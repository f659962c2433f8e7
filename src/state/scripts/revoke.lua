-- Revokes a user on every instance: verdicts judged before now stop counting, and the user's
-- WebSockets close. KEYS: the user's revocation. ARGV: 1 ms it is remembered, 2 channel,
-- 3 instance, 4 user name.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], now, 'PX', tonumber(ARGV[1]))
redis.call('PUBLISH', ARGV[2], cjson.encode({from = ARGV[3], kind = 'revoke', user = ARGV[4]}))
return 1
