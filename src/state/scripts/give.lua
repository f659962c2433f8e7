-- Gives Redis back a block an instance began while Redis was down, unless Redis holds it
-- already or an admin lifted it after it began; tells the other instances.
-- KEYS: 1 the block, 2 the record's lift mark, 3 the address's lift mark, 4 the index of
--       blocks.
-- ARGV: 1 ms left, 2 block ms, 3 user name ('' for none), 4 channel, 5 instance, 6 address,
--       7 user hash ('' for the address's block), 8 record id.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = tonumber(ARGV[1])
local began = now - (tonumber(ARGV[2]) - left)
for _, mark in ipairs({KEYS[2], KEYS[3]}) do
  local at = redis.call('GET', mark)
  if at and tonumber(at) >= began then
    return 0
  end
end
if not redis.call('SET', KEYS[1], ARGV[3], 'NX', 'PX', left) then
  return 0
end
redis.call('ZADD', KEYS[4], now + left, ARGV[8])
local event = {from = ARGV[5], kind = 'block', ip = ARGV[6], left_ms = left, at = now}
if ARGV[7] ~= '' then
  event.user = ARGV[7]
  event.name = ARGV[3]
end
redis.call('PUBLISH', ARGV[4], cjson.encode(event))
return 1
