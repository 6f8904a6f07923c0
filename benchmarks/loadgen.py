"""The load generator of ``--mode http``: a second process that the harness drives.

It reads one JSON command per line on stdin and answers one JSON line on stdout:
``{"port", "path", "headers", "requests", "duration", "concurrency", "tool"}`` (and
optionally ``"method"`` and ``"body"``, a string: GET without a body by default) ->
``{"requests", "elapsed_ns", "samples_ns" | "p50_us"/"p99_us", "bad", "tool"}``.
``tool`` is ``"builtin"``: raw asyncio sockets, ``concurrency`` keep-alive
connections each sending its next request when the previous answer is read, until
``requests`` answers came back; or ``"wrk"`` (one thread, ``concurrency``
connections), which is bounded by time, not by count: it runs ``duration`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "run_builtin", "run_wrk"]

_WRK_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format(
    '\\n{"requests": %d, "duration_us": %d, "p50_us": %.2f, "p99_us": %.2f, "bad": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout))
end
"""


def _request_bytes(port: int, path: str, headers: Sequence[Sequence[str]], method: str = "GET",
                   body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method != "GET":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        await reader.readexactly(int(lower[at + 17:end]))
    elif b"transfer-encoding: chunked" in lower:
        await _read_chunked(reader)
    return status


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


async def run_builtin(port: int, path: str, headers: Sequence[Sequence[str]], requests: int,
                      concurrency: int, method: str = "GET", body: bytes = b"") -> dict[str, Any]:
    payload = _request_bytes(port, path, headers, method, body)
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
    remaining = [requests]
    samples: list[int] = []
    bad = [0]
    clock = time.perf_counter_ns

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            start = clock()
            writer.write(payload)
            status = await _read_response(reader)
            samples.append(clock() - start)
            bad[0] += status != 200

    start = clock()
    await asyncio.gather(*(worker(r, w) for r, w in connections))
    elapsed = clock() - start
    for _, writer in connections:
        writer.close()
    return {"requests": requests, "elapsed_ns": elapsed, "samples_ns": samples, "bad": bad[0],
            "tool": "builtin"}


def run_wrk(port: int, path: str, headers: Sequence[Sequence[str]], duration: float,
            concurrency: int, method: str = "GET", body: bytes = b"") -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if method != "GET" or body:
            script.write(f"wrk.method = {json.dumps(method)}\n")
            script.write(f"wrk.body = {_lua_string(body.decode('utf-8'))}\n")
        script.write(_WRK_SCRIPT)
    try:
        command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency",
                   "-s", script.name]
        for name, value in headers:
            command += ["-H", f"{name}: {value}"]
        command.append(f"http://127.0.0.1:{port}{path}")
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    summary = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    return {"requests": summary["requests"], "elapsed_ns": summary["duration_us"] * 1000,
            "samples_ns": [], "p50_us": summary["p50_us"], "p99_us": summary["p99_us"],
            "bad": summary["bad"], "tool": "wrk"}


def _lua_string(text: str) -> str:
    """``text`` as a Lua long string, with a level of ``=`` that it does not contain."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def _handle(command: dict[str, Any]) -> dict[str, Any]:
    where = (command["port"], command["path"], command["headers"])
    request = (command.get("method", "GET"), command.get("body", "").encode("utf-8"))
    if command["tool"] == "wrk":
        return run_wrk(*where, command["duration"], command["concurrency"], *request)
    return asyncio.run(run_builtin(*where, command["requests"], command["concurrency"], *request))


def main() -> int:
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # the server has another core
    for line in sys.stdin:
        print(json.dumps(_handle(json.loads(line))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
