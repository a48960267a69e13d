local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local used = redis.call('HGET', KEYS[1], ARGV[2])
if used and tonumber(used) >= tonumber(ARGV[3]) then return 4 end
if redis.call('ZCARD', KEYS[2]) >= 100000 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%d', now / 1000))
  if redis.call('ZCARD', KEYS[2]) >= 100000 then return 8003 end
end
local tat = (redis.call('GET', KEYS[3]) or 0) * 1000
if tat < now then tat = now end
local next_tat = math.ceil(tat + 15)
local ahead = next_tat - now
if ahead > 60000000 then return math.ceil((ahead - 60000000) / 1000) * 8 + 1 end
redis.call('PSETEX', KEYS[3], '61000', string.format('%d.%03d', next_tat / 1000, next_tat % 1000))
redis.call('ZADD', KEYS[2], string.format('%d', now / 1000 + 30000), ARGV[1])
return 0
