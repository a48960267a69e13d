local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local tat = (redis.call('GET', KEYS[1]) or 0) * 1000
if tat < now then tat = now end
local next_tat = math.ceil(tat + 15)
local ahead = next_tat - now
if ahead > 60000000 then return math.ceil((ahead - 60000000) / 1000) * 8 + 1 end
redis.call('PSETEX', KEYS[1], '61000', string.format('%d.%03d', next_tat / 1000, next_tat % 1000))
return 0
