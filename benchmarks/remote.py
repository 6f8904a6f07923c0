"""What the remote cases need: a ``keystile serve`` of the run's own, forwards counted,
and the server's own ``keys.verifyKey`` throughput to compare with.

- **The server**: ``python -m keystile serve`` (uvicorn, one process) on a free port of
  127.0.0.1, its store a SQLite file in the run's work directory holding the bench
  API and keys, and a root key made by ``keystile rootkeys create --permission
  api.*.verify_key``. It starts on first use and stops when the fixture closes.
  Without uvicorn the cases are skipped with the reason, as a peer that is not
  installed.
- **Forwards, counted where they are sent**: one ``send`` of an httpx client (the
  remote backend's ``POST /v2/keys.verifyKey``) made while a case serves its timed
  requests is one, counted like the Redis round trips (:data:`redisbench.ACTIVE`).
  A cache hit makes none; a key with credits one per request.
- **The reference**: the server driven by the load generator (wrk when installed,
  else the builtin one) with the very ``keys.verifyKey`` request each case sends,
  at one connection (what a request waits for when it is forwarded alone) and at
  ``--concurrency`` connections (what the server can take), checked first: the
  answer must be ``VALID``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from keystile import VerifyRequest
from keystile._remote import _body

from .redisbench import ACTIVE, wrapping
from .stats import percentiles

__all__ = ["RemoteServer", "compare", "counting_forwards", "reference", "start"]

VERIFY_PATH = "/v2/keys.verifyKey"
ROOT_PERMISSIONS = ("api.*.verify_key",)


@dataclass
class RemoteServer:
    """A running ``keystile serve``, the keys in its store, and a root key for it."""

    process: subprocess.Popen[bytes]
    port: int
    store: str
    root_key: str
    prefix: str
    key: str  # no credits, no limits: its VALID answer is cached by the remote backend
    full_key: str  # permissions, credits and an auto-applied rate limit: forwarded every time
    permission_query: str
    log: Path
    _log_file: IO[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_url(self) -> str:
        """``store=`` of the middleware: the remote backend on this server."""
        return f"unkey+http://127.0.0.1:{self.port}?prefixes={self.prefix}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()
        output = self.log.read_text(errors="replace")
        if "Traceback" in output:
            print(f"keystile bench: keystile serve logged an error:\n{output[-2000:]}", file=sys.stderr)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _root_key(store: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "keystile", "rootkeys", "create", "--store", store, "--name", "bench",
         *(arg for p in ROOT_PERMISSIONS for arg in ("--permission", p)), "--json"],
        capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"keystile rootkeys create failed: {done.stderr.strip()}")
    key: str = json.loads(done.stdout)["key"]
    return key


def start(store: str, workdir: Path, *, prefix: str, key: str, full_key: str,
          permission_query: str, timeout: float = 30.0) -> RemoteServer:
    """``keystile serve`` on ``store`` (which holds ``key`` and ``full_key``), once it
    answers its liveness probe."""
    root_key = _root_key(store)
    port = _free_port()
    log = workdir / f"keystile-serve-{port}.log"
    log_file = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "keystile", "serve", "--store", store, "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"], stdout=log_file, stderr=subprocess.STDOUT)
    server = RemoteServer(process, port, store, root_key, prefix, key, full_key, permission_query,
                          log, log_file)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"keystile serve did not start on port {port}:"
                               f" {log.read_text(errors='replace')[-1000:]}")
        try:
            if httpx.get(f"{server.url}/v2/liveness", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)


# -- forwards, counted --------------------------------------------------------------------------


def _counting_sync(original: Callable[..., httpx.Response]) -> Callable[..., httpx.Response]:
    @functools.wraps(original)
    def send(self: Any, request: httpx.Request, **options: Any) -> httpx.Response:
        counter = ACTIVE.get()
        if counter is not None:
            counter.sent += 1
        return original(self, request, **options)

    return send


def _counting_async(
    original: Callable[..., Awaitable[httpx.Response]],
) -> Callable[..., Awaitable[httpx.Response]]:
    @functools.wraps(original)
    async def send(self: Any, request: httpx.Request, **options: Any) -> httpx.Response:
        counter = ACTIVE.get()
        if counter is not None:
            counter.sent += 1
        return await original(self, request, **options)

    return send


@contextmanager
def counting_forwards() -> Iterator[None]:
    """Count every request an httpx client sends while inside (see the module doc)."""
    with wrapping("send", [(httpx.Client, _counting_sync), (httpx.AsyncClient, _counting_async)]):
        yield


# -- the reference: the server's own verify ------------------------------------------------------


def _bodies(server: RemoteServer) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, what it stands for, body): the requests the remote backend sends."""
    full = _body(server.full_key, VerifyRequest(permissions=server.permission_query))
    return [
        ("full key", "permission query + credits + rate limit: what remote-forwarded sends on"
                     " every request", full),
        ("plain key", "no credits or limits: what remote-hit sends once per cache_ttl",
         _body(server.key, VerifyRequest())),
    ]


