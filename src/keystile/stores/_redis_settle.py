"""``keystile._decide.settle`` on Redis in one round trip: a Lua script (``_redis_settle.lua``).

The script reads every state of a :class:`~keystile._decide.Plan`, decides exactly as
:func:`~keystile._decide.settle` does and, when the verify is admitted, writes the
new states, all atomically in one ``EVALSHA``. States are the JSON the generic store
path reads with :func:`json.loads`, at :func:`state_redis_key`; a rate-limit state is
written with a ``PX`` of twice its duration (it is worthless after two windows), a
credit state without expiry.

Numbers the script computes with (``now``, costs, limits, counters, credits) must be
integers below 2**53 in magnitude, Lua's exact range; a state breaking that makes the
call raise :class:`redis.exceptions.ResponseError` and write nothing.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import TYPE_CHECKING, Any

from .._decide import Plan, Settlement
from .._models import Code, RatelimitResult

if TYPE_CHECKING:
    import redis

__all__ = ["LuaSettle", "TooLate", "state_redis_key"]


class TooLate(Exception):
    """The script reached the server after its deadline and took nothing."""

_HEAD = 5  # code, credits set, credits, reset set, reset; then 3 numbers per limit


def state_redis_key(prefix: str, state_key: str) -> str:
    """The Redis key holding the dynamic state ``state_key``."""
    return f"{prefix}s:{state_key}"


@functools.cache
def _source() -> str:
    return resources.files(__package__ or "keystile.stores").joinpath(
        "_redis_settle.lua").read_text(encoding="utf-8")


class LuaSettle:
    """``settle(plan, now)`` against the states under ``prefix`` on ``client``.

    Thread-safe as the client is; the script is sent once per server (redis-py's
    :class:`~redis.commands.core.Script` loads it again after a ``NOSCRIPT``).
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.prefix = prefix
        self._script = client.register_script(_source())

    def __call__(self, plan: Plan, now: int, deadline_us: int | None = None) -> Settlement:
        """Settle ``plan`` at ``now``; with ``deadline_us`` (server clock), a call the
        server runs later takes nothing and raises :class:`TooLate`."""
        keys, args = self.arguments(plan, now, deadline_us)
        return self.settlement(plan, self._script(keys=keys, args=args))

    def arguments(self, plan: Plan, now: int, deadline_us: int | None) -> tuple[list[str], list[int]]:
        """The script's KEYS and ARGV for ``plan`` (for callers with a client of their own)."""
        keys = [state_redis_key(self.prefix, check.state_key) for check in plan.limits]
        args = [int(now), int(plan.cost), int(plan.credits_key is not None), len(plan.limits)]
        for check in plan.limits:
            args += [int(check.config.limit), int(check.config.duration), int(check.cost)]
        if plan.credits_key is not None:
            keys.append(state_redis_key(self.prefix, plan.credits_key))
        if deadline_us is not None:
            args.append(int(deadline_us))
        return keys, args

    @staticmethod
    def settlement(plan: Plan, reply: list[Any]) -> Settlement:
        """The script's reply as a :class:`Settlement` (raises :class:`TooLate`)."""
        if reply and reply[0] in (b"LATE", "LATE"):
            raise TooLate("the settle reached Redis after its deadline; nothing was taken")
        return _settlement(plan, reply)

    @staticmethod
    def source() -> str:
        return _source()


def _settlement(plan: Plan, reply: list[Any]) -> Settlement:
    code = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
    ratelimits = tuple(
        RatelimitResult(
            name=check.config.name, limit=check.config.limit, duration=check.config.duration,
            remaining=int(reply[at]), reset=int(reply[at + 1]), exceeded=bool(reply[at + 2]),
            id=check.config.id, auto_apply=check.config.auto_apply,
        )
        for check, at in zip(plan.limits, range(_HEAD, len(reply), 3), strict=True)
    )
    return Settlement(
        code=Code(code),
        ratelimits=ratelimits,
        credits=int(reply[2]) if reply[1] else None,
        credits_reset=int(reply[4]) if reply[3] else None,
    )
