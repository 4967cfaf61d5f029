-- adjust (settle / cancel): charge or refund units in the dimensions the grant charged (core.adjust).
-- A: release_probe (1/0), delta x N, charged x N (1/0).
local st = load(KEY)
local now = NOW
for d = 1, N do
  local delta = A[1 + d]
  if A[1 + N + d] == 1 and st.lim[d] > 0 and delta ~= 0 then
    local interval = WIN[d] / st.lim[d]
    local base = math.max(st.tat[d], now)
    st.tat[d] = math.max(now, base + delta * interval)
  end
end
if A[1] == 1 then
  st.probe = 0
end
save(KEY, st, TTL)
return 1
