"""The Redis switch: tests that need Redis skip without one, unless CI requires it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import redis_answers

ROOT = Path(__file__).resolve().parent.parent


def test_if_redis_fixture_is_used_then_the_server_answers_ping(redis_url: str) -> None:
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    assert redis_answers(host, int(port))


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_fixture_test(require: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEYSTILE_REQUIRE_REDIS": require,
           "KEYSTILE_TEST_REDIS": f"redis://127.0.0.1:{_dead_port()}/0"}
    test = "tests/test_ci_switch.py::test_if_redis_fixture_is_used_then_the_server_answers_ping"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_if_redis_required_but_absent_then_the_run_fails() -> None:
    run = _run_fixture_test("1")
    assert run.returncode == 1, run.stdout
    assert "KEYSTILE_REQUIRE_REDIS=1 but no Redis answers" in run.stdout


def test_if_redis_absent_and_not_required_then_the_test_skips() -> None:
    run = _run_fixture_test("0")
    assert run.returncode == 0, run.stdout
    assert "1 skipped" in run.stdout
