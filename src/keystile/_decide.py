"""The verification decision, without I/O.

Verification is two pure steps around at most one store transaction:

1. :func:`decide_static` looks at the (cacheable) key record, the keyspace, the
   request and the time, and returns the first failing code among NOT_FOUND,
   DISABLED, EXPIRED, FORBIDDEN and INSUFFICIENT_PERMISSIONS, or ``None``.
2. :func:`make_plan` lists the dynamic state the verify must touch: the credit
   state and every rate-limit counter to check. :func:`settle` is applied by the
   store to the current state inside one transaction and returns the outcome
   plus the new state to write; a rejected request writes nothing.

:func:`build_result` assembles the :class:`VerifyResult`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._credits import apply_refill, next_refill_moment
from ._errors import UnknownRatelimitError
from ._models import (
    Code,
    KeyRecord,
    Keyspace,
    RatelimitConfig,
    RatelimitResult,
    VerifyRequest,
    VerifyResult,
    builder,
)
from ._ratelimit import check_window

__all__ = [
    "LimitCheck",
    "Plan",
    "Settlement",
    "build_result",
    "credits_state_key",
    "decide_static",
    "make_plan",
    "new_ratelimit_result",
    "new_settlement",
    "settle",
]

State = dict[str, Any]


def credits_state_key(key_id: str) -> str:
    return f"credits:{key_id}"


def ratelimit_state_key(scope_id: str, name: str, duration: int) -> str:
    return f"rl:{scope_id}:{name}:{duration}"


@dataclass(frozen=True, slots=True)
class LimitCheck:
    state_key: str
    config: RatelimitConfig
    cost: int


@dataclass(frozen=True, slots=True)
class Plan:
    """The dynamic state one verify touches; empty plans need no store trip."""

    credits_key: str | None
    cost: int
    limits: tuple[LimitCheck, ...]
    #: What a store derives from the plan once and reuses while the plan lives (it is
    #: kept for the cached record, see ``Entry.plans``): a store's own key in it.
    memo: dict[object, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def state_keys(self) -> list[str]:
        keys = [check.state_key for check in self.limits]
        if self.credits_key is not None:
            keys.append(self.credits_key)
        return keys

    @property
    def empty(self) -> bool:
        return self.credits_key is None and not self.limits


@dataclass(frozen=True, slots=True)
class Settlement:
    code: Code
    ratelimits: tuple[RatelimitResult, ...]
    credits: int | None
    credits_reset: int | None = None  # next refill (Unix ms), when one is scheduled


# Constructors for the hot paths: every field by position (see builder).
new_settlement = builder(Settlement)
new_ratelimit_result = builder(RatelimitResult)
_new_result = builder(VerifyResult)


def decide_static(
    record: KeyRecord | None, keyspace: Keyspace, request: VerifyRequest, now: int,
    ip: str | None = None,
) -> Code | None:
    """The first failing code decided by the record alone, or ``None`` to go on.

    ``ip`` is the client address (default ``request.ip``).
    """
    if record is None or (request.api_id is not None and record.api_id != request.api_id):
        return Code.NOT_FOUND
    if not record.enabled:
        return Code.DISABLED
    if record.expires is not None and now > record.expires:
        return Code.EXPIRED
    if keyspace.networks and not _ip_allowed(ip or request.ip, keyspace):
        return Code.FORBIDDEN
    if request.permissions and not record.permits(request.permissions):
        return Code.INSUFFICIENT_PERMISSIONS
    return None


def _ip_allowed(ip: str | None, keyspace: Keyspace) -> bool:
    if not ip:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:a.b.c.d from a dual-stack socket is a.b.c.d
    return any(address in network for network in keyspace.networks)


def make_plan(record: KeyRecord, request: VerifyRequest) -> Plan:
    """The credit and rate-limit checks this verify needs (raises for unknown names)."""
    # By state key: a named limit replaces its auto-applied twin.
    # A key rerolled from another spends that one's credits and counters, so the two
    # share them while the old key is in its grace period.
    owner = record.states_of or record.key_id
    checks = _auto_applied(record, owner) if request.auto_apply else {}
    for entry in request.ratelimits:
        check = _requested_limit(record, owner, entry)
        checks[check.state_key] = check
    cost = 1 if request.cost is None else request.cost
    credits_key = credits_state_key(owner) if record.credits_limited else None
    return Plan(credits_key, cost, tuple(checks.values()))


def _scoped(config: RatelimitConfig, owner: str) -> LimitCheck:
    return LimitCheck(ratelimit_state_key(owner, config.name, config.duration), config, 1)


def _named_limits(record: KeyRecord, owner: str) -> dict[str, LimitCheck]:
    """Every configured limit by name; the key's own win over its identity's."""
    named: dict[str, LimitCheck] = {}
    if record.identity is not None:
        for config in record.identity.ratelimits:
            named[config.name] = _scoped(config, record.identity.id)
    for config in record.ratelimits:
        named[config.name] = _scoped(config, owner)
    return named


def _auto_applied(record: KeyRecord, owner: str) -> dict[str, LimitCheck]:
    """Every auto-applied limit of the key and of its identity, as Unkey checks them:
    a key limit does not hide its identity's limit of the same name."""
    owned = [(config, owner) for config in record.ratelimits]
    if record.identity is not None:
        owned += [(config, record.identity.id) for config in record.identity.ratelimits]
    checks = (_scoped(config, owner) for config, owner in owned if config.auto_apply)
    return {check.state_key: check for check in checks}


