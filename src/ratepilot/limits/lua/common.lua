-- Shared prelude of every limiter script (prepended by stores/redis.py; kept parallel to limits/core.py).
-- State: one MessagePack sequence of numbers per scope (exact doubles, and no number parsing or formatting
-- in Lua, which was half of a script's run time), in the order of stores/base.py's text encoding:
-- seq probe_until blocked_until nohdr, then lim, srv, tat, two retired blocks, frate, ft, tol, tseq for each of
-- the N dimensions, then pace pt pseq. The retired blocks (adj and oseq, which nothing read) are written as 0 and
-- ignored, so states of older versions load and older versions still read every field by its position
-- (stores/base.py says why); a state saved before tol..pseq existed reads them as 0: never learned.
-- ARGV[1] = now ('' = Redis TIME, so hosts' clocks never matter), ARGV[2] = key TTL in ms,
-- ARGV[3] = the operation's numbers as little-endian doubles (A[1..n] below); replies are packed the same
-- way (formatting and parsing numbers as text cost more than the arithmetic).
local N = 5
local WIN = {60, 60, 86400, 86400, 60}
local EPS = 1e-9
local FOREIGN_TAU = 2.0
-- The learned burst and pace (core.py's constants, same names).
local MINUTE = {true, true, false, false, true}
local TOL_START = 1.0
local TOL_MIN = 1e-3
local SS_GAIN = 0.125
local CA_GAIN = 0.002
local BURST_CUT = 0.5
local RATE_CUT = 0.8
local SLOW_DOWN_CUT = 0.75
local SLOW_DOWN_TRIM = 0.95
local PACE_RECOVERY = 1 / 60
local PACE_MIN = 0.05
local MINUTE_EXPLAINS = 0.5

local function fmt(x)
  return string.format('%.17g', x)
end

local function now_of(arg)
  if arg ~= '' then
    return tonumber(arg)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function load(key)
  local st = {seq = 0, probe = 0, blocked = 0, nohdr = 0, lim = {}, srv = {}, tat = {},
              frate = {}, ft = {}, tol = {}, tseq = {}, pace = 0, pt = 0, pseq = 0}
  for d = 1, N do
    st.lim[d] = 0; st.srv[d] = 0; st.tat[d] = 0; st.frate[d] = 0; st.ft[d] = 0
    st.tol[d] = 0; st.tseq[d] = 0
  end
  local raw = redis.call('GET', key)
  if raw then
    local v = {cmsgpack.unpack(raw)}
    st.seq = v[1]; st.probe = v[2]; st.blocked = v[3]; st.nohdr = v[4]
    for d = 1, N do
      st.lim[d] = v[4 + d]
      st.srv[d] = v[4 + N + d]
      st.tat[d] = v[4 + 2 * N + d]
      -- v[4 + 3N + d] and v[4 + 4N + d]: the retired blocks, ignored
      st.frate[d] = v[4 + 5 * N + d]
      st.ft[d] = v[4 + 6 * N + d]
      st.tol[d] = v[4 + 7 * N + d] or 0
      st.tseq[d] = v[4 + 8 * N + d] or 0
    end
    st.pace = v[4 + 9 * N + 1] or 0
    st.pt = v[4 + 9 * N + 2] or 0
    st.pseq = v[4 + 9 * N + 3] or 0
  end
  return st
end

local RETIRED = {}
for d = 1, N do RETIRED[d] = 0 end

local function flat(st)
  local parts = {st.seq, st.probe, st.blocked, st.nohdr}
  for _, arr in ipairs({st.lim, st.srv, st.tat, RETIRED, RETIRED, st.frate, st.ft, st.tol, st.tseq}) do
    for d = 1, N do
      parts[#parts + 1] = arr[d]
    end
  end
  parts[#parts + 1] = st.pace
  parts[#parts + 1] = st.pt
  parts[#parts + 1] = st.pseq
  return parts
end

local function save(key, st, ttl_ms)
  redis.call('SET', key, cmsgpack.pack(unpack(flat(st))), 'PX', ttl_ms)
end

local function used(st, d, now)
  return math.max(0, st.tat[d] - now) * st.lim[d] / WIN[d]
end

-- the learned burst allowance of dimension d, seconds (core.reserve)
local function burst_of(st, d)
  if st.tol[d] > 0 and st.tol[d] < WIN[d] then return st.tol[d] end
  return WIN[d]
end

-- the pace now, recovering linearly since the last cut (core._pace)
local function pace_of(st, now)
  if st.pace <= 0 then return 1 end
  local pace = st.pace + PACE_RECOVERY * math.max(0, now - st.pt)
  if pace >= 1 then
    st.pace = 0
    return 1
  end
  return pace
end

-- how far a slow_down with this wait cuts the pace (core.slow_down_cut)
local function slow_down_cut(wait)
  local cut = 1 - math.sqrt(2 * PACE_RECOVERY * math.max(0, wait))
  return math.min(SLOW_DOWN_TRIM, math.max(SLOW_DOWN_CUT, cut))
end

local function cut_pace(st, factor, now)
  st.pace = math.max(PACE_MIN, pace_of(st, now) * factor)
  st.pt = now
  st.pseq = st.seq
end

local function reply(t)
  return struct.pack('<' .. string.rep('d', #t), unpack(t))
end

local KEY = KEYS[1]
local NOW = now_of(ARGV[1])
local TTL = ARGV[2]
local A = {}
if ARGV[3] and #ARGV[3] > 0 then
  A = {struct.unpack('<' .. string.rep('d', #ARGV[3] / 8), ARGV[3])}
end
