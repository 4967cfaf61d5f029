-- adjust (settle / cancel): charge or refund units in the dimensions the grant charged (core.adjust).
-- A: probe_hold (seconds the probe lease may still run; negative: leave it), delta x N, charged x N (1/0),
-- probe_lease (the settled probe's lease as granted: only that lease is cut, not a newer probe's).
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
if A[1] >= 0 and st.probe == A[2 + 2 * N] then
  st.probe = math.min(st.probe, now + A[1])
end
save(KEY, st, TTL)
return 1
