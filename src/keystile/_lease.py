"""Leased mode: credits and rate-limit tokens reserved from the store in batches and
spent locally, so most verifies of a busy key need no store trip at all.

The store counts every leased unit as spent when it is leased, so the instances
together never admit more than the global limit; what they give up is exactness the
other way: a unit leased and never used is not admitted by anyone.

- A rate-limit lease is taken in the current window (its counter grows by the
  batch) and is void when the window ends; its unused tokens are simply lost, and
  return to the pool only at a graceful shutdown within the same window.
- A credit lease lives until the key's next refill moment (for ever without a
  refill); unused credits go back to the key at a graceful shutdown, and are lost
  when the instance crashes.

- Under asyncio, a lease that falls under half a batch is topped up in the background
  (once per lease), so that requests do not all wait for one acquisition when it runs
  out: an instance then holds up to one and a half batches of a key.

Deciding is pure, as everywhere: :func:`acquire` is the transaction's function;
:class:`Leases` only keeps the balances, under a lock.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from ._credits import apply_refill, next_refill_moment
from ._decide import LimitCheck, Plan, Settlement, State, new_ratelimit_result, new_settlement
from ._forks import on_fork
from ._models import Code, RatelimitResult
from ._ratelimit import window_counts

__all__ = ["Lease", "Leases", "acquire", "release"]

FOREVER = 2**62


@dataclass(slots=True)
class Lease:
    """Units held locally for one state key."""

    balance: int
    until: int  # clock ms from which the lease is void (the window's end, the next refill)
    base: int  # what the store had left right after the lease was taken (for reporting)
    mark: int  # the window seq, or the credit state's refilledAt, the lease belongs to
    ahead: bool = False  # a top-up ahead of need was asked for it (once per lease)


class Leases:
    """The leases one verifier holds, keyed by state key."""

    def __init__(self) -> None:
        self.held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        on_fork(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def spend(self, plan: Plan, now: int) -> Settlement | None:
        """This verify's costs taken from the leases, all or nothing; ``None`` when a
        lease is missing, void or short (then :func:`acquire` tops them up)."""
        with self._lock:
            if self.lacking(plan, now):
                return None
            results = []
            for check in plan.limits:
                lease = self.held[check.state_key]
                lease.balance -= check.cost
                results.append(_result(check, lease.base + lease.balance, lease.until))
            credits = None
            if plan.credits_key is not None:
                lease = self.held[plan.credits_key]
                lease.balance -= plan.cost
                credits = lease.base + lease.balance
            return new_settlement(Code.VALID, tuple(results), credits, None)

    def lacking(self, plan: Plan, now: int) -> dict[str, int]:
        """State key -> units still needed, for every lease that cannot cover ``plan``."""
        needs = [(check.state_key, check.cost) for check in plan.limits]
        if plan.credits_key is not None:
            needs.append((plan.credits_key, plan.cost))
        lacking = {}
        for key, cost in needs:
            lease = self.held.get(key)
            have = lease.balance if lease is not None and now < lease.until else 0
            if have < cost:
                lacking[key] = cost - have
        return lacking

    def running_low(self, plan: Plan, size: int) -> dict[str, int]:
        """State key -> 1 for each lease of ``plan`` down to less than half a batch and
        not topped up ahead yet (now marked so): what to lease before it runs out."""
        low = {}
        for key in plan.state_keys:
            lease = self.held.get(key)
            if lease is not None and not lease.ahead and lease.balance * 2 < size:
                lease.ahead = True
                low[key] = 1
        return low

    def grant(self, grants: Mapping[str, Lease], now: int) -> None:
        with self._lock:
            for key, grant in grants.items():
                lease = self.held.get(key)
                if lease is not None and now < lease.until and lease.mark == grant.mark:
                    grant = dataclasses.replace(grant, balance=grant.balance + lease.balance)
                self.held[key] = grant

    def take_all(self) -> dict[str, Lease]:
        """Every lease, removed (to give them back at shutdown)."""
        with self._lock:
            held, self.held = self.held, {}
            return {key: lease for key, lease in held.items() if lease.balance > 0}


def acquire(
    plan: Plan, states: Mapping[str, State | None], now: int, size: int, lacking: Mapping[str, int],
) -> tuple[Settlement | None, dict[str, State], dict[str, Lease]]:
    """Lease up to ``size`` units for every lacking state key (at least what it lacks).

    Returns ``(rejection, writes, grants)``: a rejection (rate limited or out of
    credits, writing nothing) or ``None`` with the states to write and the leases.
    Rate limits are decided before credits, as in exact mode.
    """
    writes: dict[str, State] = {}
    grants: dict[str, Lease] = {}
    for check in plan.limits:
        need = lacking.get(check.state_key)
        if need is None:
            continue
        config = check.config
        seq, elapsed = divmod(now, config.duration)
        current, previous = window_counts(states.get(check.state_key), seq)
        used = current + previous * (config.duration - elapsed) // config.duration
        room = config.limit - used
        if room < need:
            return _limited(plan, check, states, now), {}, {}
        take = max(need, min(size, room))
        writes[check.state_key] = {"seq": seq, "cur": current + take, "prev": previous}
        grants[check.state_key] = Lease(take, (seq + 1) * config.duration, room - take, seq)
    key = plan.credits_key
    if key is not None and key in lacking:
        stored = states.get(key)
        if stored is not None and stored.get("remaining") is not None:
            state = apply_refill(stored, now)
            remaining: int = state["remaining"]
            refill = state.get("refill")
            if remaining < lacking[key]:
                reset = next_refill_moment(refill, now) if refill else None
                return Settlement(Code.USAGE_EXCEEDED, (), remaining, reset), {}, {}
            take = max(lacking[key], min(size, remaining))
            writes[key] = {**state, "remaining": remaining - take}
            until = next_refill_moment(refill, now) if refill else FOREVER
            grants[key] = Lease(take, until, remaining - take, int(state.get("refilledAt", 0)))
        else:  # unlimited after all (changed since the record was cached): nothing to lease
            grants[key] = Lease(FOREVER, FOREVER, 0, 0)
    return None, writes, grants


def release(leases: Mapping[str, Lease], states: Mapping[str, State | None]) -> dict[str, State]:
    """The states with unused leased units given back, where they still belong:
    tokens of the window still current, credits of the refill period still current."""
    writes: dict[str, State] = {}
    for key, lease in leases.items():
        state = states.get(key)
        if state is None or lease.balance >= FOREVER // 2:
            continue
        if "seq" in state and state["seq"] == lease.mark:
            writes[key] = {**state, "cur": max(0, int(state["cur"]) - lease.balance)}
        elif "remaining" in state and state.get("remaining") is not None and int(
                state.get("refilledAt", 0)) == lease.mark:
            writes[key] = {**state, "remaining": int(state["remaining"]) + lease.balance}
    return writes


def _result(check: LimitCheck, remaining: int, reset: int, exceeded: bool = False) -> RatelimitResult:
    config = check.config
    return new_ratelimit_result(config.name, config.limit, config.duration, remaining, reset,
                                exceeded, config.id, config.auto_apply)


def _limited(plan: Plan, failed: LimitCheck, states: Mapping[str, State | None], now: int) -> Settlement:
    """The rejection: every limit with the room the store has left, ``failed`` exceeded."""
    results = []
    for check in plan.limits:
        config = check.config
        seq, elapsed = divmod(now, config.duration)
        current, previous = window_counts(states.get(check.state_key), seq)
        used = current + previous * (config.duration - elapsed) // config.duration
        results.append(_result(check, max(0, config.limit - used), (seq + 1) * config.duration,
                               exceeded=check is failed))
    return Settlement(Code.RATE_LIMITED, tuple(results), None)
