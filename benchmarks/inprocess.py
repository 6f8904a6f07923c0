"""Driving the apps directly: one asyncio loop, a pre-built scope, no sockets.

ASGI apps are awaited with a copy of one scope, a ``receive`` that returns an empty
body and a ``send`` that only notes the status; WSGI apps are called with a copy
of one environ. Each request is timed with ``perf_counter_ns`` around the app call
alone; a batch's throughput is its request count over its wall time (the loop,
the scope copy and the timing included, the same for every case). A case whose
target counts round trips is wrapped in :class:`CountingRunner`: each batch then also
reports the Redis round trips its requests made.
"""

from __future__ import annotations

import gc
import io
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .cases import Case, Target

__all__ = ["AsgiRunner", "Batch", "CountingRunner", "Response", "Runner", "WsgiRunner",
           "make_runner", "run_rounds"]

Headers = Sequence[tuple[str, str]]
_EMPTY_BODY = {"type": "http.request", "body": b"", "more_body": False}


@dataclass
class Batch:
    """One case's share of one round: wall time, per-request times, bad answers."""

    requests: int
    elapsed_ns: int
    samples_ns: list[int]
    bad: int
    p50_us: float | None = None  # set when a tool (wrk) reports percentiles, not samples
    p99_us: float | None = None
    round_trips: int | None = None  # Redis round trips of the batch's requests, when counted
    server_cpu_us: float | None = None  # the Redis server's CPU time meanwhile, when read

    @property
    def rps(self) -> float:
        return self.requests / (self.elapsed_ns / 1e9)


@dataclass
class Response:
    status: int = 0
    body: bytearray = field(default_factory=bytearray)


class Runner(Protocol):
    name: str

    async def request(self, headers: Headers) -> Response: ...

    async def batch(self, count: int) -> Batch: ...


def _raw(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"testserver"), *((k.lower().encode(), v.encode()) for k, v in headers)]


class AsgiRunner:
    """Awaits an ASGI app; ``batch`` sends the valid request ``count`` times."""

    def __init__(self, name: str, target: Target) -> None:
        self.name = name
        self.app = target.app
        self.valid = self._scope(target.path, target.headers)
        self.bad = 0

    @staticmethod
    def _scope(path: str, headers: Headers) -> dict[str, Any]:
        return {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
            "raw_path": path.encode(), "root_path": "", "query_string": b"",
            "headers": _raw(headers), "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }

    async def request(self, headers: Headers) -> Response:
        response = Response()

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                response.status = message["status"]
            elif message["type"] == "http.response.body":
                response.body += message.get("body", b"")

        await self.app(self._scope(self.valid["path"], headers), _receive, send)
        return response

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            self.bad += 1

    async def batch(self, count: int) -> Batch:
        app, template, send, clock = self.app, self.valid, self._send, time.perf_counter_ns
        samples = [0] * count
        self.bad = 0
        start = clock()
        for i in range(count):
            scope = template.copy()
            t0 = clock()
            await app(scope, _receive, send)
            samples[i] = clock() - t0
        return Batch(count, clock() - start, samples, self.bad)


async def _receive() -> dict[str, Any]:
    return _EMPTY_BODY


class WsgiRunner:
    """Calls a WSGI app synchronously from the same loop."""

    def __init__(self, name: str, target: Target) -> None:
        self.name = name
        self.app = target.app
        self.path = target.path
        self.valid = self._environ(target.headers)
        self.status = ""

    def _environ(self, headers: Headers) -> dict[str, Any]:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET", "PATH_INFO": self.path, "SCRIPT_NAME": "",
            "QUERY_STRING": "", "SERVER_NAME": "testserver", "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "testserver",
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        }
        for name, value in headers:
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        return environ

    def _start_response(self, status: str, headers: Any, exc_info: Any = None) -> Callable[..., Any]:
        self.status = status
        return _ignore_write

    def _call(self, environ: dict[str, Any]) -> bytes:
        environ["wsgi.input"] = io.BytesIO(b"")
        result: Iterable[bytes] = self.app(environ, self._start_response)
        try:
            return b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    async def request(self, headers: Headers) -> Response:
        body = self._call(self._environ(headers))
        return Response(int(self.status.split()[0]), bytearray(body))

    async def batch(self, count: int) -> Batch:
        call, template, clock = self._call, self.valid, time.perf_counter_ns
        samples = [0] * count
        bad = 0
        start = clock()
        for i in range(count):
            environ = template.copy()
            t0 = clock()
            call(environ)
            samples[i] = clock() - t0
            bad += not self.status.startswith("200")
        return Batch(count, clock() - start, samples, bad)


def _ignore_write(data: bytes) -> None:
    pass


class CountingRunner:
    """Another runner whose batches count the Redis round trips their requests make
    (see :mod:`benchmarks.redisbench`; the counter is set in the batch's context), and
    with ``server_cpu`` (a clock of the server's CPU time, µs) what the server spent."""

    def __init__(self, runner: Runner, server_cpu: Callable[[], float] | None = None) -> None:
        self.runner = runner
        self.name = runner.name
        self.server_cpu = server_cpu

    async def request(self, headers: Headers) -> Response:
        return await self.runner.request(headers)

    async def batch(self, count: int) -> Batch:
        from .redisbench import ACTIVE, RoundTrips

        counter = RoundTrips()
        cpu_before = self.server_cpu() if self.server_cpu is not None else 0.0
        token = ACTIVE.set(counter)
        try:
            batch = await self.runner.batch(count)
        finally:
            ACTIVE.reset(token)
        batch.round_trips = counter.sent
        if self.server_cpu is not None:
            batch.server_cpu_us = self.server_cpu() - cpu_before
        return batch


def make_runner(case: Case, target: Target,
                server_cpu: Callable[[], float] | None = None) -> Runner:
    runner: Runner = AsgiRunner(case.name, target) if target.interface == "asgi" else WsgiRunner(
        case.name, target)
    return CountingRunner(runner, server_cpu) if target.round_trips else runner


async def run_rounds(
    runners: Sequence[Runner], *, rounds: int, requests: int, warmup: int, seed: int,
    progress: Callable[[str], None],
) -> dict[str, list[Batch]]:
    """Warm every case up, then ``rounds`` rounds of every case in a new shuffled order."""
    for runner in runners:
        await runner.batch(warmup)
    results: dict[str, list[Batch]] = {runner.name: [] for runner in runners}
    order = list(runners)
    rng = random.Random(seed)
    for number in range(rounds):
        rng.shuffle(order)
        for runner in order:
            gc.collect()  # no collection left over from the previous case lands in this one
            results[runner.name].append(await runner.batch(requests))
        progress(f"round {number + 1}/{rounds} done")
    return results
