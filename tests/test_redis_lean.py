"""The Redis store under asyncio: the lean client (``keystile.stores._redis_lean``).

Every test runs against a real ``redis-server`` (the shared one, or a private one it
can pause, kill, restart, or start with a password or TLS). Round trips are counted
where they are written, on ``LeanConnection.send_packed_command``, as the benchmark
harness counts them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import multiprocessing
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from keystile import (
    Code,
    Keystile,
    RatelimitConfig,
    StoreUnavailableError,
    Verifier,
)
from keystile.stores._redis_lean import LeanConnection
from keystile.stores.redis import RedisStore
from tests.conftest import Clock, RedisServer, free_port

pytestmark = pytest.mark.redis


class Sends:
    """Writes of every lean connection while counting (one write is one round trip)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = LeanConnection.send_packed_command

        def counting(connection: LeanConnection, command: bytes, check_health: bool = True) -> None:
            self.count += 1
            original(connection, command, check_health)

        monkeypatch.setattr(LeanConnection, "send_packed_command", counting)

    async def during(self, work: Callable[[], Any]) -> int:
        before = self.count
        await work()
        return self.count - before


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> Sends:
    return Sends(monkeypatch)


def full_key(ks: Keystile, api_id: str, credits: int = 100, limit: int = 1000) -> str:
    return ks.create_key(api_id, permissions=["read"], credits=credits, ratelimits=[
        RatelimitConfig("requests", limit=limit, duration=60_000, auto_apply=True)]).key


def clients_of(url: str) -> int:
    """How many normal (not pub/sub) connections the server has, this one's excluded."""
    admin = redis.Redis.from_url(url)
    try:
        return sum(1 for c in admin.client_list() if "P" not in c["flags"]) - 1
    finally:
        admin.close()


# -- round trips ----------------------------------------------------------------------------


