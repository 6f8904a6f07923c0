"""``keystile._decide.settle`` on Redis in one round trip: a Lua script (``_redis_settle.lua``).

The script reads every state of a :class:`~keystile._decide.Plan`, decides exactly as
:func:`~keystile._decide.settle` does and, when the verify is admitted, writes the
new states, all atomically in one ``EVALSHA``. States are the JSON the generic store
path reads with :func:`json.loads`, at :func:`state_redis_key`; a rate-limit state is
written with a ``PX`` of twice its duration (it is worthless after two windows), a
credit state without expiry.

The usual states are written in a canonical form (:func:`encode_state`: no spaces,
members in their order, integers) that the script reads with one ``string.match``
instead of a cjson decode, and writes back by formatting, not by re-encoding: that
was most of the script's time. States in any other JSON form (written by an earlier
version, or with more members) are decoded as before, and a settle writes them back
in the canonical form when they fit it. Every version of the script reads both. The
reply is compact too: a code number, the credits, the refill moment, then two numbers
per limit (its reset is computed here, from ``now``).

Numbers the script computes with (``now``, costs, limits, counters, credits) must be
integers below 2**53 in magnitude, Lua's exact range; a state breaking that makes the
call raise :class:`redis.exceptions.ResponseError` and write nothing.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from .._decide import Plan, Settlement, State, new_ratelimit_result, new_settlement
from .._models import Code

if TYPE_CHECKING:
    import redis

__all__ = ["LuaSettle", "TooLate", "decode_state", "encode_state", "state_redis_key"]


class TooLate(Exception):
    """The script reached the server after its deadline and took nothing."""


_CODES = (Code.VALID, Code.RATE_LIMITED, Code.USAGE_EXCEEDED)  # the script's reply codes
_LATE = -1
_HEAD = 3  # code, credits (nil: none), credits reset (nil: none); then 2 numbers per limit


def _bulk(value: str | int) -> bytes:
    """One argument in the protocol's form (as ``hiredis.pack_command`` writes it)."""
    data = b"%d" % value if type(value) is int else value.encode()  # type: ignore[union-attr]
    return b"$%d\r\n%s\r\n" % (len(data), data)


def state_redis_key(prefix: str, state_key: str) -> str:
    """The Redis key holding the dynamic state ``state_key``."""
    return f"{prefix}s:{state_key}"


def encode_state(state: State) -> bytes:
    """A state as the store writes it: JSON without spaces, members in their order, so
    the usual states are in the canonical form the script reads without decoding."""
    return json.dumps(state, separators=(",", ":")).encode()


def decode_state(raw: bytes | str) -> State:
    """A stored state (any JSON object: canonical, or as an older version wrote it)."""
    state: State = json.loads(raw)
    return state


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
        return self.settlement(plan, now, self._script(keys=keys, args=args))

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

    def packed(self, plan: Plan, sha: str, now: int, deadline_us: int) -> bytes:
        """``EVALSHA sha`` with :meth:`arguments`, packed: the parts that do not change
        (all but ``now`` and the deadline) are packed once per plan and kept in its memo."""
        parts = plan.memo.get(self)
        if parts is None:
            keys, args = self.arguments(plan, 0, 0)
            head = [b"*%d\r\n" % (3 + len(keys) + len(args)), _bulk("EVALSHA"), _bulk(sha),
                    _bulk(len(keys)), *map(_bulk, keys)]
            parts = plan.memo[self] = (b"".join(head), b"".join(map(_bulk, args[1:-1])))
        now_digits, deadline_digits = b"%d" % now, b"%d" % deadline_us
        return b"%s$%d\r\n%s\r\n%s$%d\r\n%s\r\n" % (
            parts[0], len(now_digits), now_digits, parts[1], len(deadline_digits), deadline_digits)

    @staticmethod
    def settlement(plan: Plan, now: int, reply: list[Any]) -> Settlement:
        """The script's reply as a :class:`Settlement` (raises :class:`TooLate`)."""
        code = reply[0]
        if code == _LATE:
            raise TooLate("the settle reached Redis after its deadline; nothing was taken")
        if len(reply) != _HEAD + 2 * len(plan.limits):
            raise ValueError(f"a settle reply of {len(reply)} items for {len(plan.limits)} limits")
        ratelimits = []
        at = _HEAD
        for check in plan.limits:
            config = check.config
            duration = config.duration
            ratelimits.append(new_ratelimit_result(  # by position: this runs on every settle
                config.name, config.limit, duration, reply[at], (now // duration + 1) * duration,
                reply[at + 1] == 1, config.id, config.auto_apply))
            at += 2
        return new_settlement(_CODES[code], tuple(ratelimits), reply[1], reply[2])

    @staticmethod
    def source() -> str:
        return _source()
