"""What the Redis cases need: the server, a key prefix per run, counted round trips,
and a reference round trip to compare with.

- **The server**: ``KEYSTILE_BENCH_REDIS`` (default ``redis://127.0.0.1:6379/0``). When
  no Redis answers there, the Redis cases are skipped with the reason, as peers are
  when they are not installed.
- **A prefix per run**: every key the harness writes is under ``ksbench-<random>:``
  (``?prefix=`` of the store URL; in ``--mode http`` a sub-prefix per server process),
  and is deleted when the run ends.
- **Round trips, counted where they are sent**: one ``send_packed_command`` of a
  redis-py connection (blocking or ``redis.asyncio``) or of keystile's lean asyncio
  connection (``keystile.stores._redis_lean.LeanConnection``, the one an ASGI app's
  verifies use) is one round trip: a command, a pipeline or a script call, with a
  health-check PING, a connection's handshake or a NOSCRIPT reload counted as the
  extra trips they are. :func:`counting_sends` wraps that method on redis-py's two
  connection base classes and on keystile's for the run; a send is counted when :data:`ACTIVE` holds a
  counter in the sending context, which the harness sets around a case's requests
  (worker threads of ``anyio.to_thread`` inherit it; the store's invalidation listener
  thread does not, so its pub/sub traffic is never counted). The wrap is on the
  classes, not the store's pools, because keystile makes its asyncio connection
  itself, per event loop, on first use.
- **The server's share**: the Redis server's CPU time (``INFO cpu``, user + system:
  its scripts, commands and socket I/O) read around each counted batch, per request.
  It is the whole server's, so another client of the same Redis adds to it.
- **The reference**: ``redis-benchmark -c 1 EVALSHA <sha of "return 1"> 0``, one
  connection, one round trip at a time, run in the same harness run; the same call
  from Python (``redis.asyncio``, one connection); and from keystile's lean asyncio
  client, the one its ASGI verifies use (the floor of the exact path: a settle is
  that round trip plus the script's work and keystile's own).
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "ACTIVE", "COUNTER_PATH", "ENV", "CountedApp", "RoundTrips", "ServerCpu", "compare",
    "counting_sends", "drop_prefix", "new_prefix", "public_url", "redis_url", "reference",
    "settle_call", "sync_client", "unavailable", "with_prefix",
]

ENV = "KEYSTILE_BENCH_REDIS"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
COUNTER_PATH = "/__keystile_bench/round-trips"  # --mode http: the server's counter
TRIVIAL_SCRIPT = "return 1"


def redis_url() -> str:
    """The Redis the cases use (without a key prefix)."""
    return os.environ.get(ENV) or DEFAULT_URL


def new_prefix() -> str:
    return f"ksbench-{secrets.token_hex(4)}:"


def with_prefix(url: str, prefix: str) -> str:
    """``url`` with keystile's ``prefix=`` option set (other query options kept)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "prefix"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("prefix", prefix)])))


def public_url(url: str) -> str:
    """``url`` without a password, for the report."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))


def sync_client(url: str) -> Any:
    import redis

    # Only redis-py's own options: keystile's (prefix, timeout) are not for redis-py.
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("prefix", "timeout")]
    return redis.Redis.from_url(urlunsplit(parts._replace(query=urlencode(query))),
                                socket_timeout=2, socket_connect_timeout=1)


@functools.cache
def _unavailable(url: str) -> str | None:
    try:
        client = sync_client(url)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure to reach it is a reason to skip, never a crash
        return f"no Redis answers at {public_url(url)} ({type(exc).__name__}: {exc}; set {ENV})"
    return None


def unavailable() -> str | None:
    """Why the Redis cases cannot run here, or None when Redis answers."""
    return _unavailable(redis_url())


def drop_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix``; the number deleted."""
    client = sync_client(url)
    try:
        deleted = 0
        batch: list[bytes] = []
        for name in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(name)
            if len(batch) >= 1000:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
        return deleted
    finally:
        client.close()


