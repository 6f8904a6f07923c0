-- keystile: keystile._decide.settle in one round trip (see _redis_settle.py).
--
-- KEYS: the rate-limit state of every limit of the plan, in plan order, then the
--       credit state when the plan has one.
-- ARGV: now, cost, has_credits (0/1), n_limits, then limit, duration, cost per limit,
--       then optionally a deadline in microseconds of the server's clock: a call that
--       reaches the server later (a paused or overloaded server, the client long gone
--       with a timeout) answers {-1} and takes nothing.
-- Reply: {code (0 VALID, 1 RATE_LIMITED, 2 USAGE_EXCEEDED), credits or nil, credits_reset
--         or nil, then remaining, exceeded (0/1) per limit, in plan order}; a limit's
--         reset is (now // duration + 1) * duration, which the caller computes.
--
-- States are JSON strings, the ones the Python store reads with json.loads. The usual
-- ones are in a canonical form the Python store writes too, {"seq":N,"cur":N,"prev":N}
-- and {"remaining":N,"refill":null or {"interval":"...","amount":N[,"refillDay":N]},
-- "refilledAt":N} (a space after ':' and ',' allowed, as json.dumps writes by default):
-- those are read with one string.match each, without decoding, and written back in
-- the same form. Any other JSON (more members, a null refillDay, a number with a
-- fraction or an exponent) is decoded with cjson and a credit state is rewritten by
-- splicing its top-level members, so members it does not change keep their exact text
-- (cjson would turn [] into {} and round big numbers). Every number this script writes
-- is formatted as an exact integer (cjson.encode would use %.14g). Numbers are doubles
-- in Lua: a number the decision computes with must be an integer below 2^53 in
-- magnitude, or the script fails and writes nothing.

local DAY = 86400000
local EXACT = 9007199254740992 -- 2^53
local null = cjson.null

local function fail(message)
  return error({err = 'keystile settle: ' .. message})
end

local function exact(x, what)
  if type(x) ~= 'number' or x ~= math.floor(x) or x >= EXACT or x <= -EXACT then
    fail(what .. ' is not an integer below 2^53: ' .. tostring(x))
  end
  return x
end

-- Python's truthiness of a decoded JSON value.
local function truthy(x)
  if x == nil or x == null or x == false or x == 0 or x == '' then return false end
  if type(x) == 'table' then return next(x) ~= nil end
  return true
end

-- Exact floored divmod of integers (b > 0), like Python's divmod.
local function divmod(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then
    q, r = q - 1, r + b
  elseif r >= b then
    q, r = q + 1, r - b
  end
  return q, r
end

-- Exact floor(p * r / d) for integers, 0 <= r <= d < 2^51, where p * r may not be exact.
local function muldiv(p, r, d)
  local q, m = divmod(p, d) -- p = q*d + m, so p*r/d = q*r + m*r/d with 0 <= m < d
  local whole = q * r
  if m * r < EXACT then
    local part = divmod(m * r, d)
    return whole + part
  end
  local bits, n = {}, 0 -- r's bits, lowest first
  while r > 0 do
    local half, bit = divmod(r, 2)
    n = n + 1
    bits[n] = bit
    r = half
  end
  local aq, ar = 0, 0 -- the partial product aq*d + ar, 0 <= ar < d
  for i = n, 1, -1 do
    aq, ar = aq * 2, ar * 2
    if ar >= d then aq, ar = aq + 1, ar - d end
    if bits[i] == 1 then
      ar = ar + m
      if ar >= d then aq, ar = aq + 1, ar - d end
    end
  end
  return whole + aq
end

-- JSON text of an integer (exact() has checked it): never an exponent or a fraction.
local function num(x)
  return string.format('%d', x)
end

-- The refill calendar, made on first use: most keys have no refill, and every function
-- defined at the top level is a closure made again on every call.
local calendar = nil
local function refills()
  if calendar then return calendar end

  -- Civil dates (proleptic Gregorian, UTC), after Howard Hinnant's algorithms.
  local function days_from_civil(y, m, d)
    if m <= 2 then y = y - 1 end
    local era = math.floor(y / 400)
    local yoe = y - era * 400
    local mp = (m > 2) and (m - 3) or (m + 9)
    local doy = math.floor((153 * mp + 2) / 5) + d - 1
    local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
  end

  local function civil_from_days(z)
    z = z + 719468
    local era = math.floor(z / 146097)
    local doe = z - era * 146097
    local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
      - math.floor(doe / 146096)) / 365)
    local y = yoe + era * 400
    local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
    local mp = math.floor((5 * doy + 2) / 153)
    local d = doy - math.floor((153 * mp + 2) / 5) + 1
    local m = (mp < 10) and (mp + 3) or (mp - 9)
    if m <= 2 then y = y + 1 end
    return y, m, d
  end

  local function days_in_month(y, m)
    if m == 2 then
      if y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then return 29 end
      return 28
    end
    if m == 4 or m == 6 or m == 9 or m == 11 then return 30 end
    return 31
  end

  -- 00:00 UTC on ``day`` of the month, the month's last day when it is shorter.
  local function monthly_moment(y, m, day)
    local last = days_in_month(y, m)
    if day > last then day = last end
    return days_from_civil(y, m, day) * DAY
  end

  local function refill_day(refill)
    local day = refill['refillDay']
    if not truthy(day) then return 1 end
    return exact(day, 'refillDay')
  end

  -- _credits.last_refill_moment: the latest refill moment at or before now.
  local function last_refill_moment(refill, now)
    local days, into = divmod(now, DAY)
    if refill['interval'] == 'daily' then return now - into end
    local day = refill_day(refill)
    local y, m = civil_from_days(days)
    local moment = monthly_moment(y, m, day)
    if moment > now then
      if m == 1 then y, m = y - 1, 12 else m = m - 1 end
      moment = monthly_moment(y, m, day)
    end
    return moment
  end

  -- _credits.next_refill_moment: the first refill moment after now.
  local function next_refill_moment(refill, now)
    local days, into = divmod(now, DAY)
    if refill['interval'] == 'daily' then return now - into + DAY end
    local day = refill_day(refill)
    local y, m = civil_from_days(days)
    local moment
    for _ = 1, 2 do
      moment = monthly_moment(y, m, day)
      if moment > now then return moment end
      if m == 12 then y, m = y + 1, 1 else m = m + 1 end
    end
    return moment
  end

  calendar = {last = last_refill_moment, next = next_refill_moment}
  return calendar
