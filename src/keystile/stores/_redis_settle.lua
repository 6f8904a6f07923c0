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

-- How it is written: Redis runs the whole script, top level included, on every call, and
-- every function it defines there is a closure made again each time; numbers cost most
-- as text (tonumber is strtod, string.format is sprintf: ~1.3k instructions each). So
-- the usual path (canonical states) is inline code that defines no function, converts
-- only the numbers it needs, keeps the text of numbers it writes back unchanged, and
-- divides with % (math.floor is a C call). Everything else (another JSON form, numbers
-- out of range, failures) is in rare(), made when needed.

local EXACT, NEXACT = 9007199254740992, -9007199254740992 -- 2^53
local DAY = 86400000

-- The rare paths: failures, states in another JSON form than the canonical one, exact
-- arithmetic beyond 2^53. A table of functions made anew on each call of rare(), which
-- captures nothing (a closure with upvalues costs more to make, on every call).
local function rare()
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

  -- A rate-limit state in another form: its seq, cur and prev (JSON values).
  local function window(raw)
    local state = decode(raw)
    return state['seq'], state['cur'], state['prev']
  end

  -- A credit state in another form: nil when unlimited, else remaining, refill (nil
  -- when falsy), refilledAt (nil when not a number).
  local function credits(raw)
    local stored = decode(raw)
    local left = stored['remaining']
    if left == nil or left == null then return nil end
    local refill = stored['refill']
    if not truthy(refill) then refill = nil end
    local at = stored['refilledAt']
    if at == nil then at = 0 end
    if type(at) ~= 'number' then at = nil end -- fails below if a refill needs it
    return left, refill, at
  end

  return {fail = fail, exact = exact, truthy = truthy, muldiv = muldiv, splice = splice,
          window = window, credits = credits}
end

-- The canonical forms (see the header): integers only, no escapes, members in order. A
-- refill is REFILL, its rest either '}' or REFILL_DAY. The usual texts, as written here
-- (no spaces, no signs, no refill), are tried first with shorter patterns: a pattern
-- costs by its items. What these match, the general ones match with the same captures.
local WINDOW_USUAL = '^{"seq":([1-9]%d*),"cur":(%d+),"prev":(%d+)}$'
local CREDITS_USUAL = '^{"remaining":(%d+),"refill":null,"refilledAt":(%d+)}$'
local REFILLING_USUAL =
  '^{"remaining":(%d+),"refill":({"interval":"(%a+)","amount":(%d+)([^}]*)}),"refilledAt":(%d+)}$'
local REFILL_DAY_USUAL = '^,"refillDay":(%d+)$'
local WINDOW = '^{"seq": ?(%-?%d+), ?"cur": ?(%-?%d+), ?"prev": ?(%-?%d+)}$'
local CREDITS = '^{"remaining": ?(%-?%d+), ?"refill": ?(.-), ?"refilledAt": ?(%-?%d+)}$'
local REFILL = '^{"interval": ?"(%a+)", ?"amount": ?(%-?%d+)(.*)$'
local REFILL_DAY = '^, ?"refillDay": ?(%-?%d+)}$'

local tonumber, format, match, call = tonumber, string.format, string.match, redis.call
local A, K = ARGV, KEYS
local R = nil -- rare(), once made

-- settle. An integer x below 2^53 is checked as x % 1 == 0 and -EXACT < x < EXACT
-- (rare().exact fails with the message); floor(a / b) is t - t % 1 with t = a / b. A
-- numeric argument is converted by x + 0 (tonumber converts twice): one that is not a
-- number fails with Lua's error.
local now = A[1] + 0
if not (now % 1 == 0 and now < EXACT and now > NEXACT) then rare().exact(now, 'now') end
local cost = A[2]
if cost == '1' then cost = 1 elseif cost == '0' then cost = 0 else
  cost = tonumber(cost)
  if not (cost and cost % 1 == 0 and cost < EXACT and cost > NEXACT) then rare().exact(cost, 'cost') end
