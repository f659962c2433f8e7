-- Lifts the block of a user at a client address, or every block there, on every instance.
-- KEYS: the index of blocks. ARGV: 1 key prefix, 2 address, 3 the user's record id ('' for
-- every block at the address), 4 channel, 5 instance, 6 user name ('' for none).
-- Returns how many blocks were lifted.
local prefix, ip, only = ARGV[1], ARGV[2], ARGV[3]
local lifted = 0
local function lift(id)
  lifted = lifted + redis.call('DEL', prefix .. 'b:' .. id)
  redis.call('DEL', prefix .. 'f:' .. id)
  redis.call('ZREM', KEYS[1], id)
end
if only ~= '' then
  lift(only)
else
  lift(ip)
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if string.sub(id, 1, #ip + 1) == ip .. '/' then
      lift(id)
    end
  end
end
local event = {from = ARGV[5], kind = 'lift', ip = ip}
if ARGV[6] ~= '' then
  event.user = ARGV[6]
end
redis.call('PUBLISH', ARGV[4], cjson.encode(event))
return lifted
