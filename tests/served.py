"""``keystile serve`` as a real subprocess, for the tests that drive it over HTTP.

:class:`ServeProcess` runs it on a store and a port of its own; it can be killed
(SIGKILL, as a crash) and started again on the same port and store. Root keys come
from the real ``keystile rootkeys create`` command (:func:`keystile_cli`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from conftest import free_port
from unkey.py import Unkey
from unkey.py.utils import BackoffStrategy, RetryConfig

__all__ = [
    "NO_RETRIES",
    "ROOT_PERMISSIONS",
    "ServeProcess",
    "Served",
    "keystile_cli",
    "new_api",
    "served_on_sqlite",
    "serving",
    "unkey_client",
    "wait_until_live",
]

ROOT_PERMISSIONS = [
    "api.*.create_api", "api.*.read_api", "api.*.delete_api", "api.*.create_key", "api.*.read_key",
    "api.*.update_key", "api.*.delete_key", "api.*.verify_key", "rbac.*.create_permission",
    "rbac.*.read_permission", "rbac.*.create_role", "rbac.*.read_role",
    "rbac.*.add_permission_to_role", "identity.*.create_identity", "identity.*.read_identity",
    "identity.*.update_identity", "identity.*.delete_identity", "ratelimit.*.limit",
    "api.*.read_analytics",
]
NO_RETRIES = RetryConfig("none", BackoffStrategy(1, 1, 1, 1), False)


def keystile_cli(*argv: str) -> Any:
    """``python -m keystile <argv> --json``, its JSON answer."""
    done = subprocess.run([sys.executable, "-m", "keystile", *argv, "--json"], capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def wait_until_live(url: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"keystile serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v2/liveness", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"keystile serve did not answer in {timeout:g} s")


class ServeProcess:
    """``keystile serve --store <store>`` on 127.0.0.1 and a port that stays its own
    across restarts; its output (every run's) goes to ``log``."""

    def __init__(self, store: str, log: Path, port: int | None = None) -> None:
        self.store, self.log = store, log
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None  # of the last run that ended
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def remote_url(self) -> str:
        """The URL of keystile's remote backend for this server."""
        return f"unkey+http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None, "already running"
        self._log_file = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "keystile", "serve", "--store", self.store, "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"],
            stdout=self._log_file, stderr=subprocess.STDOUT)
        try:
            wait_until_live(self.url, self.process)
        except BaseException:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash, mid-run, with no shutdown."""
        self._end(graceful=False)

    def stop(self) -> None:
        self._end(graceful=True)

    def _end(self, *, graceful: bool) -> None:
        process, self.process = self.process, None
        if process is not None:
            if graceful:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            else:
                process.kill()
                process.wait()
            self.returncode = process.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Served:
    """A running server and a root key for it."""

    def __init__(self, server: ServeProcess, root_key: str) -> None:
        self.server, self.root_key = server, root_key

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def store(self) -> str:
        return self.server.store

    @property
    def remote_url(self) -> str:
        return self.server.remote_url

    def client(self, root_key: str | None = None) -> Unkey:
        return Unkey(root_key=root_key or self.root_key, server_url=self.url, retry_config=NO_RETRIES,
                     timeout_ms=10_000)


@contextmanager
def serving(store: str, directory: Path, permissions: list[str] = ROOT_PERMISSIONS) -> Iterator[Served]:
    """A root key made by ``keystile rootkeys create`` and ``keystile serve`` on ``store``;
    stopped after, and its output checked: no traceback, never the root key."""
    root = keystile_cli("rootkeys", "create", "--store", store, "--name", "tests",
                        *(arg for p in permissions for arg in ("--permission", p)))
    server = ServeProcess(store, directory / "serve.log")
    server.start()
    try:
        yield Served(server, root["key"])
    finally:
        server.stop()
    output = server.output()
    assert root["key"] not in output and "Traceback" not in output, output
    # SIGTERM is a graceful stop: uvicorn drains, the store is closed, the exit is clean.
    assert server.returncode == 0, (server.returncode, output)


def served_on_sqlite(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Served]:
    """The body of a module-scoped fixture: ``keystile serve`` on a SQLite file of its own."""
    directory: Path = tmp_path_factory.mktemp(name)
    with serving(f"sqlite:///{directory / 'keys.db'}", directory) as running:
        yield running


def unkey_client(served: Served) -> Iterator[Unkey]:
    """The body of a fixture: unkey-py pointed at the server, closed after."""
    with served.client() as client:
        yield client


def new_api(unkey: Unkey, prefix: str) -> str:
    """An API created through unkey-py whose first key fixes its ``prefix``."""
    api_id: str = unkey.apis.create_api(name=f"api {prefix}").data.api_id
    unkey.keys.create_key(api_id=api_id, prefix=prefix)  # the first key fixes the API's prefix
    return api_id