def _requested_limit(record: KeyRecord, owner: str, entry: str | Mapping[str, Any]) -> LimitCheck:
    spec: Mapping[str, Any] = {"name": entry} if isinstance(entry, str) else entry
    name = spec["name"]
    cost = int(spec.get("cost", 1))  # VerifyRequest has checked the spec's numbers
    if spec.get("limit") is not None and spec.get("duration") is not None:
        config = RatelimitConfig(name, int(spec["limit"]), int(spec["duration"]))
        return LimitCheck(ratelimit_state_key(owner + ":adhoc", name, config.duration),
                          config, cost)
    named = _named_limits(record, owner).get(name)
    if named is None:
        raise UnknownRatelimitError(name)
    return LimitCheck(named.state_key, named.config, cost)


def settle(
    plan: Plan, states: Mapping[str, State | None], now: int
) -> tuple[Settlement, dict[str, State]]:
    """Decide the dynamic checks against the current ``states``.

    Returns the settlement and the states to write. Rate limits come before
    credits, as Unkey decides them, and a rejection writes nothing at all.
    """
    results, writes, limited = _check_limits(plan, states, now)
    stored = states.get(plan.credits_key) if plan.credits_key else None
    if plan.credits_key is None or stored is None or stored.get("remaining") is None:
        if limited:
            return new_settlement(Code.RATE_LIMITED, _untaken(plan, results), None, None), {}
        return new_settlement(Code.VALID, results, None, None), writes
    credit_state = apply_refill(stored, now)
    remaining: int = credit_state["remaining"]
    if limited:
        return new_settlement(Code.RATE_LIMITED, _untaken(plan, results), remaining, None), {}
    if remaining < plan.cost:
        refill = credit_state.get("refill")
        reset = next_refill_moment(refill, now) if refill else None
        return new_settlement(Code.USAGE_EXCEEDED, _untaken(plan, results), remaining, reset), {}
    if plan.cost or credit_state is not stored:
        remaining -= plan.cost
        writes[plan.credits_key] = {**credit_state, "remaining": remaining}
    return new_settlement(Code.VALID, results, remaining, None), writes


def _untaken(plan: Plan, results: tuple[RatelimitResult, ...]) -> tuple[RatelimitResult, ...]:
    """Results of a rejected verify: the limits that would have admitted it took nothing."""
    return tuple(
        result if result.exceeded else dataclasses.replace(result, remaining=result.remaining + check.cost)
        for check, result in zip(plan.limits, results, strict=True)
    )


def _check_limits(
    plan: Plan, states: Mapping[str, State | None], now: int
) -> tuple[tuple[RatelimitResult, ...], dict[str, State], bool]:
    results: list[RatelimitResult] = []
    writes: dict[str, State] = {}
    limited = False
    for check in plan.limits:
        config = check.config
        outcome = check_window(states.get(check.state_key), limit=config.limit,
                               duration=config.duration, cost=check.cost, now=now)
        results.append(new_ratelimit_result(  # by position, in field order
            config.name, config.limit, config.duration, outcome.remaining, outcome.reset,
            not outcome.allowed, config.id, config.auto_apply))
        limited = limited or not outcome.allowed
        if outcome.new_state is not None:
            writes[check.state_key] = outcome.new_state
    return tuple(results), writes, limited


def build_result(
    code: Code, record: KeyRecord | None, settlement: Settlement | None = None
) -> VerifyResult:
    """The :class:`VerifyResult` for ``code``; NOT_FOUND carries no key information."""
    if record is None or code is Code.NOT_FOUND:
        return VerifyResult(valid=False, code=Code.NOT_FOUND)
    ratelimits: tuple[RatelimitResult, ...]
    if settlement is None:
        credits, ratelimits, credits_reset = None, (), None
    else:
        credits, ratelimits = settlement.credits, settlement.ratelimits
        credits_reset = settlement.credits_reset
    return _new_result(  # by position (valid, code, key_id, ...): this runs on every verify that spends
        code is Code.VALID, code, record.key_id, record.keyspace_id, record.api_id, record.name,
        record.meta, record.expires, credits, record.enabled, record.roles, record.permissions,
        record.identity, ratelimits, credits_reset)
