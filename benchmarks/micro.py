"""Micro-benchmarks of the pieces of a verify, timeit-style (best of several repeats).

Each item is a statement timed with :mod:`timeit` on pre-built inputs; the number
reported is the best repeat's time per call in nanoseconds. The repeats are
interleaved (every item once per repeat, then again), so a noisy moment of the
machine hits all items alike and the verify / sha256 ratio compares like with like.
The items that reach into keystile's private modules (``split_key``, the verifier's
cache) are reported as unavailable if those change, so a refactor never breaks the run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keystile import Keystile, Verifier, VerifyRequest, hash_key, parse_query

from .fixture import PERMISSION_QUERY, Fixture

__all__ = ["run_micro"]

Item = dict[str, Any]
TARGET_RATIO = 6.0  # the target: a verify on a cache hit costs at most 6 sha256 calls
SHA256 = "sha256 of a key (hashlib)"
VERIFY_HIT = "verify_request, cache hit"


@dataclass
class Spec:
    name: str
    stmt: str
    env: dict[str, Any]
    note: str = ""
    unavailable: str | None = None


def _private(name: str, getter: Callable[[], Any], stmt: str, env: dict[str, Any],
             note: str = "") -> Spec:
    """``stmt`` with ``fn = getter()``; it must answer something (a hit, a prefix)."""
    try:
        env = {**env, "fn": getter()}
        if eval(stmt, env) is None:
            raise TypeError("it answered None (not a hit)")
        return Spec(name, stmt, env, note)
    except (AttributeError, ImportError, TypeError) as exc:
        return Spec(name, stmt, env, note, unavailable=f"unavailable: {exc}")


def _split_key() -> Any:
    from keystile._keys import split_key

    return split_key


def _verifier_specs(ks: Keystile, quiet: Verifier, key: str, perm_key: str) -> list[Spec]:
    """The verify items on a verifier without analytics (what a verify costs), and one
    with it (what recording the event adds, the writer thread included)."""
    verifier = quiet
    plain, perm = VerifyRequest(), VerifyRequest(permissions=PERMISSION_QUERY)
    for k, request in ((key, plain), (perm_key, perm)):
        if not verifier.verify_request(k, request).valid:
            raise RuntimeError("micro-benchmark keys do not verify")
    env = {"verify": verifier.verify_request, "key": key, "perm_key": perm_key, "plain": plain,
           "perm": perm, "hashed": hash_key(key), "digest": hashlib.sha256(key.encode()).digest(),
           "now": verifier.now}
    return [
        _private("cache hit: Verifier.cache.get(stored hash)", lambda: verifier.cache.get,
                 "fn(hashed)", env, "base64 hash in, as evictions look keys up"),
        _private("cache hit: Verifier.cache.fresh(digest, now)", lambda: verifier.cache.fresh,
                 "fn(digest, now())", env, "the lookup a verify does (clock included)"),
        Spec(VERIFY_HIT, "verify(key, plain)", env,
             "Verifier.verify_request(key, VerifyRequest()) on memory://"),
        Spec("verify_request, cache hit + permission query", "verify(perm_key, perm)", env,
             PERMISSION_QUERY),
        Spec("verify_request, cache hit, analytics on", "recorded(key, plain)",
             {**env, "recorded": _idle_writer(ks).verify_request},
             "the answer queued for the writer (its work: the writer item below)"),
    ]


def _idle_writer(ks: Keystile) -> Verifier:
    """A verifier of ``ks``'s store whose analytics writer does not wake during the run,
    so that its backlog does not slow the items timed after it."""
    from keystile import Analytics

    return Verifier(ks.store, analytics=Analytics(queue_size=10**9, batch_size=10**9,
                                                  flush_interval=3600))


def _analytics_specs(fixture: Fixture) -> list[Spec]:
    """What analytics costs: the request path's queueing, and the writer's work per event."""
    from keystile import Analytics, VerifyResult
    from keystile._analytics import Recorder, count_entries, events_of

    setup = fixture.sqlite()
    result = setup.ks.verify(setup.key)
    if not isinstance(result, VerifyResult) or not result.valid:
        raise RuntimeError("micro-benchmark key does not verify")
    # A recorder whose writer never wakes during the run: emit only queues.
    idle = Recorder(setup.ks.store, Analytics(queue_size=10**9, batch_size=10**9,
                                              flush_interval=3600), setup.ks.now)
    request = VerifyRequest()
    # 1000 cache hits of one key in one minute, as a busy key's batch is.
    entry = (0, request, result)
    batch = [(0, [entry] * 1000)]
    env = {"record": idle.record, "now": 0, "result": result, "request": request, "batch": batch,
           "write": setup.ks.store.write_events, "count_entries": count_entries,
           "events_of": events_of}
    return [
        Spec("analytics: Recorder.record (a cache hit's path)", "record(now, entry)",
             {**env, "entry": entry}, "the answer entry appended to a bounded deque"),
        Spec("analytics: writer, 1000 verifications to SQLite",
             "write(events_of(count_entries(batch), 'i', None)[0])", env,
             "per-minute events of one key, one transaction (divide by 1000 per request)"),
    ]


def _reference_specs(key: str) -> list[Spec]:
    import base58
    from cachetools import TTLCache

    cache: TTLCache[str, int] = TTLCache(maxsize=1000, ttl=60)
    cache[key] = 1
    env = {"cache": cache, "key": key, "b58decode": base58.b58decode,
           "random_part": key.rpartition("_")[2]}
    return [
        Spec("reference: cachetools TTLCache.get", "cache.get(key)", env),
        Spec("reference: cachetools TTLCache[key]", "cache[key]", env),
        Spec("reference: base58.b58decode of a key", "b58decode(random_part)", env,
             "why keystile checks the shape with a regex instead"),
    ]


def _specs(fixture: Fixture) -> list[Spec]:
    setup = fixture.memory()
    key = setup.key
    env = {"key": key, "sha256": hashlib.sha256, "hash_key": hash_key,
           "query": parse_query(PERMISSION_QUERY), "perms": frozenset({"read", "write"}),
           "parse_query": parse_query, "text": PERMISSION_QUERY}
    return [
        _private("prefix parse (keystile._keys.split_key)", _split_key, "fn(key)", env),
        Spec(SHA256, "sha256(key.encode()).digest()", env),
        Spec("keystile.hash_key (sha256 + base64)", "hash_key(key)", env),
        *_verifier_specs(setup.ks, fixture.quiet_verifier(setup), key, setup.perm_key),
        Spec("permission query: parsed.allows(set)", "query.allows(perms)", env, PERMISSION_QUERY),
        Spec("permission query: parse_query(text).allows(set)", "parse_query(text).allows(perms)",
             env, "parse_query is lru-cached"),
        *_analytics_specs(fixture),
        *_reference_specs(key),
    ]


def _calibrated(spec: Spec, floor: float) -> tuple[timeit.Timer, int]:
    timer = timeit.Timer(spec.stmt, globals=spec.env)
    number = 1
    while timer.timeit(number) < floor:
        number *= 4
    return timer, number


def _measure(specs: list[Spec], *, quick: bool) -> list[Item]:
    timed = [s for s in specs if s.unavailable is None]
    timers = [_calibrated(spec, 0.002 if quick else 0.02) for spec in timed]
    best = [float("inf")] * len(timed)
    for _ in range(3 if quick else 7):
        for i, (timer, number) in enumerate(timers):
            best[i] = min(best[i], timer.timeit(number) / number * 1e9)
    by_name = {spec.name: ns for spec, ns in zip(timed, best, strict=True)}
    return [{"name": s.name, "ns": by_name.get(s.name), "stmt": s.stmt,
             "note": s.unavailable or s.note} for s in specs]


def _keyshield_item() -> list[Item]:
    if any(importlib.util.find_spec(m) is None for m in ("keyshield", "argon2", "aiocache")):
        return []
    from .peers import keyshield_uncached_verify_ms

    ms = keyshield_uncached_verify_ms()
    return [{"name": "peer: keyshield verify_key, uncached (argon2)", "ns": ms * 1e6,
             "stmt": "await service.verify_key(key)", "note": f"{ms:.1f} ms, median of 3"}]


def run_micro(fixture: Fixture, *, quick: bool, peers: bool = True) -> tuple[list[Item], Item]:
    """The micro items and the verify-hit / sha256 ratio against the issue's target."""
    items = _measure(_specs(fixture), quick=quick)
    if peers and not quick:
        items += _keyshield_item()
    by_name = {item["name"]: item["ns"] for item in items}
    verify, sha = by_name[VERIFY_HIT], by_name[SHA256]
    ratio = {"verify_hit_ns": verify, "sha256_ns": sha, "ratio": verify / sha,
             "target": TARGET_RATIO, "met": verify / sha <= TARGET_RATIO}
    return items, ratio
