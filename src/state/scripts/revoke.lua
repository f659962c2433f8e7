-- Revokes a user on every instance: verdicts judged before now stop counting, and the user's
-- WebSockets close.
-- KEYS: 1 the user's revocation, 2 the log of admin actions.
-- ARGV: 1 ms it is remembered, 2 channel, 3 instance, 4 user name, 5 a unique tag.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], now, 'PX', tonumber(ARGV[1]))
local text = cjson.encode({from = ARGV[3], kind = 'revoke', user = ARGV[4], at = now, tag = ARGV[5]})
redis.call('ZADD', KEYS[2], now, text)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1001)
redis.call('PUBLISH', ARGV[2], text)
return 1
