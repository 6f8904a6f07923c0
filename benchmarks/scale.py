"""``--keys N``: does a cache-miss verify on SQLite stay flat as the store grows?

For each N a fresh SQLite store gets N keys. Up to :data:`SMALL` keys are issued
with ``Keystile.create_key``; beyond that one key is issued that way and its stored
document is the template for the rest, written with one ``executemany`` into the
store's ``docs`` table, so every key is stored exactly as ``create_key`` stores it
(the harness verifies a sample of them to prove it). Then a verifier with the cache
off (``cache_ttl=0``) verifies a random sample of the keys, each timed alone.
Finally the memory a cached record costs: the traced memory freed when a cache
filled with that many records is cleared, divided by the records.
"""

from __future__ import annotations

import gc
import json
import random
import secrets
import sqlite3
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import base58

from keystile import Keystile, Verifier, VerifyRequest, generate_key, hash_key

from .stats import percentiles

__all__ = ["run_scale"]

PREFIX = "sk_scale"
SMALL = 2000
CHUNK = 50_000
_PLAIN = VerifyRequest()


def _key_doc(template: dict[str, Any], plaintext: str, now: int) -> tuple[str, str]:
    random_part = plaintext.rpartition("_")[2]
    doc = {**template, "id": "key_" + base58.b58encode(secrets.token_bytes(12)).decode("ascii"),
           "hash": hash_key(plaintext), "start": f"{PREFIX}_{random_part[:4]}", "created_at": now}
    return doc["id"], json.dumps(doc)


def _bulk(path: str, template: dict[str, Any], count: int, keep: set[int],
          progress: Callable[[str], None]) -> list[str]:
    """Write ``count`` key documents; return the plaintexts of the indices in ``keep``."""
    kept: list[str] = []
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB: the indexes grow without thrashing
        conn.execute("BEGIN IMMEDIATE")
        for start in range(0, count, CHUNK):
            rows = []
            for i in range(start, min(start + CHUNK, count)):
                plaintext = generate_key(PREFIX, 16)
                rows.append(_key_doc(template, plaintext, template["created_at"]))
                if i in keep:
                    kept.append(plaintext)
            conn.executemany("INSERT INTO docs (kind, id, doc) VALUES ('key', ?, ?)", rows)
            progress(f"  {min(start + CHUNK, count):,}/{count:,} keys written")
        conn.execute("COMMIT")
    finally:
        conn.close()
    return kept


def _fill(url: str, path: str, count: int, wanted: int, progress: Callable[[str], None]) -> list[str]:
    """Fill the store with ``count`` keys; return ``wanted`` of their plaintexts."""
    with Keystile(url) as ks:
        api_id = ks.create_api("scale", prefix=PREFIX).id
        if count <= SMALL:
            keys = [ks.create_key(api_id).key for _ in range(count)]
            return random.Random(1).sample(keys, min(wanted, count))
        first = ks.create_key(api_id)
        template = ks.store.get("key", first.key_id)
    if template is None:
        raise RuntimeError("the key just created is not in the store")
    keep = set(random.Random(1).sample(range(count - 1), min(wanted, count - 1)))
    return [first.key, *_bulk(path, template, count - 1, keep, progress)]


_ROUNDS = 4


def _time_misses(url: str, keys: list[str], passes: int = 2) -> list[float]:
    # No analytics: what is timed is the store read, not writes of events to the same file.
    verifier = Verifier(url, cache_ttl=0, analytics=False, metrics=False)
    try:
        verifier.verify_request(keys[0], _PLAIN)  # loads the keyspaces, opens the connection
        samples: list[float] = []
        for _ in range(passes):
            for key in keys:
                start = time.perf_counter_ns()
                result = verifier.verify_request(key, _PLAIN)
                samples.append((time.perf_counter_ns() - start) / 1000)
                if not result.valid:
                    raise RuntimeError(f"a bulk-written key verified as {result.code.value}:"
                                       " the document format no longer matches create_key")
        return samples
    finally:
        verifier.close()


def memory_per_cached_key(url: str, keys: list[str]) -> dict[str, Any]:
    """Traced bytes freed by clearing a cache that holds one record per key."""
    # No analytics: its queue would be counted as the cache's memory.
    verifier = Verifier(url, cache_size=len(keys) * 2, cache_ttl=3600, analytics=False, metrics=False)
    try:
        verifier.verify_request(keys[0], _PLAIN)
        tracemalloc.start()
        for key in keys:
            verifier.verify_request(key, _PLAIN)
        gc.collect()
        filled = tracemalloc.get_traced_memory()[0]
        verifier.invalidate(None)
        gc.collect()
        cleared = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    finally:
        verifier.close()
    return {"records": len(keys), "bytes_per_key": (filled - cleared) / len(keys),
            "method": "tracemalloc: bytes freed when the filled cache is cleared"}


def run_scale(sizes: list[int], workdir: Path, *, samples: int, records: int,
              progress: Callable[[str], None]) -> dict[str, Any]:
    stores: list[dict[str, Any]] = []
    known: list[str] = []
    url = ""
    filled: list[tuple[int, str, list[str], float]] = []
    for count in sorted(set(sizes)):
        path = str(workdir / f"scale-{count}.db")
        url = f"sqlite:///{path}"
        progress(f"filling a SQLite store with {count:,} keys")
        start = time.perf_counter()
        known = _fill(url, path, count, max(samples, records), progress)
        filled.append((count, url, known, time.perf_counter() - start))
    # Timed after every store is filled, in rounds that alternate the stores (in a new
    # order each round), so that a noisy moment of the machine hits each store alike.
    timings: dict[int, list[float]] = {count: [] for count, *_ in filled}
    order = random.Random(2)
    for _ in range(_ROUNDS):
        for count, store_url, keys, _ in order.sample(filled, len(filled)):
            timings[count] += _time_misses(store_url, keys[:samples], passes=1)
    for count, _, _, fill_s in filled:
        p50, p99 = percentiles(timings[count], (50, 99))
        stores.append({"keys": count, "p50_us": p50, "p99_us": p99, "samples": len(timings[count]),
                       "fill_s": fill_s})
    for entry in stores:
        entry["ratio_to_smallest"] = entry["p50_us"] / stores[0]["p50_us"]
    result: dict[str, Any] = {"stores": stores}
    if known:
        result["memory_per_cached_key"] = memory_per_cached_key(url, known[:records])
    return result
