"""Shared fixtures: a controllable clock, every store, and the Redis switch."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from keystile import Keystile, MemoryStore, SQLiteStore, Store

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


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every store URL: one test body runs against each store (the contract suite).

    Redis tests share one database; each gets a key prefix of its own, removed after.
    """
    if request.param == "memory":
        yield "memory://"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}"
    else:
        yield request.getfixturevalue("redis_store_url")


@pytest.fixture
def redis_store_url(redis_url: str) -> Iterator[str]:
    """A store URL on the test Redis under a key prefix of this test's own, removed after."""
    prefix = f"kt{uuid.uuid4().hex[:12]}:"
    yield f"{redis_url}?prefix={prefix}"
    drop_redis_prefix(redis_url, prefix)


def drop_redis_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        names = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if names:
            client.delete(*names)
    finally:
        client.close()


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


# -- counting stores and a second Keystile on the same store (integration suites) ------

STORE_CALLS = (
    "get", "find", "scan", "insert", "replace", "delete", "transact", "read_states",
    "load_record", "load_keyspaces", "settle",
)


def counting(base: type[Store]) -> type[Store]:
    """A subclass of a real store that counts every call of a primitive or composite.

    ``store.calls`` is a Counter by method name; calls made inside another call
    (``load_record`` -> ``find``) are counted too, so ``total()`` is every access.
    """

    class Counting(base):  # type: ignore[valid-type, misc]
        def __init__(self, url: str, **options: Any) -> None:
            super().__init__(url, **options)
            self.calls: Counter[str] = Counter()
            self._calls_lock = threading.Lock()

        def count(self, name: str) -> None:
            if threading.current_thread().name == "keystile-analytics":
                return  # the analytics writer's batches are not what a verify costs
            with self._calls_lock:
                self.calls[name] += 1

        def total(self) -> int:
            return sum(self.calls.values())

        def native_async(self) -> None:
            return None  # every call through the counted methods (Redis: via a thread)

    def wrap(name: str) -> Callable[..., Any]:
        parent = getattr(base, name)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            self.count(name)
            return parent(self, *args, **kwargs)

        method.__name__ = name
        return method

    for name in STORE_CALLS:
        setattr(Counting, name, wrap(name))
    Counting.__name__ = Counting.__qualname__ = f"Counting{base.__name__}"
    return Counting


@pytest.fixture
def counting_store_class(store_url: str) -> type[Store]:
    """The counting subclass of the real store class that ``store_url`` names."""
    if store_url.startswith("redis"):
        from keystile.stores.redis import RedisStore

        return counting(RedisStore)
    return counting(MemoryStore if store_url.startswith("memory:") else SQLiteStore)


@pytest.fixture
def counting_store(counting_store_class: type[Store], store_url: str) -> Iterator[Any]:
    store = counting_store_class(store_url)
    yield store
    store.close()


@pytest.fixture
def same_store(ks: Keystile, store_url: str, clock: Clock) -> Iterator[Callable[..., Keystile]]:
    """Opens more Keystile objects on ``ks``'s store: the same object for memory://
    (a new MemoryStore would be empty), the same URL (a new connection) for SQLite."""
    opened: list[Keystile] = []

    def open_(**options: Any) -> Keystile:
        target: Store | str = ks.store if store_url.startswith("memory:") else store_url
        other = Keystile(target, now=options.pop("now", clock), **options)
        opened.append(other)
        return other

    yield open_
    for other in opened:
        if other.store is not ks.store:
            other.close()


# -- a private redis-server: for counting, and for killing, pausing and restarting -----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` of the test's own on a free port, with an append-only file so
    that a restart keeps what was written (as users must configure it).

    ``extra`` are more server options (``--requirepass``, TLS); ``ready`` tells when it
    answers (default: a plain PING on the port)."""

    def __init__(self, directory: Path, extra: Sequence[str] = (),
                 ready: Callable[[int], bool] | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.extra = list(extra)
        self.ready = ready or (lambda port: redis_answers(port=port))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("KEYSTILE_REQUIRE_REDIS") == "1":
                pytest.fail("KEYSTILE_REQUIRE_REDIS=1 but redis-server is not installed")
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory),
             *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.ready(self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.resume()
        server.kill()


# -- keystile serve in this process: for the remote backend's tests ---------------------------


class InProcessServe:
    """``keystile serve``'s app on uvicorn in a thread of this process, on a free port."""

    def __init__(self, ks: Keystile) -> None:
        import uvicorn

        from keystile.server import build_app

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(build_app(ks), host="127.0.0.1", port=self.port,
                                                    log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "keystile serve did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