end
local has_credits = A[3] == '1'
local n = A[4]
if n == '1' then n = 1 elseif n == '0' then n = 0 else n = tonumber(n) end
local argc, m = #A, 4 + 3 * n
if (argc ~= m and argc ~= m + 1) or #K ~= (has_credits and n + 1 or n) then rare().fail('bad arguments') end
if argc > m then
  local deadline = tonumber(A[argc])
  local clock = call('TIME')
  if deadline > 0 and tonumber(clock[1]) * 1000000 + tonumber(clock[2]) > deadline then
    return {-1}
  end
end

-- The reply, made with room for one limit (a table that grows is made again), and the
-- writes: the first limit's new text and PX, the others' in a table, the credits'.
local reply = {0, false, false, 0, 0}
local text1, px1, writes, credits_text = false, nil, nil, false
if n == 0 then reply[4], reply[5] = nil, nil end
local limited = false
for i = 1, n do
  local base = 1 + 3 * i
  local limit = A[base + 1] + 0
  if not (limit % 1 == 0 and limit < EXACT and limit > NEXACT) then rare().exact(limit, 'limit') end
  local duration = A[base + 2] + 0
  if not (duration % 1 == 0 and duration < EXACT and duration > NEXACT) then
    rare().exact(duration, 'duration')
  end
  local limit_cost = A[base + 3]
  if limit_cost == '1' then limit_cost = 1 elseif limit_cost == '0' then limit_cost = 0 else
    limit_cost = tonumber(limit_cost)
    if not (limit_cost and limit_cost % 1 == 0 and limit_cost < EXACT and limit_cost > NEXACT) then
      rare().exact(limit_cost, 'limit cost')
    end
  end
  if duration <= 0 or duration >= 2251799813685248 then rare().fail('duration out of range') end -- 2^51
  local raw = call('GET', K[i])

  -- _ratelimit.check_window; seq, elapsed = divmod(now, duration)
  local t = now / duration
  local seq = t - t % 1
  local elapsed = now - seq * duration
  if elapsed < 0 then
    seq, elapsed = seq - 1, elapsed + duration
  elseif elapsed >= duration then
    seq, elapsed = seq + 1, elapsed - duration
  end
  local current, previous = 0, 0
  local seq_text, prev_text = nil, '0' -- the text of seq, and of the new prev when it is known
  if raw then
    local at, cur, prev = match(raw, WINDOW_USUAL)
    local usual = at -- [1-9]%d*: as %d writes it
    if not at then at, cur, prev = match(raw, WINDOW) end
    if at then -- integers (x + 0 is tonumber's conversion, done once): only their size is checked
      at = at + 0
      if at == seq then
        seq_text = usual
        current = cur == '0' and 0 or cur + 0
        if not (current < EXACT and current > NEXACT) then rare().exact(current, 'cur') end
        previous, prev_text = prev == '0' and 0 or prev + 0, prev
        if not (previous < EXACT and previous > NEXACT) then rare().exact(previous, 'prev') end
      elseif at == seq - 1 then
        previous, prev_text = cur == '0' and 0 or cur + 0, cur
        if not (previous < EXACT and previous > NEXACT) then rare().exact(previous, 'cur') end
      end
    else
      R = R or rare()
      at, cur, prev = R.window(raw)
      prev_text = nil
      if at == seq then
        current, previous = R.exact(cur, 'cur'), R.exact(prev, 'prev')
      elseif at == seq - 1 then
        previous = R.exact(cur, 'cur')
      elseif type(at) ~= 'number' then
        R.fail('a rate-limit state has no seq')
      end
    end
  end
  local used = current
  if previous ~= 0 then -- + muldiv(previous, duration - elapsed, duration)
    local r = duration - elapsed
    t = previous / duration
    local q = t - t % 1
    local m = previous - q * duration
    if m < 0 then
      q, m = q - 1, m + duration
    elseif m >= duration then
      q, m = q + 1, m - duration
    end
    if m * r < EXACT then -- p*r/d = q*r + m*r/d
      local mr = m * r
      t = mr / duration
      local part = t - t % 1
      local rest = mr - part * duration
      if rest < 0 then part = part - 1 elseif rest >= duration then part = part + 1 end
      used = current + (q * r + part)
    else
      R = R or rare()
      used = current + R.muldiv(previous, r, duration)
    end
  end
  if used + limit_cost > limit then
    local left = limit - used
    if left < 0 then left = 0 end
    reply[2 + 2 * i], reply[3 + 2 * i] = left, 1
    limited = true
  else
    reply[2 + 2 * i], reply[3 + 2 * i] = limit - used - limit_cost, 0
    if limit_cost ~= 0 then
      -- prev's text is kept when it is what %d writes: no sign, no leading zero
      if prev_text and prev_text ~= '0' and not (previous >= 10 ^ (#prev_text - 1)) then prev_text = nil end
      local text = '{"seq":' .. (seq_text or format('%d', seq)) .. ',"cur":'
        .. format('%d', current + limit_cost) .. ',"prev":' .. (prev_text or format('%d', previous)) .. '}'
      if i == 1 then
        text1, px1 = text, format('%d', 2 * duration)
      else
        writes = writes or {false, false}
        writes[2 * i - 3], writes[2 * i - 2] = text, format('%d', 2 * duration)
      end
    end
  end
end

-- The credits: remaining (nil: none or unlimited), the refill's members when it has one.
local code = 0
local raw = has_credits and call('GET', K[n + 1])
local remaining, refilled_text = nil, nil
if raw then remaining, refilled_text = match(raw, CREDITS_USUAL) end
if remaining then -- the usual state, without a refill
  remaining = remaining + 0
  if not (remaining < EXACT and remaining > NEXACT) then rare().exact(remaining, 'remaining') end
  if limited then
    code = 1
  elseif remaining < cost then
    code = 2
  elseif cost ~= 0 then
    remaining = remaining - cost
    if not (remaining < EXACT and remaining > NEXACT) then rare().exact(remaining, 'remaining') end
    credits_text = '{"remaining":' .. format('%d', remaining) .. ',"refill":null,"refilledAt":'
      .. refilled_text .. '}'
  end
  reply[2] = remaining
elseif raw then -- in another form, or with a refill
  local refill_text, refilled_at, canonical = nil, nil, false
  local has_refill, interval, amount, day, rest = false, nil, nil, nil, nil
  remaining, refill_text, interval, amount, rest, refilled_text = match(raw, REFILLING_USUAL)
  if remaining and rest ~= '' then
    day = match(rest, REFILL_DAY_USUAL)
    if not day then remaining = nil end
  end
  if remaining then
    canonical, has_refill = true, true
  else
    remaining, refill_text, refilled_text = match(raw, CREDITS)
    interval, amount, day = nil, nil, nil
    canonical = remaining ~= nil
    if canonical and refill_text ~= 'null' then
      interval, amount, rest = match(refill_text, REFILL)
      if interval and rest ~= '}' then
        day = match(rest, REFILL_DAY)
        if not day then interval = nil end
      end
      has_refill = interval ~= nil
      canonical = has_refill
    end
  end
  if canonical then
    remaining = remaining + 0
    if not (remaining < EXACT and remaining > NEXACT) then rare().exact(remaining, 'remaining') end
    if has_refill then
      refilled_at, amount = refilled_text + 0, amount + 0
      day = day and day + 0
    end
  else
    R = R or rare()
    local refill
    remaining, refill, refilled_at = R.credits(raw)
    if remaining ~= nil then
      remaining = R.exact(remaining, 'remaining')
      if refill then
        has_refill = true
        interval = refill['interval']
        day = refill['refillDay']
        amount = refill['amount']
      end
    end
  end
  if remaining == nil then
    if limited then code = 1 end
  else
    local refilled = nil
    local after = nil -- the next refill moment
    if has_refill then
      -- _credits.last_refill_moment and next_refill_moment: last <= now < after
      local t = now / DAY
      local days = t - t % 1
      local into = now - days * DAY
      if into < 0 then
        days, into = days - 1, into + DAY
      elseif into >= DAY then
        days, into = days + 1, into - DAY
      end
      local last
      if interval == 'daily' then
        last, after = now - into, now - into + DAY
      else
        -- the refill day: 1 when falsy
        if day == nil or day == 0 then
          day = 1
        elseif not (type(day) == 'number' and day % 1 == 0 and day < EXACT and day > NEXACT) then
          R = R or rare()
          if R.truthy(day) then R.exact(day, 'refillDay') else day = 1 end
        end
        -- civil_from_days(days) (proleptic Gregorian, UTC, after Howard Hinnant)
        local z = days + 719468
        local era = (z - z % 146097) / 146097
        local doe = z - era * 146097
        local yoe = doe - (doe - doe % 1460) / 1460 + (doe - doe % 36524) / 36524
          - (doe - doe % 146096) / 146096
        yoe = (yoe - yoe % 365) / 365
        local y = yoe + era * 400
        local doy = doe - (365 * yoe + (yoe - yoe % 4) / 4 - (yoe - yoe % 100) / 100)
        local mp = (5 * doy + 2 - (5 * doy + 2) % 153) / 153
        local m = (mp < 10) and (mp + 3) or (mp - 9)
        if m <= 2 then y = y + 1 end
        -- 00:00 UTC on the refill day of this month (the month's last day when it is
        -- shorter), then of the month before (when it is after now) or after
        for k = 1, 2 do
          local d = day
          local month_days = 31
          if m == 2 then
            month_days = (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) and 29 or 28
          elseif m == 4 or m == 6 or m == 9 or m == 11 then
            month_days = 30
          end
          if d > month_days then d = month_days end
          local cy = y -- days_from_civil(y, m, d)
          if m <= 2 then cy = cy - 1 end
          local cera = (cy - cy % 400) / 400
          local cyoe = cy - cera * 400
          local cmp = (m > 2) and (m - 3) or (m + 9)
          local cdoy = (153 * cmp + 2 - (153 * cmp + 2) % 5) / 5 + d - 1
          local cdoe = cyoe * 365 + (cyoe - cyoe % 4) / 4 - (cyoe - cyoe % 100) / 100 + cdoy
          local moment = (cera * 146097 + cdoe - 719468) * DAY
          if k == 2 then
            if last then after = moment else last = moment end
          elseif moment > now then
            after = moment
            if m == 1 then y, m = y - 1, 12 else m = m - 1 end
          else
            last = moment
            if m == 12 then y, m = y + 1, 1 else m = m + 1 end
          end
        end
      end
      if refilled_at == nil then rare().fail('refilledAt is not a number') end
      if not (refilled_at >= last) then
        if not (type(amount) == 'number' and amount % 1 == 0 and amount < EXACT and amount > NEXACT) then
          rare().exact(amount, 'refill amount')
        end
        remaining, refilled = amount, now
      end
    end
    if limited then
      code = 1
    elseif remaining < cost then
      code = 2
      if has_refill then reply[3] = after end
    elseif cost ~= 0 or refilled ~= nil then
      remaining = remaining - cost
      if not (remaining < EXACT and remaining > NEXACT) then rare().exact(remaining, 'remaining') end
      local text
      if canonical then
        text = '{"remaining":' .. format('%d', remaining) .. ',"refill":' .. refill_text .. ',"refilledAt":'
          .. (refilled and format('%d', refilled) or refilled_text) .. '}'
      else
        local changes = {{'remaining', format('%d', remaining)}}
        if refilled then changes[2] = {'refilledAt', format('%d', refilled)} end
        R = R or rare()
        text = R.splice(raw, changes)
      end
      credits_text = text
    end
    reply[2] = remaining
  end
elseif limited then
  code = 1
end
reply[1] = code

if code == 0 then
  if text1 then call('SET', K[1], text1, 'PX', px1) end
  if writes then
    for i = 2, n do
      if writes[2 * i - 3] then call('SET', K[i], writes[2 * i - 3], 'PX', writes[2 * i - 2]) end
    end
  end
  if credits_text then call('SET', K[n + 1], credits_text) end
else
  for i = 1, n do
    if reply[3 + 2 * i] == 0 then -- _untaken: the limits that admitted it took nothing
      local c = A[4 + 3 * i]
      if c == '1' then c = 1 elseif c == '0' then c = 0 else c = tonumber(c) end
      reply[2 + 2 * i] = reply[2 + 2 * i] + c
    end
  end
end
return reply
