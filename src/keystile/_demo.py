"""``keystile demo``: the main job on the embedded default, end to end.

It creates an API and keys with different limits in a SQLite file, serves the
example app (``examples/starlette_app.py``) on 127.0.0.1 with uvicorn, and prints
curl commands. With ``check=True`` it sends the requests itself, prints a table
of the answers and exits 0 only if each is the expected one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import uvicorn

from ._manage import Keystile
from ._models import Credits, RatelimitConfig, Refill

__all__ = ["run_demo"]


@dataclass(frozen=True)
class Probe:
    """One demo request and the status it must get."""

    label: str
    path: str
    key: str | None
    expected: int
    code: str


def _issue_keys(ks: Keystile) -> dict[str, str]:
    api = ks.create_api("demo", prefix="sk_demo")
    ks.create_role("admin", permissions=["admin", "docs.read"])
    keys = {
        "admin": ks.create_key(api.id, name="admin", roles=["admin"], external_id="acme"),
        "reader": ks.create_key(api.id, name="reader", permissions=["docs.read"]),
        "limited": ks.create_key(api.id, name="limited",
                                 ratelimits=[RatelimitConfig("requests", 3, 60_000, True)]),
        "credits": ks.create_key(api.id, name="credits",
                                 credits=Credits(2, Refill("daily", 2))),
        "disabled": ks.create_key(api.id, name="disabled", enabled=False),
    }
    return {name: created.key for name, created in keys.items()}


def _probes(keys: dict[str, str]) -> list[Probe]:
    unknown = "sk_demo_" + "1" * 22
    return [
        Probe("public route, no key", "/health", None, 200, "-"),
        Probe("valid key", "/hello", keys["admin"], 200, "VALID"),
        Probe("missing key", "/hello", None, 401, "MISSING_KEY"),
        Probe("unknown key", "/hello", unknown, 401, "NOT_FOUND"),
        Probe("malformed header", "/hello", "two words", 401, "MALFORMED_KEY"),
        Probe("admin route, admin key", "/admin/", keys["admin"], 200, "VALID"),
        Probe("admin route, reader key", "/admin/", keys["reader"], 403,
              "INSUFFICIENT_PERMISSIONS"),
        Probe("disabled key", "/hello", keys["disabled"], 403, "DISABLED"),
        *(Probe(f"rate limit 3/min, request {n}", "/hello", keys["limited"],
                200 if n <= 3 else 429, "VALID" if n <= 3 else "RATE_LIMITED") for n in range(1, 5)),
        *(Probe(f"2 credits, request {n}", "/hello", keys["credits"],
                200 if n <= 2 else 429, "VALID" if n <= 2 else "USAGE_EXCEEDED")
          for n in range(1, 4)),
    ]


def _free_port(host: str, preferred: int | None) -> int:
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind((host, port or 0))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError(f"no free port on {host}")


@contextlib.contextmanager
def _serving(server: uvicorn.Server) -> Iterator[None]:
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("the demo server did not start")
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _send(client: httpx.Client, probe: Probe) -> tuple[int, str]:
    headers = {"authorization": f"Bearer {probe.key}"} if probe.key else {}
    response = client.get(probe.path, headers=headers)
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        return response.status_code, str(response.json().get("code"))
    return response.status_code, "VALID" if probe.key else "-"


def _check(base_url: str, probes: list[Probe]) -> bool:
    rows, ok = [], True
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for probe in probes:
            status, code = _send(client, probe)
            good = status == probe.expected and code == probe.code
            ok = ok and good
            rows.append((probe.label, f"{status} {code}", f"{probe.expected} {probe.code}",
                         "ok" if good else "WRONG"))
    widths = [max(len(row[i]) for row in [("request", "got", "expected", ""), *rows]) for i in range(4)]
    for row in [("request", "got", "expected", ""), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"\n{'all answers as expected' if ok else 'SOME ANSWERS WERE WRONG'}")
    return ok


def _print_curls(base_url: str, keys: dict[str, str]) -> None:
    print(f"\nkeystile demo is serving {base_url} (Ctrl-C to stop). Try:\n")
    print(f"  curl -i {base_url}/hello -H 'Authorization: Bearer {keys['admin']}'")
    print(f"  curl -i {base_url}/admin/ -H 'Authorization: Bearer {keys['reader']}'   # 403")
    print(f"  curl -i {base_url}/hello -H 'Authorization: Bearer {keys['limited']}'  # 4th: 429")
    print(f"  curl -i {base_url}/hello -H 'Authorization: Bearer {keys['credits']}'  # 3rd: 429")
    print(f"  curl -i {base_url}/hello                                          # 401\n")


def run_demo(*, store: str | None, host: str, port: int | None, check: bool) -> int:
    """Run the demo; returns the exit status."""
    from keystile_examples.starlette_app import build_app

    with tempfile.TemporaryDirectory(prefix="keystile-demo-") as tmp:
        url = store or f"sqlite:///{os.path.join(tmp, 'keystile-demo.db')}"
        with Keystile(url) as ks:
            keys = _issue_keys(ks)
            print(f"store: {url}")
            port = _free_port(host, None if check else (port or 8000))
            config = uvicorn.Config(build_app(ks), host=host, port=port, log_level="warning",
                                    lifespan="off")
            server = uvicorn.Server(config)
            base_url = f"http://{host}:{port}"
            if check:
                with _serving(server):
                    return 0 if _check(base_url, _probes(keys)) else 1
            _print_curls(base_url, keys)
            server.run()
    return 0