end

-- States in another JSON form than the canonical one, made on first use (see above).
local json_forms = nil
local function any_json()
  if json_forms then return json_forms end

  -- The top-level members of a JSON object text (already valid: cjson decoded it), each
  -- as {key, text} where text is the member's exact source, '"key": value'.
  local function skip_string(s, i) -- s[i] is the opening quote; the index after the closing one
    local j = i + 1
    while true do
      local k = string.find(s, '["\\]', j)
      if string.byte(s, k) == 92 then j = k + 2 else return k + 1 end
    end
  end

  local function skip_value(s, i)
    local c = string.byte(s, i)
    if c == 34 then return skip_string(s, i) end
    if c == 123 or c == 91 then
      local depth, j = 0, i
      while true do
        local k = string.find(s, '[%[%]{}"]', j)
        local b = string.byte(s, k)
        if b == 34 then
          j = skip_string(s, k)
        else
          if b == 123 or b == 91 then depth = depth + 1 else depth = depth - 1 end
          j = k + 1
          if depth == 0 then return j end
        end
      end
    end
    return string.find(s, '[,}%]%s]', i) or (#s + 1)
  end

  local function members(s)
    local out = {}
    local i = string.find(s, '%S')
    if string.byte(s, i) ~= 123 then fail('a credit state is not a JSON object') end
    i = string.find(s, '%S', i + 1)
    if string.byte(s, i) == 125 then return out end
    while true do
      local key_end = skip_string(s, i)
      local key = string.sub(s, i, key_end - 1)
      if string.find(key, '\\', 1, true) then key = cjson.decode(key) else key = string.sub(key, 2, -2) end
      local v = string.find(s, '%S', string.find(s, ':', key_end, true) + 1)
      local v_end = skip_value(s, v)
      out[#out + 1] = {key, string.sub(s, i, v_end - 1)}
      i = string.find(s, '%S', v_end)
      if string.byte(s, i) == 125 then return out end
      i = string.find(s, '%S', i + 1) -- after the comma
    end
  end

  -- ``text`` with the top-level members in ``changes`` ({key, JSON text} pairs) set, like
  -- Python's {**state, key: value}: in place, once, appended when absent, others untouched.
  local function splice(text, changes)
    local new, parts, done = {}, {}, {}
    for _, change in ipairs(changes) do new[change[1]] = change[2] end
    for _, member in ipairs(members(text)) do
      local key = member[1]
      if new[key] == nil then
        parts[#parts + 1] = member[2]
      elseif not done[key] then
        parts[#parts + 1] = cjson.encode(key) .. ':' .. new[key]
        done[key] = true
      end
    end
    for _, change in ipairs(changes) do
      if not done[change[1]] then parts[#parts + 1] = cjson.encode(change[1]) .. ':' .. change[2] end
    end
    return '{' .. table.concat(parts, ',') .. '}'
  end

  local function decode(raw)
    local ok, value = pcall(cjson.decode, raw)
    if not ok then fail('a state is not JSON: ' .. tostring(value)) end
    if type(value) ~= 'table' then fail('a state is not a JSON object') end
    return value
  end

  json_forms = {decode = decode, splice = splice}
  return json_forms
end

-- The canonical forms (see the header): integers only, no escapes, members in order.
local WINDOW = '^{"seq": ?(%-?%d+), ?"cur": ?(%-?%d+), ?"prev": ?(%-?%d+)}$'
local CREDITS = '^{"remaining": ?(%-?%d+), ?"refill": ?(.-), ?"refilledAt": ?(%-?%d+)}$'
local REFILL = '^{"interval": ?"(%a+)", ?"amount": ?(%-?%d+)}$'
local REFILL_DAY = '^{"interval": ?"(%a+)", ?"amount": ?(%-?%d+), ?"refillDay": ?(%-?%d+)}$'

-- A rate-limit state: true, then its seq, cur and prev (JSON values when decoded); nil
-- when absent.
local function window_state(raw)
  if not raw then return nil end
  local at, cur, prev = string.match(raw, WINDOW)
  if at then return true, tonumber(at), tonumber(cur), tonumber(prev) end
  local state = any_json().decode(raw)
  return true, state['seq'], state['cur'], state['prev']
end

-- _ratelimit.check_window
local function check_window(present, at, cur, prev, limit, duration, cost, now)
  local seq, elapsed = divmod(now, duration)
  local current, previous = 0, 0
  if present then
    if at == seq then
      current, previous = exact(cur, 'cur'), exact(prev, 'prev')
    elseif at == seq - 1 then
      previous = exact(cur, 'cur')
    elseif type(at) ~= 'number' then
      fail('a rate-limit state has no seq')
    end
  end
  local used = current + muldiv(previous, duration - elapsed, duration)
  if used + cost > limit then
    return false, math.max(0, limit - used), nil
  end
  local new_state = nil
  if cost ~= 0 then
    new_state = '{"seq":' .. num(seq) .. ',"cur":' .. num(current + cost)
      .. ',"prev":' .. num(previous) .. '}'
  end
  return true, limit - used - cost, new_state
end

-- A credit state: {remaining, refill (nil when falsy), refilledAt, write}, where
-- write(remaining, refilled) is its new text. Nil when absent or unlimited.
local function credit_state(raw)
  if not raw then return nil end
  local remaining, refill_text, refilled_at = string.match(raw, CREDITS)
  if remaining then
    local refill = nil
    if refill_text ~= 'null' then
      local interval, amount, day = string.match(refill_text, REFILL)
      if not interval then interval, amount, day = string.match(refill_text, REFILL_DAY) end
      if interval then
        refill = {interval = interval, amount = tonumber(amount), refillDay = day and tonumber(day)}
      else
        remaining = nil -- not canonical: decoded below
      end
    end
    if remaining then
      return {
        remaining = tonumber(remaining), refill = refill, refilledAt = tonumber(refilled_at),
        write = function(left, refilled)
          return '{"remaining":' .. num(left) .. ',"refill":' .. refill_text .. ',"refilledAt":'
            .. (refilled and num(refilled) or refilled_at) .. '}'
        end,
      }
    end
  end
  local stored = any_json().decode(raw)
  local left = stored['remaining']
  if left == nil or left == null then return nil end
  local refill = stored['refill']
  if not truthy(refill) then refill = nil end
  local at = stored['refilledAt']
  if at == nil then at = 0 end
  if type(at) ~= 'number' then at = nil end -- fails below if a refill needs it
  return {
    remaining = left, refill = refill, refilledAt = at,
    write = function(new_left, refilled)
      local changes = {{'remaining', num(new_left)}}
      if refilled then changes[2] = {'refilledAt', num(refilled)} end
      return any_json().splice(raw, changes)
    end,
  }
end

-- settle
local now = exact(tonumber(ARGV[1]), 'now')
local cost = exact(tonumber(ARGV[2]), 'cost')
local has_credits = ARGV[3] == '1'
local n = tonumber(ARGV[4])
if #KEYS ~= n + (has_credits and 1 or 0) or (#ARGV ~= 4 + 3 * n and #ARGV ~= 5 + 3 * n) then
  fail('bad arguments')
end
if #ARGV == 5 + 3 * n then
  local deadline = tonumber(ARGV[5 + 3 * n])
  local clock = redis.call('TIME')
  if deadline > 0 and tonumber(clock[1]) * 1000000 + tonumber(clock[2]) > deadline then
    return {-1}
  end
end

local reply, costs, writes = {0, false, false}, {}, {}
local limited = false
for i = 1, n do
  local base = 4 + 3 * (i - 1)
  local limit = exact(tonumber(ARGV[base + 1]), 'limit')
  local duration = exact(tonumber(ARGV[base + 2]), 'duration')
  local limit_cost = exact(tonumber(ARGV[base + 3]), 'limit cost')
  if duration <= 0 or duration >= 2 ^ 51 then fail('duration out of range') end
  local present, at, cur, prev = window_state(redis.call('GET', KEYS[i]))
  local allowed, remaining, new_state = check_window(present, at, cur, prev, limit, duration,
                                                     limit_cost, now)
  reply[2 + 2 * i] = remaining
  reply[3 + 2 * i] = allowed and 0 or 1
  costs[i] = limit_cost
  if not allowed then limited = true end
  if new_state ~= nil then writes[#writes + 1] = {KEYS[i], new_state, 2 * duration} end
end

local code = 0
local credits = has_credits and credit_state(redis.call('GET', KEYS[n + 1]))
if not credits then
  if limited then code = 1 end
else
  local remaining = exact(credits.remaining, 'remaining')
  local refill = credits.refill
  local refilled = nil
  if refill then
    local moment = refills().last(refill, now)
    local refilled_at = credits.refilledAt
    if refilled_at == nil then fail('refilledAt is not a number') end
    if not (refilled_at >= moment) then
      remaining = exact(refill['amount'], 'refill amount')
      refilled = now
    end
  end
  if limited then
    code = 1
  elseif remaining < cost then
    code = 2
    if refill then reply[3] = refills().next(refill, now) end
  elseif cost ~= 0 or refilled ~= nil then
    remaining = exact(remaining - cost, 'remaining')
    writes[#writes + 1] = {KEYS[n + 1], credits.write(remaining, refilled), nil}
  end
  reply[2] = remaining
end
reply[1] = code

if code == 0 then
  for _, write in ipairs(writes) do
    if write[3] then
      redis.call('SET', write[1], write[2], 'PX', num(write[3]))
    else
      redis.call('SET', write[1], write[2])
    end
  end
else
  for i = 1, n do
    if reply[3 + 2 * i] == 0 then
      reply[2 + 2 * i] = reply[2 + 2 * i] + costs[i] -- _untaken: the limits that admitted it took nothing
    end
  end
end
return reply
