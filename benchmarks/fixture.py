"""The keys and stores the cases share, built lazily (each process builds its own).

In ``--mode http`` every server process builds the fixture for its one case, so a
``memory://`` store and its keys live in the process that serves them. The Redis
store lives under a key prefix of the run's own (a sub-prefix per server process in
``--mode http``), and :meth:`Fixture.close` deletes every key under it. The remote
cases' ``keystile serve`` (a SQLite store of its own in ``workdir``) is started on
first use and stopped by :meth:`Fixture.close`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keystile import Credits, Keystile, RatelimitConfig, Verifier

from . import redisbench

if TYPE_CHECKING:
    from .remote import RemoteServer

__all__ = ["PERMISSION_QUERY", "PREFIX", "Fixture", "KeystileSetup", "wrong_key"]

PREFIX = "sk_bench"
PERMISSION_QUERY = "read AND (write OR admin)"
HUGE = 10**12  # credits and a rate limit that a benchmark never runs out of


@dataclass(frozen=True)
class KeystileSetup:
    """One store with an API and three keys: plain, with permissions, and "full".

    The full key has the permissions, a huge number of credits and an auto-applied
    rate limit with a huge limit, so a verify checks all three and settles the
    credits and the limit in the store on every request.
    """

    ks: Keystile
    url: str
    key: str
    perm_key: str
    full_key: str
    api_id: str


def wrong_key(key: str) -> str:
    """A key of the same shape and prefix that no store holds."""
    prefix, _, random_part = key.rpartition("_")
    flipped = "2" if random_part[-1] != "2" else "3"
    return f"{prefix}_{random_part[:-1]}{flipped}"


def _full(lease: int | None = None) -> dict[str, Any]:
    """The options of a "full" key; ``lease`` > 0 puts it in leased mode."""
    return {"permissions": ["read", "write"], "credits": Credits(HUGE), "lease": lease,
            "ratelimits": [RatelimitConfig("requests", limit=HUGE, duration=60_000,
                                           auto_apply=True)]}


class Fixture:
    """Stores and keys, created on first use under ``workdir`` (Redis: ``redis_prefix``)."""

    def __init__(self, workdir: Path, *, redis_prefix: str | None = None) -> None:
        self.workdir = workdir
        self.redis_prefix = redis_prefix or redisbench.new_prefix()
        self._setups: dict[str, KeystileSetup] = {}
        self._verifiers: dict[str, Verifier] = {}
        self._leased: dict[int, str] = {}
        self._redis_used = False
        self._remote: RemoteServer | None = None

    def memory(self) -> KeystileSetup:
        return self._setup("memory", "memory://")

    def sqlite(self) -> KeystileSetup:
        return self._setup("sqlite", f"sqlite:///{self.workdir / 'keystile-bench.db'}")

    def redis(self) -> KeystileSetup:
        """The Redis of ``KEYSTILE_BENCH_REDIS``, under this fixture's key prefix."""
        self._redis_used = True
        return self._setup("redis", redisbench.with_prefix(redisbench.redis_url(), self.redis_prefix))

    def remote(self) -> RemoteServer:
        """A ``keystile serve`` on 127.0.0.1 whose SQLite store holds an API and the plain
        and full keys (as :meth:`sqlite`), with a root key; stopped by :meth:`close`."""
        if self._remote is None:
            from . import remote

            url = f"sqlite:///{self.workdir / 'keystile-remote.db'}"
            setup = _create(url)
            setup.ks.close()  # the server's from here on
            self._remote = remote.start(url, self.workdir, prefix=PREFIX, key=setup.key,
                                        full_key=setup.full_key, permission_query=PERMISSION_QUERY)
        return self._remote

    def redis_child_prefix(self, name: str) -> str:
        """A sub-prefix for another process's fixture (``--mode http``); ``close`` deletes
        what that process left behind too."""
        self._redis_used = True
        return f"{self.redis_prefix}{name}:"

    def leased_key(self, setup: KeystileSetup, lease: int) -> str:
        """A "full" key of ``setup`` in leased mode (``lease`` units per store trip)."""
        if lease not in self._leased:
            self._leased[lease] = setup.ks.create_key(
                setup.api_id, name=f"bench-full-lease-{lease}", **_full(lease)).key
        return self._leased[lease]

    def verifier(self, setup: KeystileSetup, **options: Any) -> Verifier:
        """One more verifier on ``setup``'s store with ``options`` (e.g. ``cache_ttl=0``),
        closed with the fixture."""
        name = f"{setup.url} {sorted(options.items())}"
        if name not in self._verifiers:
            self._verifiers[name] = Verifier(setup.url, **options)
        return self._verifiers[name]

    def quiet_verifier(self, setup: KeystileSetup) -> Verifier:
        """A verifier of ``setup``'s very store (memory too) that records no analytics."""
        name = f"{setup.url} quiet"
        if name not in self._verifiers:
            self._verifiers[name] = Verifier(setup.ks.store, analytics=False, metrics=False)
        return self._verifiers[name]

    def _setup(self, name: str, url: str) -> KeystileSetup:
        if name not in self._setups:
            self._setups[name] = _create(url)
        return self._setups[name]

    def close(self) -> None:
        try:
            for verifier in self._verifiers.values():
                verifier.close()
            for setup in self._setups.values():
                setup.ks.close()
        finally:
            self._verifiers.clear()
            self._setups.clear()
            if self._remote is not None:
                server, self._remote = self._remote, None
                server.stop()
            if self._redis_used:
                self._redis_used = False
                self._drop_redis_keys()

    def _drop_redis_keys(self) -> None:
        url = redisbench.redis_url()
        try:
            redisbench.drop_prefix(url, self.redis_prefix)
        except Exception as exc:  # the numbers are measured: a failed cleanup must not lose them
            print(f"keystile bench: could not delete the keys under {self.redis_prefix!r} at"
                  f" {redisbench.public_url(url)}: {exc}", file=sys.stderr)


def _create(url: str) -> KeystileSetup:
    ks = Keystile(url)
    api = ks.create_api("bench", prefix=PREFIX)
    key = ks.create_key(api.id, name="bench-plain").key
    perm = ks.create_key(api.id, name="bench-perm", permissions=["read", "write"]).key
    full = ks.create_key(api.id, name="bench-full", **_full()).key
    return KeystileSetup(ks, url, key, perm, full, api.id)
