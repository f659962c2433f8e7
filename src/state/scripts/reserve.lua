-- Reserves a place to judge a credential among the failures its client address (and its user
-- there) may still have, across every instance; or answers with the block, or with the
-- verdict an instance kept on it.
-- KEYS: the credential's verdict, then per record (the address, then the user there):
--       failures (zset), leases of credentials being judged (zset of `digest:tag`, scored by
--       when the lease ends), block.
-- ARGV: 1 key prefix, 2 credential digest (64 hex digits), 3 this lease (`digest:tag`),
--       4 window ms, 5 lease ms, then each record's limit.
-- Returns {'blocked', record, ms left} | {'verdict', json, ms left, ms since judged} |
--         {'full', record} | {'ok'}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, digest, lease = ARGV[1], ARGV[2], ARGV[3]
local window, lease_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local records = (#KEYS - 1) / 3
for i = 0, records - 1 do
  local left = redis.call('PTTL', KEYS[4 + i * 3])
  if left > 0 then
    return {'blocked', i, left}
  end
end
local kept = redis.call('GET', KEYS[1])
if kept then
  local ok, v = pcall(cjson.decode, kept)
  if ok and type(v) == 'table' and tonumber(v.judged) then
    local revoked = false
    if type(v.user) == 'string' then
      local at = redis.call('GET', prefix .. 'r:' .. string.lower(v.user))
      revoked = at and tonumber(at) >= tonumber(v.judged)
    end
    if not revoked then
      return {'verdict', kept, redis.call('PTTL', KEYS[1]), now - tonumber(v.judged)}
    end
  end
end
for i = 0, records - 1 do
  local failures, leases = KEYS[2 + i * 3], KEYS[3 + i * 3]
  redis.call('ZREMRANGEBYSCORE', failures, '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  -- Leases of one credential share its place.
  local seen, distinct, shared = {}, 0, false
  for _, held in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
    local d = string.sub(held, 1, 64)
    if not seen[d] then
      seen[d] = true
      distinct = distinct + 1
    end
    if d == digest then
      shared = true
    end
  end
  if not shared and redis.call('ZCARD', failures) + distinct >= tonumber(ARGV[6 + i]) then
    return {'full', i}
  end
end
for i = 0, records - 1 do
  local leases = KEYS[3 + i * 3]
  redis.call('ZADD', leases, now + lease_ms, lease)
  redis.call('PEXPIRE', leases, lease_ms)
end
return {'ok'}