def _headers(server: RemoteServer) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {server.root_key}"), ("content-type", "application/json")]


def _check(server: RemoteServer, body: dict[str, Any]) -> None:
    answer = httpx.post(server.url + VERIFY_PATH, json=body, headers=dict(_headers(server)), timeout=10)
    code = answer.json().get("data", {}).get("code") if answer.status_code == 200 else None
    if code != "VALID":
        raise RuntimeError(f"keystile serve answered {answer.status_code} {answer.text[:200]} to the"
                           " reference request; it would not measure a verify")


def _load(server: RemoteServer, body: bytes, *, tool: str, concurrency: int, requests: int,
          duration: float) -> dict[str, Any]:
    from .loadgen import run_builtin, run_wrk

    headers = _headers(server)
    if tool == "wrk":
        return run_wrk(server.port, VERIFY_PATH, headers, duration, concurrency, method="POST", body=body)
    return asyncio.run(run_builtin(server.port, VERIFY_PATH, headers, requests, concurrency,
                                   method="POST", body=body))


def reference(server: RemoteServer, *, tool: str, concurrency: int, requests: int,
              duration: float) -> dict[str, Any]:
    """The server's ``keys.verifyKey`` throughput with each body, at 1 and ``concurrency``
    connections (builtin: ``requests`` requests; wrk: ``duration`` seconds)."""
    measured = []
    for label, stands_for, body in _bodies(server):
        _check(server, body)
        raw = json.dumps(body, separators=(",", ":")).encode()
        _load(server, raw, tool="builtin", concurrency=1, requests=max(20, requests // 10), duration=0)
        for connections in sorted({1, concurrency}):
            out = _load(server, raw, tool=tool, concurrency=connections, requests=requests,
                        duration=duration)
            rps = out["requests"] / (out["elapsed_ns"] / 1e9)
            if out.get("samples_ns"):
                p50, p99 = percentiles([ns / 1000 for ns in out["samples_ns"]], (50, 99))
            else:
                p50, p99 = out["p50_us"], out["p99_us"]
            measured.append({
                "key": label, "what": stands_for,
                "body": {**body, "key": f"<{label}>"}, "concurrency": connections,
                "requests": out["requests"], "rps": rps, "us_per_req": 1e6 / rps, "p50_us": p50,
                "p99_us": p99, "bad": out["bad"]})
    return {"server": f"keystile serve (uvicorn, one process) on {server.store}",
            "url": server.url + VERIFY_PATH, "loadgen": tool, "measured": measured}


def compare(reference: dict[str, Any], rows: list[dict[str, Any]], *, concurrency: int) -> None:
    """Each remote case against the server's own verify of the key it sends, at the
    concurrency the case ran at (in-process: one request at a time)."""
    by_key = {(m["key"], m["concurrency"]): m for m in reference["measured"]}
    entries = []
    for row in rows:
        key = "full key" if row["name"].endswith("-forwarded") else "plain key"
        server = by_key.get((key, concurrency))
        entries.append({
            "name": row["name"], "us_per_req": row["us_per_req"],
            "forwards_per_req": row["round_trips_per_req"], "key": key, "concurrency": concurrency,
            "server_us_per_req": server["us_per_req"] if server else None,
            "ratio_to_server": row["us_per_req"] / server["us_per_req"] if server else None})
    reference["cases"] = entries
