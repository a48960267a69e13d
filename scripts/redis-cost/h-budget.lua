local used = redis.call('HGET', KEYS[1], ARGV[1])
if used and tonumber(used) >= tonumber(ARGV[2]) then return 4 end
return 0
