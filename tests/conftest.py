"""Shared fixtures: a controllable clock, every store, and the Redis switch."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from keystile import Keystile

# 2026-03-15 12:00:00 UTC: mid-day, mid-month, so refills and windows are predictable.
T0 = 1_773_576_000_000


class Clock:
    """A clock in Unix ms that only moves when a test moves it."""

    def __init__(self, start: int = T0) -> None:
        self.ms = start

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store URL: one test body runs against each store (the contract suite)."""
    if request.param == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path / 'keys.db'}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'keys.db'}"


@pytest.fixture
def ks(store_url: str, clock: Clock) -> Iterator[Keystile]:
    keystile = Keystile(store_url, now=clock)
    yield keystile
    keystile.close()


def redis_answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server for tests: skipped without one, unless KEYSTILE_REQUIRE_REDIS=1."""
    url = os.environ.get("KEYSTILE_TEST_REDIS", "redis://127.0.0.1:6379/15")
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    if redis_answers(host, int(port or 6379)):
        return url
    if os.environ.get("KEYSTILE_REQUIRE_REDIS") == "1":
        pytest.fail(f"KEYSTILE_REQUIRE_REDIS=1 but no Redis answers at {url}")
    pytest.skip(f"no Redis at {url} (set KEYSTILE_REQUIRE_REDIS=1 to make this a failure)")
