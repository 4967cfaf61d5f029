-- load: the state in the text encoding of stores/base.py (or '') and the store's time, for limiter.state().
if redis.call('EXISTS', KEY) == 0 then
  return {'', fmt(NOW)}
end
local parts = flat(load(KEY))
for i = 1, #parts do
  parts[i] = fmt(parts[i])
end
return {table.concat(parts, ' '), fmt(NOW)}
