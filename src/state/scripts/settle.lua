-- Settles a credential judged (or counts a failure that needed no judgement): its lease is
-- given back, and a failure counts against the address and the user there, blocking either
-- when it reaches its limit (on every instance: the block is published).
-- KEYS: the index of blocks (zset of record ids, scored by the end), then per record (the
--       address, then the user there): failures, credentials being judged, block.
-- ARGV: 1 its lease (`digest:tag`; '' for none), 2 failed (1 or 0), 3 credential fingerprint
--       (- for none), 4 a unique tag,
--       5 window ms, 6 block ms, 7 channel, 8 instance, 9 client address, 10 user hash,
--       11 user name, then per record: limit, record id.
-- Returns the records (0 address, 1 user) whose block this failure began.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, failed, credential = ARGV[1], ARGV[2] == '1', ARGV[3]
local window, block = tonumber(ARGV[5]), tonumber(ARGV[6])
local records = (#KEYS - 1) / 3
local begun = {}
for i = 0, records - 1 do
  local failures, judging, blocked = KEYS[2 + i * 3], KEYS[3 + i * 3], KEYS[4 + i * 3]
  if lease ~= '' then
    redis.call('ZREM', judging, lease)
  end
  if failed and redis.call('PTTL', blocked) <= 0 then
    redis.call('ZREMRANGEBYSCORE', failures, '-inf', now - window)
    -- An address counts each credential once a window.
    local replayed = false
    if i == 0 and credential ~= '-' then
      for _, seen in ipairs(redis.call('ZRANGE', failures, 0, -1)) do
        if string.find(seen, ':' .. credential .. ':', 1, true) then
          replayed = true
          break
        end
      end
    end
    if not replayed then
      redis.call('ZADD', failures, now, now .. ':' .. credential .. ':' .. ARGV[4])
      redis.call('PEXPIRE', failures, window)
      if redis.call('ZCARD', failures) >= tonumber(ARGV[12 + i * 2]) then
        local id = ARGV[13 + i * 2]
        local name = ''
        if i == 1 then name = ARGV[11] end
        redis.call('DEL', failures)
        redis.call('SET', blocked, name, 'PX', block)
        redis.call('ZADD', KEYS[1], now + block, id)
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
        local event = {from = ARGV[8], kind = 'block', ip = ARGV[9], left_ms = block, at = now}
        if i == 1 then
          event.user = ARGV[10]
          event.name = name
        end
        redis.call('PUBLISH', ARGV[7], cjson.encode(event))
        begun[#begun + 1] = i
      end
    end
  end
end
return begun
