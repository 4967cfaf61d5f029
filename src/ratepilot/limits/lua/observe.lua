-- observe: correct the state from a response's headers, as interpreted by learning.py (core.observe).
-- A: count, then per observed dimension: index (0-based), limit, server_limit, used; then a success's cost x N
-- and its units in use at admission x N (all 0: not a success); then the burst allowance of a dimension seen for
-- the first time, and 1 for a success (0: not one).
local st = load(KEY)
local now = NOW
local count = A[1]
-- a successful answer widens the burst allowance (core._grow)
local ans = 2 + 4 * count
local start_burst = A[ans + 2 * N] or TOL_START
local answered = (A[ans + 2 * N + 1] or 0) == 1
for d = 1, N do
  local c = A[ans + d - 1] or 0
  local u = A[ans + N + d - 1] or 0
  local tol, lim = st.tol[d], st.lim[d]
  -- (under a slowed pace the backlog is inflated by it: no growth from it)
  if c > 0 and tol > 0 and tol < WIN[d] and lim > 0 and not (st.pace > 0 and MINUTE[d]) then
    local interval = WIN[d] / lim
    local grown
    if st.tseq[d] <= 0 then
      local backlog = u * interval
      grown = math.max(tol, (1.0 + SS_GAIN) * backlog, backlog + c * interval)
    else
      grown = tol + CA_GAIN * c * interval
    end
    st.tol[d] = math.min(WIN[d], grown)
  end
end
local heard = false
for d = 1, N do
  if st.srv[d] > 0 then heard = true end
end
if count == 0 then
  if not heard then
    st.nohdr = st.nohdr + 1
    st.probe = 0
  end
  save(KEY, st, TTL)
  return 1
end
st.nohdr = 0
st.probe = 0
for i = 0, count - 1 do
  local b = 2 + 4 * i
  local d = A[b] + 1
  local limit = A[b + 1]
  local server_limit = A[b + 2]
  local o_used = A[b + 3]
  local window = WIN[d]
  st.srv[d] = server_limit
  if MINUTE[d] and st.tol[d] <= 0 and st.tseq[d] <= 0 then
    -- slow start from the first header, from at least twice what a success shows in use (core.observe)
    local seen = 0
    if answered then seen = 2.0 * o_used * window / server_limit end
    st.tol[d] = math.min(window, math.max(start_burst, seen))
  end
  if st.lim[d] <= 0 then
    st.lim[d] = limit
    st.tat[d] = now + o_used * window / limit
    st.ft[d] = now
  else
    if st.lim[d] ~= limit then
      -- the limit changed: adopt the server's count (core.observe says why)
      st.lim[d] = limit
      st.tat[d] = now + o_used * window / limit
    end
    local interval = window / st.lim[d]
    if answered and MINUTE[d] and st.tol[d] > 0 and st.tol[d] < window and st.tseq[d] <= 0 then
      st.tol[d] = math.min(window, math.max(st.tol[d], o_used * window / server_limit))
    end
    -- Compared with our units in use now, not with the grant's snapshot (core.observe says why).
    local found = o_used - used(st, d, now)
    if found > 0 then
      st.tat[d] = now + o_used * interval
    else
      found = 0
    end
    st.frate[d] = st.frate[d] * math.exp(-math.max(0, now - st.ft[d]) / FOREIGN_TAU) + found / FOREIGN_TAU
    st.ft[d] = now
  end
end
save(KEY, st, TTL)
return 1
