-- observe: correct the state from a response's headers, as interpreted by learning.py (core.observe).
-- A: age (unused), ref_seq, damping (unused), ref_used x N (unused), ref_adj x N (unused), count, then per observed dimension:
-- index (0-based), limit, server_limit, used.
local st = load(KEY)
local now = NOW
local ref_seq = A[2]
local count = A[4 + 2 * N]
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
  local b = 5 + 2 * N + 4 * i
  local d = A[b] + 1
  local limit = A[b + 1]
  local server_limit = A[b + 2]
  local o_used = A[b + 3]
  local window = WIN[d]
  st.srv[d] = server_limit
  if st.lim[d] <= 0 then
    st.lim[d] = limit
    st.tat[d] = now + o_used * window / limit
    st.oseq[d] = st.seq
    st.ft[d] = now
  else
    if st.lim[d] ~= limit then
      -- the limit changed: adopt the server's count (core.observe says why)
      st.lim[d] = limit
      st.tat[d] = now + o_used * window / limit
    end
    local interval = window / st.lim[d]
    if ref_seq > st.oseq[d] then st.oseq[d] = ref_seq end
    -- Compared with our units in use now, not with the grant's snapshot (core.observe says why).
    local found = o_used - used(st, d, now)
    if found > 0 then
      st.tat[d] = now + o_used * interval
      st.adj[d] = st.adj[d] + found
    else
      found = 0
    end
    st.frate[d] = st.frate[d] * math.exp(-math.max(0, now - st.ft[d]) / FOREIGN_TAU) + found / FOREIGN_TAU
    st.ft[d] = now
  end
end
save(KEY, st, TTL)
return 1
