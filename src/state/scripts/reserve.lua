-- Reserves a place to judge a credential among the failures its client address (and its user
-- there) may still have, across every instance; or answers with the verdict an instance kept
-- on it, or with the block.
-- KEYS: the credential's verdict, then per record (the address, then the user there):
--       failures (zset), credentials being judged (zset, scored by when the lease ends), block.
-- ARGV: key prefix, credential digest, window ms, lease ms, then each record's limit.
-- Returns {'verdict', json, ms left} | {'blocked', record, ms left} | {'full', record} | {'ok'}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, digest = ARGV[1], ARGV[2]
local window, lease = tonumber(ARGV[3]), tonumber(ARGV[4])
local kept = redis.call('GET', KEYS[1])
if kept then
  local ok, v = pcall(cjson.decode, kept)
  if ok and type(v) == 'table' then
    local revoked = false
    if type(v.user) == 'string' then
      local at = redis.call('GET', prefix .. 'r:' .. string.lower(v.user))
      revoked = at and tonumber(at) >= tonumber(v.judged)
    end
    if not revoked then
      return {'verdict', kept, redis.call('PTTL', KEYS[1])}
    end
  end
end
local records = (#KEYS - 1) / 3
for i = 0, records - 1 do
  local left = redis.call('PTTL', KEYS[4 + i * 3])
  if left > 0 then
    return {'blocked', i, left}
  end
end
for i = 0, records - 1 do
  local failures, judging = KEYS[2 + i * 3], KEYS[3 + i * 3]
  redis.call('ZREMRANGEBYSCORE', failures, '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', judging, '-inf', now)
  if not redis.call('ZSCORE', judging, digest) then
    local taken = redis.call('ZCARD', failures) + redis.call('ZCARD', judging)
    if taken >= tonumber(ARGV[5 + i]) then
      return {'full', i}
    end
  end
end
for i = 0, records - 1 do
  local judging = KEYS[3 + i * 3]
  redis.call('ZADD', judging, now + lease, digest)
  redis.call('PEXPIRE', judging, lease)
end
return {'ok'}
