"""The check every case passes before it is timed: authentication really runs.

The valid request must get 200, a request without the key the case's declared
rejection (401, or what the peer documents), and a wrong key its rejection too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from .cases import Target

__all__ = ["CheckFailed", "check"]

Send = Callable[[Sequence[tuple[str, str]]], Awaitable[int]]


class CheckFailed(RuntimeError):
    """A case answered a check request wrongly; the harness stops before timing."""


async def check(name: str, target: Target, send: Send) -> str:
    """Send the check requests; return a summary like ``200/401/401`` or raise."""
    wanted = [("valid key", target.headers, 200), ("no key", (), target.missing_status)]
    if target.wrong_headers is not None:
        wanted.append(("wrong key", target.wrong_headers, target.wrong_status))
    seen = []
    for label, headers, status in wanted:
        got = await send(headers)
        if got != status:
            raise CheckFailed(f"case {name!r}: a request with {label} got {got}, expected {status};"
                              " it would not measure authentication, so nothing was timed")
        seen.append(str(got))
    return "/".join(seen)
