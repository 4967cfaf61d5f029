-- refuse: after a 429 rate-limit refusal, block the scope and learn from it (core.refuse).
-- A: wait, seq (-1: no learning), slow_down (1/0), used x N (< 0: no evidence in that dimension), cost x N.
local st = load(KEY)
local now = NOW
local wait, seq, slow = A[1], A[2], A[3]
if now + wait > st.blocked then st.blocked = now + wait end
if seq >= 0 then
  if slow == 1 then
    if seq > st.pseq then cut_pace(st, slow_down_cut(wait), now) end
  else
    for d = 1, N do
      local lim = st.lim[d]
      local used_d, cost_d = A[3 + d], A[3 + N + d]
      local interval = 0
      if lim > 0 then interval = WIN[d] / lim end
      -- most of the minute in use: the minute bucket explains the refusal, not a shorter window (core.refuse)
      if used_d >= 0 and cost_d > 0 and lim > 0 and MINUTE[d] and seq > st.tseq[d]
          and used_d * interval <= MINUTE_EXPLAINS * WIN[d] then
        local burst = burst_of(st, d)
        if burst <= cost_d * interval or st.pace > 0 then
          -- one request at a time and still refused: the rate is too high, not the burst
          if seq > st.pseq then cut_pace(st, RATE_CUT, now) end
        else
          st.tol[d] = math.max(TOL_MIN, math.min(burst, BURST_CUT * (used_d * interval)))
        end
        st.tseq[d] = st.seq
      end
    end
  end
end
save(KEY, st, TTL)
return 1
