"""The keys and stores the cases share, built lazily (each process builds its own).

In ``--mode http`` every server process builds the fixture for its one case, so a
``memory://`` store and its keys live in the process that serves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from keystile import Credits, Keystile, RatelimitConfig

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


def wrong_key(key: str) -> str:
    """A key of the same shape and prefix that no store holds."""
    prefix, _, random_part = key.rpartition("_")
    flipped = "2" if random_part[-1] != "2" else "3"
    return f"{prefix}_{random_part[:-1]}{flipped}"


class Fixture:
    """Stores and keys, created on first use under ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._setups: dict[str, KeystileSetup] = {}

    def memory(self) -> KeystileSetup:
        return self._setup("memory", "memory://")

    def sqlite(self) -> KeystileSetup:
        return self._setup("sqlite", f"sqlite:///{self.workdir / 'keystile-bench.db'}")

    def _setup(self, name: str, url: str) -> KeystileSetup:
        if name not in self._setups:
            self._setups[name] = _create(url)
        return self._setups[name]

    def close(self) -> None:
        for setup in self._setups.values():
            setup.ks.close()
        self._setups.clear()


def _create(url: str) -> KeystileSetup:
    ks = Keystile(url)
    api = ks.create_api("bench", prefix=PREFIX)
    key = ks.create_key(api.id, name="bench-plain").key
    perm = ks.create_key(api.id, name="bench-perm", permissions=["read", "write"]).key
    full = ks.create_key(
        api.id, name="bench-full", permissions=["read", "write"], credits=Credits(HUGE),
        ratelimits=[RatelimitConfig("requests", limit=HUGE, duration=60_000, auto_apply=True)],
    ).key
    return KeystileSetup(ks, url, key, perm, full)
