"""``ratelimit.limit``: a sliding-window limit on any identifier, outside of keys.

Namespaces need no creating: any name (1 to 512 characters) is one. The counters
live in the store like those of keys, so every server on one store shares them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._ratelimit import WindowOutcome, check_window
from ._ops import Body, Call, Operation
from ._schema import boolean, integer, obj, string
from ._shapes import MAX_DURATION

__all__ = ["OPERATIONS", "state_key"]


def state_key(namespace: str, identifier: str, duration: int) -> str:
    """The counter of (namespace, identifier, duration); lengths keep any ``:`` unambiguous."""
    return f"rlns:{len(namespace)}:{namespace}:{len(identifier)}:{identifier}:{duration}"


def limit(call: Call, body: Body) -> dict[str, Any]:
    namespace = body["namespace"]
    call.require("ratelimit", "limit", namespace)
    key = state_key(namespace, body["identifier"], body["duration"])
    now = call.ks.now()

    def step(states: Mapping[str, Any]) -> tuple[dict[str, Any], WindowOutcome]:
        outcome = check_window(states.get(key), limit=body["limit"], duration=body["duration"],
                               cost=body.get("cost", 1), now=now)
        return ({key: outcome.new_state} if outcome.new_state is not None else {}), outcome

    outcome = call.ks.store.transact([key], step)
    return {"limit": body["limit"], "remaining": outcome.remaining, "reset": outcome.reset,
            "success": outcome.allowed}


OPERATIONS = (
    Operation("ratelimit.limit", limit, obj({
        "namespace": string(1, 512), "identifier": string(1, 512),
        "limit": integer(1, 1_000_000_000), "duration": integer(1000, MAX_DURATION),
        "cost": integer(0, 1_000_000_000),
    }, required=["namespace", "identifier", "limit", "duration"]), obj({
        "limit": integer(), "remaining": integer(0), "reset": integer(), "success": boolean(),
        "overrideId": string(),
    }, required=["limit", "remaining", "reset", "success"]),
              "Take from a rate limit: success false when it is exhausted (still 200)",
              kind="ratelimit_namespace"),
)
