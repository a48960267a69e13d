
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
if ARGV[6] ~= '' then
  local used = redis.call('HGET', KEYS[4], ARGV[6])
  if used and tonumber(used) >= tonumber(ARGV[7]) then return 4 end
end
if ARGV[2] ~= '0' then
  local tat = redis.call('GET', KEYS[2])
  if tat then
    local ahead = tonumber(tat) * 1000 - now - 60000000
    if ahead >= 0 then return (math.ceil(ahead / 1000) + 1) * 8 + 2 end
  end
end
local maxc = tonumber(ARGV[3])
if maxc > 0 and redis.call('ZCARD', KEYS[3]) >= maxc then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%d', now / 1000))
  if redis.call('ZCARD', KEYS[3]) >= maxc then return 1000 * 8 + 3 end
end
if ARGV[1] ~= '0' then
  local tat = tonumber(redis.call('GET', KEYS[1]) or 0) * 1000
  if tat < now then tat = now end
  local next_tat = math.ceil(tat + tonumber(ARGV[1]))
  local ahead = next_tat - now
  if ahead > 60000000 then return math.ceil((ahead - 60000000) / 1000) * 8 + 1 end
  redis.call('SET', KEYS[1], string.format('%d.%03d', next_tat / 1000, next_tat % 1000), 'PX', string.format('%d', ahead / 1000 + 1000))
end
if maxc > 0 then
  redis.call('ZADD', KEYS[3], string.format('%d', now / 1000 + tonumber(ARGV[4])), ARGV[5])
end
return 0
