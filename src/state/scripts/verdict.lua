-- Keeps a verdict on a credential for every instance, unless its user was revoked since it was
-- judged. KEYS: the credential's verdict. ARGV: 1 key prefix, 2 verdict as JSON without its
-- time, 3 user name ('' for none), 4 ms since it was judged, 5 ms it is kept from then.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local judged = now - tonumber(ARGV[4])
local left = tonumber(ARGV[5]) - tonumber(ARGV[4])
if left <= 0 then
  return 0
end
if ARGV[3] ~= '' then
  local at = redis.call('GET', ARGV[1] .. 'r:' .. string.lower(ARGV[3]))
  if at and tonumber(at) >= judged then
    return 0
  end
end
local verdict = cjson.decode(ARGV[2])
verdict.judged = judged
redis.call('SET', KEYS[1], cjson.encode(verdict), 'PX', left)
return 1
