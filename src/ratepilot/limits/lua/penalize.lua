-- penalize: after a 429, admit nothing in this scope for A[1] seconds (core.penalize).
local st = load(KEY)
local until_t = NOW + A[1]
if until_t > st.blocked then st.blocked = until_t end
save(KEY, st, TTL)
return 1
