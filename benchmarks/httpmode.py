"""``--mode http``: every case under uvicorn, loaded from a second process.

Each case gets its own server process (``python -m benchmarks.serve``) on a free
port of 127.0.0.1, pinned to one core when the machine has two or more; the load
generator (``python -m benchmarks.loadgen``) runs on another core and sends a
bounded number of requests per round (wrk: a bounded time per round). Rounds visit the cases in a new shuffled
order each time, as in-process.

The Redis cases' servers count their requests and round trips (see
:class:`RoundTripCounts`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .cases import Case, Target, needs_redis
from .checks import check
from .inprocess import Batch
from .redisbench import COUNTER_PATH, ServerCpu, redis_url

__all__ = ["run_http"]


@dataclass
class Server:
    case: Case
    process: subprocess.Popen[str]
    port: int
    target: Target
    round_trips: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.target.path}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_cpu() -> int | None:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return cores[-1] if len(cores) > 1 else None


def _pairs(items: Any) -> tuple[tuple[str, str], ...] | None:
    return None if items is None else tuple((str(k), str(v)) for k, v in items)


def _start(case: Case, workdir: Path, redis_prefix: Callable[[str], str]) -> Server:
    port = _free_port()
    command = [sys.executable, "-m", "benchmarks.serve", "--case", case.name, "--port", str(port),
               "--workdir", str(workdir / case.name)]
    if needs_redis(case):
        command += ["--redis-prefix", redis_prefix(case.name)]
    cpu = _server_cpu()
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"the server of {case.name!r} exited before it was ready")
    meta = json.loads(line)
    target = Target(None, _pairs(meta["headers"]) or (), _pairs(meta["wrong_headers"]),
                    missing_status=meta["missing_status"], wrong_status=meta["wrong_status"],
                    path=meta["path"])
    server = Server(case, process, port, target, bool(meta.get("round_trips")))
    _wait_listening(server)
    return server


def _wait_listening(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server of {server.case.name!r} exited")
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the server of {server.case.name!r} did not listen within {timeout} s")


async def _check_all(servers: Sequence[Server]) -> dict[str, str]:
    results = {}
    async with httpx.AsyncClient(timeout=30) as client:
        for server in servers:

            async def send(headers: Sequence[tuple[str, str]], server: Server = server) -> int:
                return (await client.get(server.url, headers=dict(headers))).status_code

            results[server.case.name] = await check(server.case.name, server.target, send)
    return results


class RoundTripCounts:
    """The Redis cases' round trips (the remote cases' forwards) over the timed rounds,
    counted by their servers.

    Each counting server counts the requests it served and the round trips they made
    (``redisbench.CountedApp``); the counts are read before the first round and after
    the last, once the server is idle (a load generator stopped by time may leave
    requests in flight). The Redis server's CPU time is read around each of the Redis
    cases' loads, when it alone loads Redis.
    """

    def __init__(self, servers: Sequence[Server]) -> None:
        self.names = {server.case.name for server in servers if server.round_trips}
        self.redis_names = {server.case.name for server in servers
                            if server.round_trips and needs_redis(server.case)}
        self.client = httpx.Client(timeout=30)
        self.server_cpu = ServerCpu(redis_url()) if self.redis_names else None
        self.start: dict[str, dict[str, int]] = {}
        self.cpu_us: dict[str, float] = dict.fromkeys(self.redis_names, 0.0)

    def _read(self, server: Server) -> dict[str, int]:
        answer: dict[str, int] = self.client.get(
            f"http://127.0.0.1:{server.port}{COUNTER_PATH}").json()
        return answer

    def _idle(self, server: Server, timeout: float = 5.0) -> dict[str, int]:
        counts = self._read(server)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.05)
            again = self._read(server)
            if again == counts:
                break
            counts = again
        return counts

    def begin(self, servers: Sequence[Server]) -> None:
        for server in servers:
            if server.case.name in self.names:
                self.start[server.case.name] = self._idle(server)

    def load(self, server: Server, run: Callable[[], Batch]) -> Batch:
        if self.server_cpu is None or server.case.name not in self.redis_names:
            return run()
        before = self.server_cpu()
        batch = run()
        self.cpu_us[server.case.name] += self.server_cpu() - before
        return batch

    def end(self, servers: Sequence[Server]) -> dict[str, dict[str, Any]]:
        counted = {}
        for server in servers:
            name = server.case.name
            if name not in self.names:
                continue
            after, before = self._idle(server), self.start[name]
            served, sent = after["requests"] - before["requests"], after["sent"] - before["sent"]
            counted[name] = {
                "sent": sent, "requests": served, "per_request": sent / served if served else None,
                "counted": "server-side, over the timed rounds"}
            if name in self.redis_names:
                counted[name]["server_cpu_us_per_req"] = self.cpu_us[name] / served if served else None
        return counted

    def close(self) -> None:
        self.client.close()
        if self.server_cpu is not None:
            self.server_cpu.close()


class LoadGenerator:
    """The second process; one JSON command in, one JSON result out."""

    def __init__(self, tool: str, concurrency: int, duration: float) -> None:
        self.tool = tool
        self.concurrency = concurrency
        self.duration = duration
        self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.loadgen"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def load(self, server: Server, requests: int, duration: float | None = None) -> Batch:
        assert self.process.stdin is not None and self.process.stdout is not None
        command = {"port": server.port, "path": server.target.path,
                   "headers": server.target.headers, "requests": requests,
                   "duration": self.duration if duration is None else duration,
                   "concurrency": self.concurrency, "tool": self.tool}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the load generator exited")
        out = json.loads(line)
        return Batch(out["requests"], out["elapsed_ns"], out["samples_ns"], out["bad"],
                     out.get("p50_us"), out.get("p99_us"))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=10)


def _stop(servers: Sequence[Server]) -> None:
    for server in servers:
        server.process.terminate()
    for server in servers:
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()


def run_http(
    cases: Sequence[Case], *, rounds: int, requests: int, warmup: int, concurrency: int,
    tool: str, duration: float, seed: int, workdir: Path, progress: Callable[[str], None],
    redis_prefix: Callable[[str], str],
) -> tuple[dict[str, list[Batch]], dict[str, str], dict[str, dict[str, Any]]]:
    """The batches, the checks and the counted round trips of every case;
    ``redis_prefix(case name)`` is the Redis key prefix of a Redis case's server."""
    servers: list[Server] = []
    loadgen = None
    counts = None
    try:
        for case in cases:
            progress(f"starting {case.name} under uvicorn")
            servers.append(_start(case, workdir, redis_prefix))
        checks = asyncio.run(_check_all(servers))
        loadgen = LoadGenerator(tool, concurrency, duration)
        for server in servers:
            loadgen.load(server, warmup, duration=1.0)
        counts = RoundTripCounts(servers)
        counts.begin(servers)
        results: dict[str, list[Batch]] = {server.case.name: [] for server in servers}
        rng = random.Random(seed)
        for number in range(rounds):
            rng.shuffle(servers)
            for server in servers:
                results[server.case.name].append(
                    counts.load(server, functools.partial(loadgen.load, server, requests)))
            progress(f"round {number + 1}/{rounds} done")
        return results, checks, counts.end(servers)
    finally:
        if counts is not None:
            counts.close()
        if loadgen is not None:
            loadgen.close()
        _stop(servers)