async def test_if_a_key_is_verified_under_asyncio_then_a_hit_costs_none_and_a_settle_one_round_trip(
    redis_store_url: str, clock: Clock, sends: Sends,
) -> None:
    ks = Keystile(redis_store_url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    plain = ks.create_key(api.id, permissions=["read"]).key
    full = full_key(ks, api.id)
    verifier = ks.verifier
    assert (await verifier.verify_async(plain)).valid and (await verifier.verify_async(full)).valid

    async def hits() -> None:
        for _ in range(20):
            assert (await verifier.verify_async(plain, permissions="read")).valid

    async def settles() -> None:
        for _ in range(20):
            assert (await verifier.verify_async(full, permissions="read")).valid

    assert await sends.during(hits) == 0
    assert await sends.during(settles) == 20
    result = await verifier.verify_async(full)
    assert (result.credits, result.ratelimits[0].remaining) == (100 - 22, 1000 - 22)
    ks.close()


async def test_if_the_cache_is_off_then_a_verify_reads_the_key_in_one_round_trip_and_settles_in_another(
    redis_store_url: str, clock: Clock, sends: Sends,
) -> None:
    ks = Keystile(redis_store_url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    ks.create_role("reader", permissions=["docs.read"])
    ks.create_identity("acme", meta={"plan": "pro"})
    plain = ks.create_key(api.id, external_id="acme", roles=["reader"]).key
    full = full_key(ks, api.id)
    verifier = Verifier(redis_store_url, now=clock, cache_ttl=0)
    assert (await verifier.verify_async(plain)).valid  # the keyspace map, the connection
    assert (await verifier.verify_async(full)).valid  # and the clock offset (TIME, once a minute)

    async def plain_misses() -> None:
        for _ in range(10):
            result = await verifier.verify_async(plain, permissions="docs.read")
            assert result.valid and result.identity is not None
            assert result.identity.meta == {"plan": "pro"}

    async def full_misses() -> None:
        for _ in range(10):
            assert (await verifier.verify_async(full)).valid

    assert await sends.during(plain_misses) == 10
    assert await sends.during(full_misses) == 20
    verifier.close()
    ks.close()


async def test_if_the_scripts_are_flushed_then_one_write_loads_and_runs_the_script_again(
    private_redis: RedisServer, clock: Clock, sends: Sends,
) -> None:
    ks = Keystile(private_redis.url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    key = full_key(ks, api.id, credits=10)
    assert (await ks.verifier.verify_async(key)).credits == 9
    admin = redis.Redis.from_url(private_redis.url)
    admin.script_flush()
    admin.config_resetstat()

    async def one() -> None:
        assert (await ks.verifier.verify_async(key)).credits == 8

    assert await sends.during(one) == 2  # EVALSHA (NOSCRIPT), then SCRIPT LOAD + EVALSHA
    assert await sends.during(lambda: ks.verifier.verify_async(key)) == 1
    assert (await ks.verifier.verify_async(key)).credits == 6
    stats = admin.info("commandstats")
    assert stats["cmdstat_script|load"]["calls"] == 1
    assert stats["cmdstat_evalsha"]["calls"] == 4
    admin.close()
    ks.close()


async def test_if_many_verifies_run_at_once_on_one_loop_then_they_share_one_connection_and_spend_exactly(
    private_redis: RedisServer, clock: Clock, sends: Sends,
) -> None:
    ks = Keystile(private_redis.url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    key = full_key(ks, api.id, credits=151, limit=10_000)
    assert (await ks.verifier.verify_async(key)).valid
    before = clients_of(private_redis.url)

    async def burst() -> None:
        results = await asyncio.gather(*(ks.verifier.verify_async(key) for _ in range(200)))
        assert Counter(r.code for r in results) == {Code.VALID: 150, Code.USAGE_EXCEEDED: 50}
        # Pipelined, answered in order: each verify got its own reply.
        valid = sorted(r.credits or 0 for r in results if r.code is Code.VALID)
        assert valid == list(range(150))

    assert await sends.during(burst) == 200
    assert clients_of(private_redis.url) == before  # no new connection for the burst
    ks.close()


# -- faults ---------------------------------------------------------------------------------


async def test_if_redis_is_paused_then_every_waiting_verify_fails_within_the_timeout_and_takes_nothing(
    private_redis: RedisServer, clock: Clock,
) -> None:
    ks = Keystile(private_redis.url + "?timeout=0.3", now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    key = full_key(ks, api.id, credits=10)
    assert (await ks.verifier.verify_async(key)).credits == 9
    private_redis.pause()
    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(*(ks.verifier.verify_async(key) for _ in range(3)),
                                        return_exceptions=True)
        waited = time.monotonic() - started
    finally:
        private_redis.resume()
    assert all(isinstance(o, StoreUnavailableError) for o in outcomes), outcomes
    assert 0.25 < waited < 2.0
    deadline = time.monotonic() + 5
    while True:  # the next call reconnects
        try:
            result = await ks.verifier.verify_async(key)
            break
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "no recovery after the pause"
            await asyncio.sleep(0.05)
    # The three settles reached Redis after their deadline: they took nothing.
    assert result.credits == 8
    ks.close()


async def test_if_redis_is_killed_and_restarted_then_asyncio_verifies_fail_fast_and_then_reconnect(
    private_redis: RedisServer, clock: Clock,
) -> None:
    ks = Keystile(private_redis.url + "?timeout=0.3", now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    key = full_key(ks, api.id, credits=10)
    assert [(await ks.verifier.verify_async(key)).credits for _ in range(2)] == [9, 8]
    private_redis.kill()
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await ks.verifier.verify_async(key)
        assert time.monotonic() - started < 1.0
    private_redis.start()  # same port, same append-only file
    deadline = time.monotonic() + 5
    while True:
        try:
            result = await ks.verifier.verify_async(key)
            break
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "no recovery after the restart"
            await asyncio.sleep(0.05)
    assert result.credits == 7
    ks.close()


async def test_if_redis_is_unreachable_then_an_asyncio_verify_raises_store_unavailable() -> None:
    verifier = Verifier(f"redis://127.0.0.1:{free_port()}/0?timeout=0.2")
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        await verifier.store.native_async().load_record("x")  # type: ignore[union-attr]
    assert time.monotonic() - started < 1.0
    verifier.close()


async def test_if_a_waiting_verify_is_cancelled_then_the_next_ones_still_get_their_own_replies(
    redis_store_url: str, clock: Clock,
) -> None:
    ks = Keystile(redis_store_url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    key = full_key(ks, api.id, credits=1000)
    assert (await ks.verifier.verify_async(key)).credits == 999
    for _ in range(20):
        task = asyncio.ensure_future(ks.verifier.verify_async(key))
        await asyncio.sleep(0)  # written, not answered
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # A cancelled verify may or may not have been settled on the server; the replies
    # that follow are each the right one's: credits keep falling by one per verify.
    first = (await ks.verifier.verify_async(key)).credits
    assert first is not None
    after = [(await ks.verifier.verify_async(key)).credits for _ in range(5)]
    assert after == [first - 1 - i for i in range(5)]
    ks.close()


async def test_if_a_record_is_large_then_its_reply_is_read_across_many_packets(
    redis_store_url: str, clock: Clock,
) -> None:
    ks = Keystile(redis_store_url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    meta = {f"field{i}": "x" * 1000 for i in range(300)}  # ~300 kB of JSON
    key = ks.create_key(api.id, meta=meta).key
    verifier = Verifier(redis_store_url, now=clock, cache_ttl=0)
    results = await asyncio.gather(*(verifier.verify_async(key) for _ in range(5)))
    assert all(r.valid and r.meta == meta for r in results)
    verifier.close()
    ks.close()


# -- the URL: password, user, database, TLS; other event loops; fork ----------------------


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[RedisServer]:
    def ready(port: int) -> bool:
        try:
            return bool(redis.Redis(port=port, password="s3cret", socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    server = RedisServer(tmp_path, ["--requirepass", "s3cret"], ready)
    server.start()
    admin = redis.Redis(port=server.port, password="s3cret")
    admin.acl_setuser("alice", enabled=True, passwords=["+wonderland"], keys=["*"], channels=["*"],
                      commands=["+@all"])
    admin.close()
    yield server
    server.kill()


@pytest.mark.parametrize("credentials", [":s3cret", "alice:wonderland"])
async def test_if_the_url_has_credentials_and_a_database_then_the_lean_client_uses_them(
    password_redis: RedisServer, clock: Clock, credentials: str,
) -> None:
    url = f"redis://{credentials}@127.0.0.1:{password_redis.port}/3?client_name=ks-lean"
    ks = Keystile(url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    key = full_key(ks, api.id, credits=5)
    verifier = Verifier(url, now=clock, cache_ttl=0)
    assert [(await verifier.verify_async(key)).credits for _ in range(2)] == [4, 3]
    admin = redis.Redis(port=password_redis.port, password="s3cret", db=3)
    assert admin.dbsize() > 0  # everything went to database 3
    me = admin.client_id()
    assert {c["name"] for c in admin.client_list() if int(c["id"]) != me} == {"ks-lean"}  # lean's too
    admin.close()
    wrong = Verifier(f"redis://:nope@127.0.0.1:{password_redis.port}/3?timeout=0.3", now=clock)
    with pytest.raises(StoreUnavailableError, match="connecting"):
        await wrong.store.native_async().load_record("x")  # type: ignore[union-attr]
    wrong.close()
    verifier.close()
    ks.close()


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1 and localhost: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("keystile test CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, Path]]:
    ca, cert, key = _certificates(tmp_path)
    context = ssl.create_default_context(cafile=str(ca))

    def ready(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    server = RedisServer(tmp_path, [], ready)
    server.extra = ["--port", "0", "--tls-port", str(server.port), "--tls-cert-file", str(cert),
                    "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
    server.start()
    yield server, ca
    server.kill()


async def test_if_the_url_is_rediss_then_the_lean_client_speaks_tls_and_checks_the_certificate(
    tls_redis: tuple[RedisServer, Path], clock: Clock, tmp_path: Path,
) -> None:
    server, ca = tls_redis
    url = f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={ca}&timeout=1"
    ks = Keystile(url, now=clock)  # the blocking client: TLS through redis-py
    api = ks.create_api("shop", prefix="sk_shop")
    key = full_key(ks, api.id, credits=5)
    verifier = Verifier(url, now=clock, cache_ttl=0)
    assert [(await verifier.verify_async(key)).credits for _ in range(3)] == [4, 3, 2]
    verifier.close()
    # Another CA did not sign the server's certificate: no connection, and no hang.
    (tmp_path / "other").mkdir()
    other_ca, _, _ = _certificates(tmp_path / "other")
    untrusting = Verifier(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={other_ca}&timeout=1",
                          now=clock)
    with pytest.raises(StoreUnavailableError, match="cannot connect"):
        await untrusting.store.native_async().load_record("x")  # type: ignore[union-attr]
    untrusting.close()
    ks.close()


def test_if_verified_under_uvloop_then_the_lean_client_serves_it(redis_store_url: str, clock: Clock) -> None:
    uvloop = pytest.importorskip("uvloop")
    ks = Keystile(redis_store_url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    key = full_key(ks, api.id, credits=5)
    verifier = Verifier(redis_store_url, now=clock, cache_ttl=0)

    async def verify() -> list[int | None]:
        return [(await verifier.verify_async(key)).credits for _ in range(3)]

    assert uvloop.run(verify()) == [4, 3, 2]
    assert uvloop.run(verify()) == [1, 0, 0]  # a new loop, a new connection
    verifier.close()
    ks.close()


def _child_spends(verifier: Verifier, key: str, results: Any) -> None:
    async def spend() -> list[int | None]:
        return [(await verifier.verify_async(key)).credits for _ in range(5)]

    try:
        store = verifier.store
        assert isinstance(store, RedisStore) and store._native is not None
        inherited = len(store._native._clients._clients)  # the parent's: forgotten at the fork
        results.put((inherited, asyncio.run(spend())))
    except BaseException as exc:
        results.put(repr(exc))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork with threads running
def test_if_the_process_forks_then_the_child_opens_asyncio_connections_of_its_own(
    private_redis: RedisServer,
) -> None:
    ks = Keystile(private_redis.url)
    api = ks.create_api("shop", prefix="sk_shop")
    key = full_key(ks, api.id, credits=100)
    verifier = Verifier(private_redis.url, cache_ttl=0)
    loop = asyncio.new_event_loop()  # the parent's loop stays open, its connection too
    try:
        assert loop.run_until_complete(verifier.verify_async(key)).credits == 99
        store = verifier.store
        assert isinstance(store, RedisStore) and store._native is not None
        assert len(store._native._clients._clients) == 1
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(target=_child_spends, args=(verifier, key, results))
        child.start()
        spent = results.get(timeout=30)
        child.join(10)
        assert spent == (0, [98, 97, 96, 95, 94]), spent
        assert loop.run_until_complete(verifier.verify_async(key)).credits == 93
    finally:
        verifier.close()
        loop.run_until_complete(asyncio.sleep(0.01))  # the close runs on the loop
        loop.close()
        ks.close()
