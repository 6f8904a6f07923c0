"""The Lua ``settle`` on a real Redis: parity with ``keystile._decide.settle``, one round trip.

Every test needs the ``redis_url`` fixture: without a Redis they skip, unless
KEYSTILE_REQUIRE_REDIS=1 makes that a failure. Keys live under a random prefix and
are deleted afterwards.
"""

from __future__ import annotations

import calendar
import collections
import itertools
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import hiredis
import pytest
import redis

from keystile._credits import last_refill_moment, next_refill_moment
from keystile._decide import LimitCheck, Plan, Settlement, settle
from keystile._models import Code, RatelimitConfig
from keystile.stores._redis_settle import LuaSettle, TooLate, encode_state, state_redis_key

# every test, even one not talking to Redis, skips (or fails) with the server
pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("redis_url")]

State = dict[str, Any]
DAY = 86_400_000
NOW = 1_773_576_000_000  # 2026-03-15 12:00:00 UTC
DURATIONS = (1000, 7000, 60_000, 3_600_000, DAY, 7 * DAY, 2_592_000_000)


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    chosen = f"keystile-test:{uuid.uuid4().hex}:"
    yield chosen
    keys = list(client.scan_iter(match=chosen + "*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def lua(client: redis.Redis, prefix: str) -> LuaSettle:
    return LuaSettle(client, prefix)


# States as the store writes them now (canonical JSON, which the script reads without
# decoding), and as earlier versions wrote them (json.dumps). Calls of load() take turns.
FORMS: tuple[Callable[[State], bytes | str], ...] = (encode_state, json.dumps)
_FORMS = itertools.cycle(FORMS)


def as_text(form: Callable[[State], bytes | str], state: State) -> str:
    written = form(state)
    return written.decode() if isinstance(written, bytes) else written


def load(client: redis.Redis, prefix: str, states: dict[str, State | None],
         form: Callable[[State], bytes | str] | None = None) -> None:
    """Store ``states`` as the store writes them, now or in an earlier version (or in
    ``form``); None: absent."""
    form = form or next(_FORMS)
    pipe = client.pipeline(transaction=False)
    for key, state in states.items():
        pipe.delete(state_redis_key(prefix, key))
        if state is not None:
            pipe.set(state_redis_key(prefix, key), form(state))
    pipe.execute()


def raw_states(client: redis.Redis, prefix: str, keys: list[str]) -> dict[str, tuple[Any, int]]:
    """Each key's stored bytes (None: absent) and PTTL (-1: no expiry, -2: absent)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(state_redis_key(prefix, key))
        pipe.pttl(state_redis_key(prefix, key))
    replies = pipe.execute()
    return {key: (replies[2 * i], replies[2 * i + 1]) for i, key in enumerate(keys)}


def decoded(raw: Any) -> State | None:
    return None if raw is None else json.loads(raw)


def canon(value: Any) -> str:
    """Strict JSON identity: 1 and 1.0 differ, key order does not."""
    return json.dumps(value, sort_keys=True)


def python_settle(plan: Plan, states: dict[str, State | None], now: int
                  ) -> tuple[Settlement, dict[str, State | None], dict[str, State]]:
    """The reference: Python ``settle`` on the states as the store reads them back.

    Returns the settlement, every plan state afterwards, and the writes.
    """
    as_read = {key: json.loads(json.dumps(state)) for key, state in states.items()}
    settlement, writes = settle(plan, as_read, now)
    after: dict[str, State | None] = {key: states.get(key) for key in plan.state_keys}
    after.update(writes)
    return settlement, json.loads(json.dumps(after)), writes


def check(name: str, limit: int, duration: int, cost: int = 1, key: str | None = None) -> LimitCheck:
    config = RatelimitConfig(name, limit, duration, auto_apply=cost % 2 == 0, id=f"rl_{name}")
    return LimitCheck(key or f"rl:key_1:{name}:{duration}", config, cost)


def credit_state(remaining: int | None, refill: State | None = None, refilled_at: int = NOW) -> State:
    return {"remaining": remaining, "refill": refill, "refilledAt": refilled_at}


def moment(year: int, month: int, day: int) -> int:
    return calendar.timegm((year, month, day, 0, 0, 0)) * 1000


def assert_parity(client: redis.Redis, lua: LuaSettle, prefix: str, plan: Plan,
                  states: dict[str, State | None], now: int,
                  form: Callable[[State], bytes | str] | None = None) -> Settlement:
    """Load ``states``, settle with both, assert equal settlements and equal states after."""
    load(client, prefix, states, form)
    expected, after, writes = python_settle(plan, states, now)
    got = lua(plan, now)
    assert got == expected
    stored = raw_states(client, prefix, plan.state_keys)
    for key in plan.state_keys:
        raw, ttl = stored[key]
        assert canon(decoded(raw)) == canon(after[key]), key
        if key not in writes:
            assert ttl == (-2 if states.get(key) is None else -1), key  # untouched
        elif key == plan.credits_key:
            assert ttl == -1, key  # credits never expire
        else:
            longest = max(c.config.duration for c in plan.limits if c.state_key == key)
            assert 0 < ttl <= 2 * longest, key
    return got


# -- the randomized parity test --------------------------------------------------------


def random_now(rng: random.Random) -> int:
    if rng.random() < 0.4:
        return rng.randrange(946_684_800_000, 2_208_988_800_000)  # 2000 to 2040
    year = rng.choice((1999, 2000, 2023, 2024, 2025, 2026, 2028, 2099, 2100))
    month = rng.randint(1, 12)
    day = min(rng.choice((1, 2, 15, 27, 28, 29, 30, 31)), calendar.monthrange(year, month)[1])
    offset = rng.choice((0, 0, -1, 1, rng.randrange(DAY), -rng.randrange(DAY)))
    return moment(year, month, day) + offset


def random_refill(rng: random.Random) -> State | None:
    pick = rng.random()
    if pick < 0.2:
        return None
    if pick < 0.25:
        return {}  # falsy: no refill
    amount = rng.choice((1, 2, 3, 5, rng.randint(1, 10**9)))
    if pick < 0.5:
        return {"interval": "daily", "amount": amount}
    refill: State = {"interval": "monthly", "amount": amount}
    day = rng.choice(("absent", None, 1, 15, 28, 29, 30, 31))
    if day != "absent":
        refill["refillDay"] = day
    return refill


EXTRAS: State = {
    "note": 'h\u00e9llo "/\\ \u2603', "tags": [], "meta": {}, "big": 2**70, "ratio": 0.1,
    "flag": True, "none": None, "nested": {"a": [1, {"b": None, "c": []}], "d": -3},
    'we"ird\\key \u00e9': [{}],
}


def random_credits(rng: random.Random, now: int) -> State | None:
    pick = rng.random()
    if pick < 0.1:
        return None
    if pick < 0.2:
        return credit_state(None, None, now - rng.randrange(100 * DAY))
    refill = random_refill(rng)
    remaining = rng.choice((0, 0, 1, 2, 3, 5, rng.randint(0, 10**15)))
    times = [now, now - rng.randrange(70 * DAY), 0, now - DAY]
    if refill:
        last = last_refill_moment(refill, now)
        times += [last - 1, last, last + 1, last - 1]
    state = credit_state(remaining, refill, rng.choice(times))
    if rng.random() < 0.2:
        state.update(EXTRAS)
    if rng.random() < 0.05:
        del state["refilledAt"]  # read as 0
    if rng.random() < 0.05:
        del state["refill"]
    if rng.random() < 0.2:  # member order must not matter
        state = dict(rng.sample(list(state.items()), len(state)))
    return state


def random_window(rng: random.Random, limit: int, duration: int, now: int) -> State | None:
    seq = now // duration
    kind = rng.choice(("absent", "current", "current", "previous", "previous", "stale", "future"))
    if kind == "absent":
        return None
    top = min(limit + 2, 2**52)
    at = {"current": seq, "previous": seq - 1, "stale": seq - rng.randint(2, 1000), "future": seq + 1}[kind]
    return {"seq": at, "cur": rng.randint(0, top), "prev": rng.randint(0, top)}


def random_case(rng: random.Random, case: int) -> tuple[Plan, dict[str, State | None], int]:
    now = random_now(rng)
    checks: list[LimitCheck] = []
    for i in range(rng.randint(0, 3)):
        limit = rng.choice((1, 2, 3, 5, 10, rng.randint(1, 100), rng.randint(10**6, 10**12)))
        duration = rng.choice((*DURATIONS, rng.randint(1000, 2_592_000_000)))
        key = f"rl:case{case}:n{i}:{duration}"
        if checks and rng.random() < 0.05:
            key = checks[0].state_key  # two checks of one counter: the last write wins
        checks.append(check(f"n{i}", limit, duration, rng.randint(0, 3), key))
    states: dict[str, State | None] = {}
    for c in checks:
        if c.state_key not in states:
            states[c.state_key] = random_window(rng, c.config.limit, c.config.duration, now)
    credits_key = f"credits:case{case}" if rng.random() < 0.75 else None
    if credits_key is not None:
        states[credits_key] = random_credits(rng, now)
    cost = rng.choice((0, 1, 1, 2, 3, 10))
    return Plan(credits_key, cost, tuple(checks)), states, now


def test_lua_settle_matches_python_settle_on_random_plans(
    client: redis.Redis, lua: LuaSettle, prefix: str
) -> None:
    rng = random.Random(20260315)
    codes: collections.Counter[Code] = collections.Counter()
    refills = exceeded_with_reset = 0
    for case in range(600):
        plan, states, now = random_case(rng, case)
        for step in range(2):  # the second step reads what the first wrote
            settlement = assert_parity(client, lua, prefix, plan, states, now)
            codes[settlement.code] += 1
            exceeded_with_reset += settlement.credits_reset is not None
            _, after, writes = python_settle(plan, states, now)
            credits = writes.get(plan.credits_key or "")
            refills += credits is not None and credits.get("refilledAt") == now
            states = {key: after[key] for key in states}
            now += rng.choice((0, 1, rng.randrange(DAY), rng.randrange(40 * DAY))) if step == 0 else 0
    # the cases reach every branch, not only the easy ones
    assert min(codes[Code.VALID], codes[Code.RATE_LIMITED], codes[Code.USAGE_EXCEEDED]) >= 50, codes
    assert refills >= 20 and exceeded_with_reset >= 20, (refills, exceeded_with_reset)


def test_the_packed_command_is_the_evalsha_of_the_arguments(lua: LuaSettle) -> None:
    """The asyncio path packs EVALSHA itself, keeping all but ``now`` and the deadline
    per plan: byte for byte what packing ``arguments`` afresh gives, every time."""
    rng = random.Random(20261126)
    sha = "f" * 40
    for case in range(300):
        plan, _, now = random_case(rng, case)
        plan = Plan(plan.credits_key, plan.cost, plan.limits)  # a fresh memo
        for _ in range(2):  # made, then from the memo
            now += rng.randrange(10**6)
            deadline = rng.choice((0, rng.randrange(10**17)))
            keys, args = lua.arguments(plan, now, deadline)
            expected = hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args))
            assert lua.packed(plan, sha, now, deadline) == expected
        assert len(plan.memo) == 1


def sorted_keys(state: State) -> str:
    """JSON in no canonical form (members sorted): every state is decoded, not matched."""
    return json.dumps(state, sort_keys=True)


def test_lua_settle_matches_python_settle_on_states_in_no_canonical_form(
    client: redis.Redis, lua: LuaSettle, prefix: str
) -> None:
    rng = random.Random(20260316)
    codes: collections.Counter[Code] = collections.Counter()
    for case in range(200):
        plan, states, now = random_case(rng, case)
        codes[assert_parity(client, lua, prefix, plan, states, now, sorted_keys).code] += 1
    assert min(codes[Code.VALID], codes[Code.RATE_LIMITED], codes[Code.USAGE_EXCEEDED]) >= 10, codes


def test_numbers_with_leading_zeros_are_written_as_integers(
    client: redis.Redis, lua: LuaSettle, prefix: str
) -> None:
    # Not JSON, but the canonical patterns read them: written back as %d writes them,
    # not copied (the script copies the text of a number only when it is that already).
    window = check("a", 100, 60_000)
    plan = Plan(None, 1, (window,))
    seq = NOW // 60_000
    key = state_redis_key(prefix, window.state_key)
    for stored, written in (
        (f'{{"seq":{seq},"cur":3,"prev":007}}', f'{{"seq":{seq},"cur":4,"prev":7}}'),
        (f'{{"seq":0{seq},"cur":3,"prev":0}}', f'{{"seq":{seq},"cur":4,"prev":0}}'),
        (f'{{"seq":{seq - 1},"cur":05,"prev":1}}', f'{{"seq":{seq},"cur":1,"prev":5}}'),
        (f'{{"seq":{seq},"cur":3,"prev":10}}', f'{{"seq":{seq},"cur":4,"prev":10}}'),
    ):
        client.set(key, stored)
        assert lua(plan, NOW).code is Code.VALID
        assert client.get(key) == written.encode()


# -- focused tests ---------------------------------------------------------------------


def test_state_redis_key_is_prefix_s_colon_state_key() -> None:
    assert state_redis_key("ks:", "credits:key_1") == "ks:s:credits:key_1"


def test_a_rate_limited_verify_writes_nothing(client: redis.Redis, lua: LuaSettle, prefix: str) -> None:
    open_, full = check("open", 10, 60_000), check("full", 2, 60_000)
    plan = Plan("credits:key_1", 1, (open_, full))
    refill = {"interval": "daily", "amount": 50}
    states: dict[str, State | None] = {
        open_.state_key: None,
        full.state_key: {"seq": NOW // 60_000, "cur": 2, "prev": 0},
        "credits:key_1": credit_state(3, refill, NOW - DAY),  # a refill is due but not kept
    }
    load(client, prefix, states)
    before = raw_states(client, prefix, plan.state_keys)

    settlement = lua(plan, NOW)

    assert settlement.code is Code.RATE_LIMITED
    assert [(r.remaining, r.exceeded) for r in settlement.ratelimits] == [(10, False), (0, True)]
    assert settlement.credits == 50  # the refilled count, reported, not written
    assert raw_states(client, prefix, plan.state_keys) == before
    assert settlement == python_settle(plan, states, NOW)[0]


def test_a_verify_out_of_credits_writes_nothing_and_names_the_next_refill(
    client: redis.Redis, lua: LuaSettle, prefix: str
) -> None:
    limit = check("open", 10, 60_000)
    plan = Plan("credits:key_1", 3, (limit,))
    refill = {"interval": "monthly", "amount": 2, "refillDay": 31}
    states: dict[str, State | None] = {
        limit.state_key: {"seq": NOW // 60_000 - 1, "cur": 4, "prev": 9},
        "credits:key_1": credit_state(0, refill, NOW - 40 * DAY),  # refilled to 2 < 3
    }
    load(client, prefix, states)
    before = raw_states(client, prefix, plan.state_keys)

    settlement = lua(plan, NOW)

    assert settlement.code is Code.USAGE_EXCEEDED
    assert settlement.credits == 2
    assert settlement.credits_reset == moment(2026, 3, 31)
    assert settlement.ratelimits[0].remaining == 10 - 4  # the previous window counts in full at :00
    assert raw_states(client, prefix, plan.state_keys) == before
    assert settlement == python_settle(plan, states, NOW)[0]


def test_an_admitted_verify_takes_every_cost_at_once(
    client: redis.Redis, lua: LuaSettle, prefix: str
) -> None:
    a, b = check("a", 5, 60_000, cost=2), check("b", 3, DAY, cost=0)
    plan = Plan("credits:key_1", 2, (a, b))
    load(client, prefix, {"credits:key_1": credit_state(7)})

    settlement = lua(plan, NOW + 5)

    assert (settlement.code, settlement.credits) == (Code.VALID, 5)
    assert [r.remaining for r in settlement.ratelimits] == [3, 3]
    stored = raw_states(client, prefix, plan.state_keys)
    assert decoded(stored[a.state_key][0]) == {"seq": NOW // 60_000, "cur": 2, "prev": 0}
    assert 60_000 < stored[a.state_key][1] <= 120_000
    assert stored[b.state_key] == (None, -2)  # a cost of 0 writes no counter
    assert decoded(stored["credits:key_1"][0]) == credit_state(5)


def test_the_previous_window_weight_is_exact_beyond_2_to_the_53(
    client: redis.Redis, lua: LuaSettle, prefix: str
) -> None:
    # prev * (duration - elapsed) = 2_879_501_714_856_000_000 - 1: a double rounds it up
    # to a multiple of the duration, so a float weight would be one too high.
    duration, prev, elapsed = 2_592_000_000, 1_110_857_143, 7
    now = (NOW // duration) * duration + elapsed
    assert prev * (duration - elapsed) % duration == duration - 1 > 0
    used = prev * (duration - elapsed) // duration
    assert float(prev * (duration - elapsed)) // duration == used + 1
    for limit, code in ((used + 1, Code.VALID), (used, Code.RATE_LIMITED)):
        window = check("month", limit, duration)
        states: dict[str, State | None] = {window.state_key: {"seq": now // duration, "cur": 0,
                                                              "prev": prev}}
        settlement = assert_parity(client, lua, prefix, Plan(None, 1, (window,)), states, now)
        assert settlement.code is code


def test_numbers_are_written_as_exact_integers(client: redis.Redis, lua: LuaSettle, prefix: str) -> None:
    big = 10**15 + 7  # %.14g (cjson.encode) would write 1e+15
    limit = check("big", 3 * big, 2_592_000_000)
    plan = Plan("credits:key_1", 1, (limit,))
    now = 4_102_444_799_999  # 2099-12-31 23:59:59.999 UTC
    states: dict[str, State | None] = {
        limit.state_key: {"seq": now // 2_592_000_000, "cur": big, "prev": big},
        "credits:key_1": credit_state(big, {"interval": "monthly", "amount": big + 5, "refillDay": 31},
                                      1_773_576_000_123),
    }
    assert_parity(client, lua, prefix, plan, states, now)
    for key in plan.state_keys:
        raw = client.get(state_redis_key(prefix, key))
        assert isinstance(raw, bytes) and not re.search(rb"\d[eE.]", raw), raw
    credits = decoded(client.get(state_redis_key(prefix, "credits:key_1")))
    assert credits is not None
    assert credits["remaining"] == big + 4 and type(credits["remaining"]) is int
    assert credits["refilledAt"] == now and type(credits["refilledAt"]) is int


def test_states_are_written_in_the_canonical_form_whichever_form_they_were_read_in(
    client: redis.Redis, lua: LuaSettle, prefix: str
) -> None:
    window = check("a", 5, 60_000)
    plan = Plan("credits:key_1", 1, (window,))
    seq = NOW // 60_000
    for form in FORMS:
        for refill in (None, {"interval": "monthly", "amount": 9, "refillDay": 15}):
            client.set(state_redis_key(prefix, "credits:key_1"), form(credit_state(4, refill, NOW)))
            client.set(state_redis_key(prefix, window.state_key), form({"seq": seq, "cur": 1, "prev": 2}))
            assert lua(plan, NOW).code is Code.VALID
            refill_text = "null" if refill is None else as_text(form, refill)  # kept as it was
            assert client.get(state_redis_key(prefix, "credits:key_1")) == (
                f'{{"remaining":3,"refill":{refill_text},"refilledAt":{NOW}}}'.encode())
            assert client.get(state_redis_key(prefix, window.state_key)) == (
                f'{{"seq":{seq},"cur":2,"prev":2}}'.encode())


def test_a_credit_state_in_another_form_keeps_it(client: redis.Redis, lua: LuaSettle, prefix: str) -> None:
    plan = Plan("credits:key_1", 1, ())
    # Members in another order: decoded, and spliced in place.
    text = '{"refilledAt": 1, "remaining": 4, "refill": null}'
    client.set(state_redis_key(prefix, "credits:key_1"), text)
    assert lua(plan, NOW).credits == 3
    written = client.get(state_redis_key(prefix, "credits:key_1"))
    assert written == b'{"refilledAt": 1,"remaining":3,"refill": null}'


def test_members_it_does_not_change_keep_their_exact_text(
    client: redis.Redis, lua: LuaSettle, prefix: str
) -> None:
    plan = Plan("credits:key_1", 1, ())
    key = state_redis_key(prefix, "credits:key_1")
    for form in FORMS:
        for refill in (None, {"interval": "monthly", "amount": 9}, {"interval": "monthly", "amount": 9,
                                                                   "refillDay": None}):
            state = {**credit_state(4, refill, NOW - 40 * DAY), **EXTRAS}
            client.set(key, form(state))
            expected, after, _ = python_settle(plan, {"credits:key_1": state}, NOW)
            settlement = lua(plan, NOW)
            assert settlement == expected
            raw = client.get(key)
            assert isinstance(raw, bytes)
            text = raw.decode()
            assert canon(json.loads(text)) == canon(after["credits:key_1"])
            for member in EXTRAS:
                assert as_text(form, {member: EXTRAS[member]})[1:-1] in text, member  # byte for byte
            written = json.loads(text)
            assert "refill" in written and written["refill"] == refill  # null stays null
            if refill is not None:
                assert sorted(written["refill"]) == sorted(refill)  # refillDay: null is not dropped
            assert settlement.credits == (3 if refill is None else 8)  # 8: refilled to 9, then 1 taken


def test_unlimited_credits_are_never_written(client: redis.Redis, lua: LuaSettle, prefix: str) -> None:
    plan = Plan("credits:key_1", 5, (check("a", 1, 1000, cost=0),))
    settlement = assert_parity(client, lua, prefix, plan, {"credits:key_1": credit_state(None)}, NOW)
    assert (settlement.code, settlement.credits) == (Code.VALID, None)
    settlement = assert_parity(client, lua, prefix, plan, {"credits:key_1": None}, NOW)
    assert (settlement.code, settlement.credits) == (Code.VALID, None)


@pytest.mark.parametrize("year", [2023, 2024, 2100, 2000])
def test_monthly_refill_moments_match_python_at_every_month_end(
    client: redis.Redis, lua: LuaSettle, prefix: str, year: int
) -> None:
    plan = Plan("credits:key_1", 1, ())
    for month in range(1, 13):
        for day in (None, 1, 28, 29, 30, 31):
            refill = {"interval": "monthly", "amount": 3, "refillDay": day}
            due = moment(year, month, min(day or 1, calendar.monthrange(year, month)[1]))
            for now in (due - 1, due, due + 1):
                last = last_refill_moment(refill, now)
                for refilled_at, code in ((last - 1, Code.VALID), (last, Code.USAGE_EXCEEDED)):
                    states: dict[str, State | None] = {"credits:key_1": credit_state(0, refill, refilled_at)}
                    settlement = assert_parity(client, lua, prefix, plan, states, now)
                    assert settlement.code is code
                    if code is Code.USAGE_EXCEEDED:
                        assert settlement.credits_reset == next_refill_moment(refill, now) > now


def test_a_client_decoding_responses_gets_the_same_settlement(redis_url: str, prefix: str) -> None:
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        plan = Plan("credits:key_1", 1, (check("a", 2, 60_000),))
        load(decoding, prefix, {"credits:key_1": credit_state(1)})
        settlement = LuaSettle(decoding, prefix)(plan, NOW)
        assert settlement == Settlement(Code.VALID, settlement.ratelimits, 0)
        assert settlement.ratelimits[0].remaining == 1
    finally:
        decoding.close()


def test_numbers_lua_cannot_hold_exactly_fail_and_write_nothing(
    client: redis.Redis, lua: LuaSettle, prefix: str
) -> None:
    plan = Plan("credits:key_1", 1, (check("a", 5, 60_000),))
    for credits in (credit_state(2**53 + 1), credit_state(2.5)):  # type: ignore[arg-type]
        load(client, prefix, {"credits:key_1": credits, plan.limits[0].state_key: None})
        before = raw_states(client, prefix, plan.state_keys)
        with pytest.raises(redis.ResponseError, match="keystile settle: remaining"):
            lua(plan, NOW)
        assert raw_states(client, prefix, plan.state_keys) == before


# -- round trips, NOSCRIPT, concurrency ------------------------------------------------


class Recorded:
    """Commands sent and replies read on the connections of one real client."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.replies = 0

    def connection_class(self) -> type[redis.Connection]:
        recorded = self

        class Recording(redis.Connection):
            def send_command(self, *args: Any, **kwargs: Any) -> None:
                recorded.sent.append(str(args[0]).upper())
                super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]

            def read_response(self, *args: Any, **kwargs: Any) -> Any:
                recorded.replies += 1
                return super().read_response(*args, **kwargs)

        return Recording

    def clear(self) -> None:
        self.sent.clear()
        self.replies = 0


@pytest.fixture
def recorded(redis_url: str) -> Iterator[tuple[redis.Redis, Recorded]]:
    record = Recorded()
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=record.connection_class())
    recording = redis.Redis(connection_pool=pool)
    recording.ping()  # the handshake is not part of any call
    record.clear()
    yield recording, record
    recording.close()
    pool.disconnect()


