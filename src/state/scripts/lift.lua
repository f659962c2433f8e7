-- Lifts the block of a user at a client address, or every block there, on every instance; a
-- lift mark keeps an instance that was disconnected from giving the block back.
-- KEYS: 1 the index of blocks, 2 the log of admin actions.
-- ARGV: 1 key prefix, 2 address, 3 the user's record id ('' for every block at the address),
--       4 channel, 5 instance, 6 user name ('' for none), 7 block ms, 8 a unique tag.
-- Returns how many blocks were lifted.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, ip, only, block = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[7])
local lifted = 0
local function lift(id)
  lifted = lifted + redis.call('DEL', prefix .. 'b:' .. id)
  redis.call('DEL', prefix .. 'f:' .. id)
  redis.call('ZREM', KEYS[1], id)
end
if only ~= '' then
  lift(only)
  redis.call('SET', prefix .. 'L:' .. only, now, 'PX', block)
else
  lift(ip)
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if string.sub(id, 1, #ip + 1) == ip .. '/' then
      lift(id)
    end
  end
  redis.call('SET', prefix .. 'L:' .. ip, now, 'PX', block)
end
local event = {from = ARGV[5], kind = 'lift', ip = ip, at = now, tag = ARGV[8]}
if ARGV[6] ~= '' then
  event.user = ARGV[6]
end
local text = cjson.encode(event)
redis.call('ZADD', KEYS[2], now, text)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1001)
redis.call('PUBLISH', ARGV[4], text)
return lifted