class ServerCpu:
    """The Redis server's CPU time so far (µs, user + system), read with ``INFO cpu``."""

    def __init__(self, url: str) -> None:
        self.client = sync_client(url)

    def __call__(self) -> float:
        cpu = self.client.info("cpu")
        return (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6

    def close(self) -> None:
        self.client.close()


# -- round trips -------------------------------------------------------------------------


@dataclass
class RoundTrips:
    """Sends counted while this counter was :data:`ACTIVE`."""

    sent: int = 0


ACTIVE: ContextVar[RoundTrips | None] = ContextVar("keystile_bench_round_trips", default=None)


def _counting_sync(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        counter = ACTIVE.get()
        if counter is not None:
            counter.sent += 1
        original(self, command, check_health)

    return send_packed_command


def _counting_async(original: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    @functools.wraps(original)
    async def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        counter = ACTIVE.get()
        if counter is not None:
            counter.sent += 1
        await original(self, command, check_health)

    return send_packed_command


@contextmanager
def counting_sends() -> Iterator[None]:
    """Count the sends of every Redis connection while inside (see the module doc)."""
    import redis.asyncio.connection
    import redis.connection

    from keystile.stores._redis_lean import LeanConnection

    with wrapping("send_packed_command", [
            (redis.connection.AbstractConnection, _counting_sync),
            (redis.asyncio.connection.AbstractConnection, _counting_async),
            (LeanConnection, _counting_sync)]):
        yield


@contextmanager
def wrapping(method: str, classes: list[tuple[type[Any], Callable[[Any], Any]]]) -> Iterator[None]:
    """Each class's ``method`` replaced by ``wrap(method)`` while inside (not twice when nested)."""
    saved = []
    for cls, wrap in classes:
        original = cls.__dict__[method]
        if getattr(original, "__wrapped__", None) is not None:
            continue  # counting already (nested)
        saved.append((cls, original))
        setattr(cls, method, wrap(original))
    try:
        yield
    finally:
        for cls, original in saved:
            setattr(cls, method, original)


class CountedApp:
    """``--mode http``: the case's app with its requests' sends counted, and the count
    served at :data:`COUNTER_PATH` (``{"sent": N, "requests": M}``)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counter = RoundTrips()
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == COUNTER_PATH:
            body = json.dumps({"sent": self.counter.sent, "requests": self.requests}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        token = ACTIVE.set(self.counter)
        try:
            await self.app(scope, receive, send)
        finally:
            ACTIVE.reset(token)
            self.requests += scope["type"] == "http"


# -- the reference round trip --------------------------------------------------------------


def _redis_benchmark(url: str, sha: str, requests: int, cpu: ServerCpu,
                     call: tuple[str, ...] = ("0",)) -> dict[str, Any]:
    """``redis-benchmark -c 1 EVALSHA sha *call`` (``call``: numkeys, keys, args)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {"skipped": "redis-benchmark is not installed"}
    parts = urlsplit(url)
    if parts.scheme != "redis":
        return {"skipped": f"redis-benchmark: only redis:// URLs are supported here, not {parts.scheme}://"}
    command = [binary, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379),
               "-n", str(requests), "-c", "1", "--csv"]
    if parts.password:
        command[1:1] = ["-a", parts.password, *(["--user", parts.username] if parts.username else [])]
    command += ["EVALSHA", sha, *call]
    shown = [("***" if parts.password and arg == parts.password else arg) for arg in command]
    shown[0] = "redis-benchmark"
    try:
        cpu_before = cpu()
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        server_cpu_us = cpu() - cpu_before
    except subprocess.TimeoutExpired:
        return {"skipped": "redis-benchmark did not finish within 300 s", "command": shown}
    rows = [row for row in csv.reader(io.StringIO(done.stdout)) if row and row[0].startswith("EVALSHA")]
    if done.returncode != 0 or not rows:
        error = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"skipped": f"redis-benchmark failed: {error[0]}", "command": shown}
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",...
    rps, avg_ms, _, p50_ms, _, p99_ms = (float(v) for v in rows[0][1:7])
    return {"command": shown, "requests": requests, "clients": 1, "rps": rps,
            "us_per_call": 1e6 / rps, "avg_latency_us": avg_ms * 1000, "p50_us": p50_ms * 1000,
            "p99_us": p99_ms * 1000, "server_cpu_us_per_call": server_cpu_us / requests}


async def _python_async(url: str, sha: str, calls: int, cpu: ServerCpu) -> dict[str, Any]:
    import redis
    import redis.asyncio

    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("prefix", "timeout")]
    client = redis.asyncio.Redis.from_url(urlunsplit(parts._replace(query=urlencode(query))),
                                          single_connection_client=True)
    try:
        for _ in range(max(50, calls // 10)):  # connect and warm up
            await client.evalsha(sha, 0)
        clock = time.perf_counter_ns
        cpu_before = cpu()
        start = clock()
        for _ in range(calls):
            await client.evalsha(sha, 0)
        elapsed = clock() - start
        server_cpu_us = cpu() - cpu_before
    finally:
        await client.aclose()
    try:
        import hiredis  # noqa: F401

        parser = "hiredis"
    except ImportError:
        parser = "pure-Python parser"
    return {"client": f"redis.asyncio {redis.__version__} ({parser}), one connection",
            "calls": calls, "us_per_call": elapsed / calls / 1000,
            "server_cpu_us_per_call": server_cpu_us / calls}


async def _lean_async(url: str, calls: int, cpu: ServerCpu, source: str = TRIVIAL_SCRIPT,
                      keys: tuple[str, ...] = (), args: tuple[str | int, ...] = ()) -> dict[str, Any]:
    """The same call on keystile's lean asyncio client: what a settle's round trip costs
    keystile before any script work, the floor of the exact path (with ``source``,
    ``keys`` and ``args``: that script's call instead)."""
    from keystile.stores._redis_lean import AVAILABLE, LeanClient, Script, target_from_url

    if not AVAILABLE:
        return {"skipped": "keystile's lean client needs hiredis"}
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("prefix", "timeout")]
    client = LeanClient(target_from_url(urlunsplit(parts._replace(query=urlencode(query))), 2.0))
    script = Script(source)
    try:
        for _ in range(max(50, calls // 10)):  # connect and warm up
            await client.evalsha(script, keys, args)
        clock = time.perf_counter_ns
        cpu_before = cpu()
        start = clock()
        for _ in range(calls):
            await client.evalsha(script, keys, args)
        elapsed = clock() - start
        server_cpu_us = cpu() - cpu_before
    finally:
        client.close()
    return {"client": "keystile's lean asyncio client (hiredis), one connection", "calls": calls,
            "us_per_call": elapsed / calls / 1000, "server_cpu_us_per_call": server_cpu_us / calls}


def reference(url: str, *, quick: bool, prefix: str | None = None) -> dict[str, Any]:
    """One EVALSHA of a trivial script, one connection, one call at a time; with
    ``prefix``, also keystile's settle script as the full case calls it (:func:`settle_call`),
    on states under ``prefix``."""
    client = sync_client(url)
    cpu = ServerCpu(url)
    try:
        sha = client.script_load(TRIVIAL_SCRIPT)
        server = client.info("server").get("redis_version")
        calls = 500 if quick else 5000
        requests = 2000 if quick else 20000
        found = {
            "url": public_url(url), "server": server, "script": TRIVIAL_SCRIPT, "sha": sha,
            "redis_benchmark": _redis_benchmark(url, sha, requests, cpu),
            "python_asyncio": asyncio.run(_python_async(url, sha, calls, cpu)),
            "keystile_lean": asyncio.run(_lean_async(url, calls, cpu)),
        }
        if prefix is not None:
            source, keys, args = settle_call(client, prefix)
            settle_sha = client.script_load(source)
            call = (str(len(keys)), *keys, *map(str, args))
            found["settle"] = {
                "what": "keystile's settle script as the full case calls it: one rate limit"
                        " and credits (canonical states), with a deadline",
                "redis_benchmark": _redis_benchmark(url, settle_sha, requests, cpu, call),
                "keystile_lean": asyncio.run(_lean_async(url, calls, cpu, source, keys, args)),
            }
        return found
    finally:
        client.close()
        cpu.close()


def settle_call(client: Any, prefix: str) -> tuple[str, tuple[str, ...], tuple[int, ...]]:
    """The settle script, KEYS and ARGV of the full case's verify (a limit and credits
    that never run out), on states of its own under ``prefix`` (the credits written)."""
    from keystile import RatelimitConfig
    from keystile._decide import LimitCheck, Plan
    from keystile.stores._redis_settle import LuaSettle, encode_state, state_redis_key

    huge = 10**12
    config = RatelimitConfig("requests", limit=huge, duration=60_000, auto_apply=True)
    plan = Plan("credits:reference", 1, (LimitCheck("rl:reference:requests:60000", config, 1),))
    settle = LuaSettle(client, prefix)
    now = int(time.time() * 1000)
    # A deadline the script checks (TIME, as on every settle) that a long run never passes.
    keys, args = settle.arguments(plan, now, int((time.time() + 86_400 * 365) * 1_000_000))
    client.set(state_redis_key(prefix, "credits:reference"),
               encode_state({"remaining": huge, "refill": None, "refilledAt": 0}))
    return LuaSettle.source(), tuple(keys), tuple(args)


def compare(reference: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Add each counted case's µs/req against the reference round trips, and what the
    round trips add: the full case's µs/req minus the cache hit's (same app, same key
    shape, no trip)."""
    bench_us = reference["redis_benchmark"].get("us_per_call")
    python_us = reference["python_asyncio"]["us_per_call"]
    lean_us = reference.get("keystile_lean", {}).get("us_per_call")
    entries = []
    for row in rows:
        if row.get("round_trips_per_req") is None:
            continue
        entries.append({
            "name": row["name"], "us_per_req": row["us_per_req"],
            "round_trips_per_req": row["round_trips_per_req"],
            "server_cpu_us_per_req": row["round_trips"].get("server_cpu_us_per_req"),
            "ratio_to_redis_benchmark": row["us_per_req"] / bench_us if bench_us else None,
            "ratio_to_python": row["us_per_req"] / python_us,
            "ratio_to_lean": row["us_per_req"] / lean_us if lean_us else None,
        })
    reference["cases"] = entries
    by_name = {row["name"]: row for row in rows}
    full, hit = by_name.get("starlette-keystile-redis-full"), by_name.get("starlette-keystile-redis-hit")
    if full and hit and full.get("round_trips_per_req") is not None:
        reference["added_by_round_trips"] = {
            "case": full["name"], "base": hit["name"], "us": full["us_per_req"] - hit["us_per_req"],
            "round_trips_per_req": full["round_trips_per_req"] - (hit["round_trips_per_req"] or 0)}
        floor = by_name.get("starlette-bare-redis-settle")
        if floor is not None:
            reference["exact_path_floor"] = {
                "case": full["name"], "floor": floor["name"], "us": full["us_per_req"],
                "floor_us": floor["us_per_req"], "ratio": full["us_per_req"] / floor["us_per_req"],
                "added_us": full["us_per_req"] - floor["us_per_req"]}
        settle = reference.get("settle", {})
        for tool in ("redis_benchmark", "keystile_lean"):
            one = settle.get(tool, {}).get("us_per_call")
            if one:
                added = reference["added_by_round_trips"]
                added[f"per_settle_{tool}"] = added["us"] / one