def evalsha_calls(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def plans() -> list[Plan]:
    three = tuple(check(name, 5, d) for name, d in (("a", 1000), ("b", 60_000), ("c", DAY)))
    return [
        Plan(None, 1, ()),
        Plan("credits:key_1", 1, ()),
        Plan(None, 1, three[:1]),
        Plan("credits:key_1", 2, three),
        Plan("credits:key_1", 9, three),  # USAGE_EXCEEDED
    ]


def test_every_plan_is_one_evalsha(
    client: redis.Redis, recorded: tuple[redis.Redis, Recorded], prefix: str
) -> None:
    recording, record = recorded
    lua = LuaSettle(recording, prefix)
    lua(Plan(None, 1, ()), NOW)  # the first call may have to load the script
    keys = {key for plan in plans() for key in plan.state_keys}
    for attempt in range(5):  # another client may run scripts on this server at the same time
        load(client, prefix, {**dict.fromkeys(keys), "credits:key_1": credit_state(4)})
        record.clear()
        before = evalsha_calls(client)
        settlements = [lua(plan, NOW) for plan in plans()]
        delta = evalsha_calls(client) - before
        assert record.sent == ["EVALSHA"] * len(plans()) and record.replies == len(plans())
        if delta == len(plans()) or attempt == 4:
            assert delta == len(plans())
            break
        time.sleep(0.05)
    assert [s.code for s in settlements][-2:] == [Code.VALID, Code.USAGE_EXCEEDED]


def test_the_script_is_loaded_again_after_script_flush(
    client: redis.Redis, recorded: tuple[redis.Redis, Recorded], prefix: str
) -> None:
    recording, record = recorded
    lua = LuaSettle(recording, prefix)
    plan = Plan("credits:key_1", 1, (check("a", 10, 60_000),))
    load(client, prefix, {"credits:key_1": credit_state(5)})
    assert lua(plan, NOW).credits == 4

    client.script_flush()
    record.clear()
    settlement = lua(plan, NOW)

    assert record.sent == ["EVALSHA", "SCRIPT LOAD", "EVALSHA"]
    assert settlement.code is Code.VALID and settlement.credits == 3
    assert settlement.ratelimits[0].remaining == 8
    record.clear()
    assert lua(plan, NOW).credits == 2
    assert record.sent == ["EVALSHA"]


def test_concurrent_verifies_spend_each_credit_exactly_once(
    client: redis.Redis, lua: LuaSettle, prefix: str
) -> None:
    limit = check("wide", 1000, 3_600_000)
    plan = Plan("credits:key_1", 1, (limit,))
    load(client, prefix, {"credits:key_1": credit_state(100)})
    codes: list[Code] = []
    lock, start = threading.Lock(), threading.Barrier(4)

    def verify() -> None:
        start.wait()
        mine = [lua(plan, NOW).code for _ in range(50)]
        with lock:
            codes.extend(mine)

    run_threads(verify, 4)

    assert collections.Counter(codes) == {Code.VALID: 100, Code.USAGE_EXCEEDED: 100}
    after = raw_states(client, prefix, plan.state_keys)
    assert decoded(after["credits:key_1"][0]) == credit_state(0)
    assert decoded(after[limit.state_key][0]) == {"seq": NOW // 3_600_000, "cur": 100, "prev": 0}


def run_threads(target: Callable[[], None], count: int) -> None:
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors


def test_a_settle_reaching_redis_after_its_deadline_takes_nothing(
    client: redis.Redis, lua: LuaSettle, prefix: str
) -> None:
    a = check("a", 5, 60_000)
    plan = Plan("credits:key_1", 1, (a,))
    load(client, prefix, {"credits:key_1": credit_state(7)})
    before = raw_states(client, prefix, plan.state_keys)
    seconds, micros = client.time()
    server_now = seconds * 1_000_000 + micros

    with pytest.raises(TooLate):
        lua(plan, NOW, deadline_us=server_now - 1)

    assert raw_states(client, prefix, plan.state_keys) == before
    settlement = lua(plan, NOW, deadline_us=server_now + 60_000_000)
    assert (settlement.code, settlement.credits) == (Code.VALID, 6)
