-- reserve: admit the cost in every known dimension at once, or return how long to wait (core.reserve).
-- A: probe_timeout, blind_after, headroom, foreign_horizon, cost x N, ceiling x N, start_burst.
-- Reply (doubles): {1, seq, lease, used x N, charged x N} or {0, wait, probe}; lease = the probe's
-- lease expiry (0: not the probe), which identifies the probe when it is settled.
local st = load(KEY)
local now = NOW
local probe_timeout, blind_after, headroom, foreign_horizon = A[1], A[2], A[3], A[4]
local cost, ceil = {}, {}
for d = 1, N do
  cost[d] = A[4 + d]
  ceil[d] = A[4 + N + d]
end
local start_burst = A[5 + 2 * N] or TOL_START
for d = 1, N do
  if st.lim[d] <= 0 and ceil[d] > 0 then
    st.lim[d] = ceil[d]
    st.tat[d] = now
    -- a ceiling is no proof of the burst allowed (core.reserve)
    if MINUTE[d] and st.tol[d] <= 0 then st.tol[d] = math.min(WIN[d], start_burst) end
  end
end

local function granted(probe, charge)
  st.seq = st.seq + 1
  local out = {1, st.seq, probe}
  for d = 1, N do
    if charge and st.lim[d] > 0 then out[#out + 1] = used(st, d, now) else out[#out + 1] = 0 end
  end
  for d = 1, N do
    if charge and st.lim[d] > 0 then out[#out + 1] = 1 else out[#out + 1] = 0 end
  end
  save(KEY, st, TTL)
  return reply(out)
end

local function refuse(wait, probe)
  save(KEY, st, TTL)
  return reply({0, wait, probe})
end

if st.blocked > now + EPS then
  return refuse(st.blocked - now, 0)
end
local known, heard = false, false
for d = 1, N do
  if st.lim[d] > 0 then known = true end
  if st.srv[d] > 0 then heard = true end
end
-- until the server reports limits, one probe at a time, unless the ceiling gives both minute limits (core.reserve)
if not heard and not (ceil[1] > 0 and ceil[2] > 0) then
  if st.nohdr < blind_after then
    if st.probe > now + EPS then
      return refuse(st.probe - now, 1)
    end
    st.probe = now + probe_timeout
    return granted(st.probe, false)
  end
  if not known then
    return granted(0, false)
  end
end

local wait = 0
local updates = {}
for d = 1, N do
  local lim = st.lim[d]
  if lim > 0 and st.srv[d] > 0 and cost[d] > st.srv[d] then
    return refuse(math.huge, 0)
  end
  if lim > 0 then
    local window = WIN[d]
    local interval = window / lim
    local burst = burst_of(st, d)
    local foreign = math.min(st.frate[d] * foreign_horizon * interval, 0.5 * burst)
    local tolerance = burst * (1 - headroom) - foreign
    local base = math.max(st.tat[d], now)
    local add = cost[d] * interval
    if st.pace > 0 and MINUTE[d] then add = add / pace_of(st, now) end
    local w
    if add > tolerance then
      w = base - now
    else
      w = base + add - tolerance - now
    end
    if w > wait then wait = w end
    updates[d] = base + add
  end
end
if wait > EPS then
  return refuse(wait, 0)
end
for d = 1, N do
  if updates[d] then st.tat[d] = updates[d] end
end
return granted(0, true)
