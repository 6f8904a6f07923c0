"""``unkey+https://host`` (or ``unkey+http://host:port``): verify against any endpoint
that speaks Unkey's v2 ``keys.verifyKey``: Unkey itself, or ``keystile serve``.

The decision is the remote's; what stays local:

- **Prefix routing.** Only keys whose prefix is one of the configured ``prefixes``
  (and whose shape is plausible) leave the process; anything else is ``NOT_FOUND``
  at once.
- **A small cache.** ``NOT_FOUND`` answers are kept ``negative_ttl`` seconds. A
  ``VALID`` answer that spent nothing (no credits, no rate limits) is kept
  ``cache_ttl`` seconds for the same route request. Everything that spends credits
  or takes rate-limit tokens is forwarded every time, so it stays exact; a change
  made on the remote (a revoked key) is seen here within ``cache_ttl``.
- **Failing fast.** Connect and read timeouts; retries with backoff only when the
  connection could not be made; a circuit breaker that, after ``failures`` failures
  in a row, answers at once (503, or the fail policy's stale answers) for
  ``cooldown`` seconds before one request tries the remote again.

The root key comes from ``root_key=`` or ``KEYSTILE_ROOT_KEY``; it needs
``api.*.verify_key`` (or ``api.<apiId>.verify_key``) on the remote.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

from ._analytics import Analytics, recorder_for
from ._errors import (
    ConfigurationError,
    PermissionQueryError,
    StoreUnavailableError,
    UnknownRatelimitError,
)
from ._forks import on_fork
from ._ids import now_ms
from ._keys import MAX_KEY_LENGTH, split_key
from ._logs import failure_fields, key_fields, safe_url
from ._loops import PerLoop
from ._metrics import UNROUTED, Metrics
from ._models import Code, Identity, RatelimitResult, VerifyRequest, VerifyResult
from ._records import ratelimits_from_docs
from ._verify import Driver, Step, _Pending

__all__ = ["RemoteVerifier", "is_remote_url"]

logger = logging.getLogger("keystile")

_NOT_FOUND: Final = VerifyResult(valid=False, code=Code.NOT_FOUND)
_CODES = {code.value: code for code in Code}


def is_remote_url(url: object) -> bool:
    return isinstance(url, str) and url.startswith(("unkey+http://", "unkey+https://"))


class _Breaker:
    """Closed until ``failures`` failures in a row; then open for ``cooldown`` s, then
    half-open: one call tries, the others still fail fast until it succeeds."""

    def __init__(self, failures: int, cooldown: float) -> None:
        self.failures, self.cooldown = failures, cooldown
        self._count = 0
        self._open_until = 0.0
        self._trial = False
        self._lock = threading.Lock()
        on_fork(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def allow(self) -> bool | None:
        """None: fail fast; False: closed, go ahead; True: go ahead as the half-open trial
        (the caller must end it with :meth:`succeeded`, :meth:`failed` or :meth:`abandoned`)."""
        with self._lock:
            if self._count < self.failures:
                return False
            if time.monotonic() < self._open_until or self._trial:
                return None
            self._trial = True  # half-open: this caller tries
            return True

    def abandoned(self) -> None:
        """The trial ended without an answer (cancelled): the next caller may try."""
        with self._lock:
            self._trial = False

    def succeeded(self) -> bool:
        """Count a success; ``True`` when it closed the breaker (it was open)."""
        with self._lock:
            closed = self._count >= self.failures
            self._count, self._trial = 0, False
            return closed

    def failed(self) -> bool:
        """Count a failure; ``True`` when it opened the breaker (the ``failures``-th in a
        row, or the half-open trial's), not for stragglers while it is open already."""
        with self._lock:
            self._count += 1
            opened = self._count == self.failures or self._trial
            self._trial = False
            if self._count >= self.failures:
                self._open_until = time.monotonic() + self.cooldown
            return opened


class _Forward:
    """The one I/O step of a remote verify: ``POST /v2/keys.verifyKey``."""

    __slots__ = ("body", "raw", "request", "verifier")
    operation, miss = "verify_remote", True

    def __init__(self, verifier: RemoteVerifier, raw: bytes, request: VerifyRequest,
                 body: dict[str, Any]) -> None:
        self.verifier, self.raw, self.request, self.body = verifier, raw, request, body

    def run_sync(self) -> VerifyResult:
        return result_from_unkey(self.verifier._post_sync(self.body))

    async def run_async(self) -> VerifyResult:
        return result_from_unkey(await self.verifier._post_async(self.body))

    def resume(self, result: VerifyResult) -> VerifyResult:
        return self.verifier._answered(self.raw, self.request, result)


class RemoteVerifier(Driver):
    """A verifier whose decisions are made by an Unkey-compatible endpoint.

    ``metrics`` counts its verifications (a counting-only queue: the remote server
    records the analytics), its forwards' latency and failures, the fail policy's
    answers and the circuit breaker's openings; ``metrics=False`` counts no verification.
    """

    def __init__(
        self, url: str, *, root_key: str | None = None, prefixes: tuple[str, ...] | list[str] = (),
        cache_ttl: float = 10.0, negative_ttl: float = 2.0, cache_size: int = 100_000,
        timeout: float | None = None, retries: int = 2, failures: int = 3, cooldown: float = 5.0,
        analytics: bool | Analytics = False, metrics: bool = True, now: Callable[[], int] = now_ms,
    ) -> None:
        if isinstance(analytics, Analytics):
            raise ConfigurationError("the remote backend records no analytics: the server it asks "
                                     "records every verification it answers")
        parts = urlsplit(url)
        if not is_remote_url(url) or not parts.hostname:
            raise ConfigurationError(f"a remote URL looks like unkey+https://api.unkey.com, not {url!r}")
        query = dict(parse_qsl(parts.query))
        self.base = urlunsplit((parts.scheme.removeprefix("unkey+"), parts.netloc,
                                parts.path.rstrip("/"), "", ""))
        self.url = safe_url(urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")))
        chosen = list(prefixes) or [p for p in query.get("prefixes", "").split(",") if p]
        if not chosen:
            raise ConfigurationError(
                "the remote backend needs the key prefixes to send, e.g. prefixes=['sk_live'] or "
                f"{self.url}?prefixes=sk_live: other keys never leave the process")
        self.prefixes = frozenset(chosen)
        key = root_key or os.environ.get("KEYSTILE_ROOT_KEY")
        if not key:
            raise ConfigurationError("the remote backend needs a root key: root_key= or KEYSTILE_ROOT_KEY")
        self._headers = {"authorization": f"Bearer {key}", "content-type": "application/json",
                         "accept": "application/json"}
        seconds = float(query.get("timeout", timeout if timeout is not None else 2.0))
        if seconds <= 0 or cache_ttl < 0 or negative_ttl < 0 or cache_size < 1:
            raise ConfigurationError("timeout must be > 0 s, cache lifetimes >= 0, cache_size >= 1")
        self.timeout = httpx.Timeout(seconds, connect=min(seconds, 1.0))
        self.retries = retries
        self.breaker = _Breaker(failures, cooldown)
        self.now = now
        self._ttl_ms, self._negative_ms = int(cache_ttl * 1000), int(negative_ttl * 1000)
        self._size = cache_size
        #: raw key bytes -> (deadline, request, result): read by the middleware's hot path.
        self.answers: dict[bytes, tuple[int, VerifyRequest, VerifyResult]] = {}
        self._missing: dict[bytes, int] = {}  # raw key bytes -> deadline of its NOT_FOUND
        self._stale: dict[bytes, tuple[int, VerifyRequest, VerifyResult]] = {}
        self.metrics = Metrics(store=self.url, operations=("verify_remote",))
        self.metrics.cache_entries = lambda: len(self.answers) + len(self._missing)
        #: No analytics here (the remote server records every verification it answers):
        #: a counting-only recorder for the metrics, or ``None`` with ``metrics=False``.
        self.events = recorder_for(None, analytics, now, self.metrics if metrics else None)
        self.metrics.recorder = self.events
        self._sync: httpx.Client | None = None
        self._sync_lock = threading.Lock()
        self._async: PerLoop[httpx.AsyncClient] = PerLoop(self._make_async, _aclose)
        on_fork(self)

    def _after_fork(self) -> None:
        # The parent's pooled connections are its own: the child opens its own.
        self._sync_lock = threading.Lock()
        self._sync = None

    def __repr__(self) -> str:
        return f"RemoteVerifier({self.url!r})"

    @property
    def cache(self) -> RemoteVerifier:
        return self  # the middleware reads ``verifier.cache.answers``

    # -- the steps (the protocol of Verifier) ------------------------------------------

    def _begin(self, key: str, request: VerifyRequest, ip: str | None, now: int) -> Step:
        if request.api_id is not None:
            raise ConfigurationError(
                "api_id is not checked by the remote backend: give it a root key limited to "
                "api.<apiId>.verify_key instead")
        if type(key) is not str or len(key) > MAX_KEY_LENGTH:
            return UNROUTED
        raw = key.encode("utf-8", "surrogatepass")
        answer = self.answers.get(raw)
        if answer is not None and answer[1] is request and now < answer[0]:
            return answer[2]
        if split_key(key) not in self.prefixes:
            return UNROUTED  # never leaves the process
        missing = self._missing.get(raw)
        if missing is not None and now < missing:
            return _NOT_FOUND
        return _Forward(self, raw, request, _body(key, request))

    def invalidate(self, key_hash: str | None, *, keyspaces: bool = False) -> None:
        """Forget cached answers (all of them: they are kept by key, not by hash)."""
        self.answers.clear()
        self._missing.clear()

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
        with self._sync_lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()
        self._async.close()

    # -- caching ------------------------------------------------------------------------

    def _answered(self, raw: bytes, request: VerifyRequest, result: VerifyResult) -> VerifyResult:
        now = self.now()
        if not result.valid:
            # Revoked, disabled, expired, out of credits: no earlier VALID may stand in for
            # it, neither as a cache hit nor under the open_cached fail policy.
            self.answers.pop(raw, None)
            self._stale.pop(raw, None)
        if result.code is Code.NOT_FOUND:
            if self._negative_ms:
                self._bounded(self._missing)[raw] = now + self._negative_ms
        elif result.valid and result.credits is None and not result.ratelimits:
            entry = (now + self._ttl_ms, request, result)
            if self._ttl_ms:
                self._bounded(self.answers)[raw] = entry
            self._bounded(self._stale)[raw] = entry  # for the open_cached fail policy
        return result

    def _bounded(self, table: dict[bytes, Any]) -> dict[bytes, Any]:
        if len(table) >= self._size:
            table.clear()
        return table

    def _fall_back(self, step: _Pending, error: StoreUnavailableError, stale_ms: int | None) -> VerifyResult:
        assert isinstance(step, _Forward)  # start() makes no other step
        if stale_ms is not None:
            known = self._stale.get(step.raw)
            if known is not None and known[1] is step.request and self.now() < known[0] + stale_ms:
                result = known[2]
                logger.warning("keystile: remote unavailable; admitting key %s as it last answered"
                               " (open_cached): %s", result.key_id, error,
                               extra=key_fields(result, **failure_fields(self.url, "verify_remote", error)))
                return result
        raise error

    # -- HTTP ---------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        with self._sync_lock:
            if self._sync is None:
                self._sync = httpx.Client(base_url=self.base, headers=self._headers, timeout=self.timeout)
            return self._sync

    def _make_async(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, headers=self._headers, timeout=self.timeout)

    def _post_sync(self, body: dict[str, Any]) -> Mapping[str, Any]:
        trial = self._admit()
        try:
            return self._exchange_sync(body)
        except BaseException:
            if trial:
                self.breaker.abandoned()
            raise

    def _exchange_sync(self, body: dict[str, Any]) -> Mapping[str, Any]:
        for attempt in range(self.retries + 1):
            try:
                response = self._client().post("/v2/keys.verifyKey", json=body)
                break
            except httpx.ConnectError as exc:
                if attempt == self.retries:
                    raise self._unreachable(exc) from exc
                time.sleep(0.05 * 2**attempt)
            except httpx.HTTPError as exc:
                raise self._unreachable(exc) from exc
        return self._data(response, body["key"])

    async def _post_async(self, body: dict[str, Any]) -> Mapping[str, Any]:
        trial = self._admit()
        try:
            return await self._exchange_async(body)
        except BaseException:  # a cancelled trial must not leave the breaker open for good
            if trial:
                self.breaker.abandoned()
            raise

    async def _exchange_async(self, body: dict[str, Any]) -> Mapping[str, Any]:
        client = await self._async.get()
        for attempt in range(self.retries + 1):
            try:
                response = await client.post("/v2/keys.verifyKey", json=body)
                break
            except httpx.ConnectError as exc:
                if attempt == self.retries:
                    raise self._unreachable(exc) from exc
                await asyncio.sleep(0.05 * 2**attempt)
            except httpx.HTTPError as exc:
                raise self._unreachable(exc) from exc
        return self._data(response, body["key"])

    def _detail(self, response: httpx.Response, key: str) -> str:
        """The remote's reason, without the key or the root key should it quote them: it
        goes into exceptions and from there into logs."""
        detail = _detail(response)
        for secret in (key, self._headers["authorization"].removeprefix("Bearer ")):
            detail = detail.replace(secret, "***")
        return detail

    def _admit(self) -> bool:
        trial = self.breaker.allow()
        if trial is None:
            raise StoreUnavailableError(f"remote {self.url}: failing fast after repeated failures")
        return trial

    def _unreachable(self, exc: Exception) -> StoreUnavailableError:
        self._failed_once()
        return StoreUnavailableError(f"remote {self.url}: {type(exc).__name__}: {exc}")

    def _failed_once(self) -> None:
        if self.breaker.failed():
            self.metrics.breaker_opened()
            logger.warning("keystile: remote %s failed %d times in a row; failing fast for %g s",
                           self.url, self.breaker.failures, self.breaker.cooldown,
                           extra={"store": self.url, "operation": "verify_remote"})

    def _data(self, response: httpx.Response, key: str) -> Mapping[str, Any]:
        status = response.status_code
        if status >= 500 or status in (401, 403, 429):
            self._failed_once()
            # 401/403: the root key is wrong for the remote; the app cannot verify.
            raise StoreUnavailableError(f"remote {self.url} answered {status}: {self._detail(response, key)}")
        if self.breaker.succeeded():
            logger.info("keystile: remote %s answers again", self.url,
                           extra={"store": self.url, "operation": "verify_remote"})
        if status == 412:
            raise UnknownRatelimitError(self._detail(response, key))
        if status == 400:
            detail = self._detail(response, key)
            raise PermissionQueryError(detail, query="", position=0) if "permission" in detail.lower() \
                else StoreUnavailableError(f"remote {self.url} refused the request: {detail}")
        try:
            data = response.json()["data"]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreUnavailableError(f"remote {self.url} answered {status} without a result") from exc
        if not isinstance(data, Mapping):
            raise StoreUnavailableError(f"remote {self.url} answered {status} without a result")
        return data


def _body(key: str, request: VerifyRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"key": key}
    if request.permissions:
        body["permissions"] = request.permissions
    if request.cost is not None:
        body["credits"] = {"cost": request.cost}
    if request.ratelimits:
        body["ratelimits"] = [{"name": spec} if isinstance(spec, str) else dict(spec)
                              for spec in request.ratelimits]
    if request.tags:
        body["tags"] = list(request.tags)
    return body


def _detail(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
        return str(error.get("detail") or error.get("title") or response.reason_phrase)
    except ValueError:
        return response.reason_phrase


def result_from_unkey(data: Mapping[str, Any]) -> VerifyResult:
    """A ``keys.verifyKey`` ``data`` object as a :class:`VerifyResult` (unknown fields ignored)."""
    code = _CODES.get(str(data.get("code")))
    if code is None:
        raise StoreUnavailableError(f"the remote answered an unknown code {data.get('code')!r}")
    identity = data.get("identity")
    return VerifyResult(
        valid=bool(data.get("valid")) and code is Code.VALID,
        code=code,
        key_id=data.get("keyId"),
        keyspace_id=data.get("keyspaceId"),
        api_id=data.get("apiId"),
        name=data.get("name"),
        meta=data.get("meta"),
        expires=data.get("expires"),
        credits=data.get("credits"),
        enabled=data.get("enabled"),
        roles=tuple(data.get("roles") or ()),
        permissions=tuple(data.get("permissions") or ()),
        identity=Identity(id=identity["id"], external_id=identity["externalId"],
                          meta=identity.get("meta"),
                          ratelimits=ratelimits_from_docs(identity.get("ratelimits")))
        if isinstance(identity, Mapping) else None,
        ratelimits=tuple(
            RatelimitResult(name=rl["name"], limit=int(rl["limit"]), duration=int(rl["duration"]),
                            remaining=int(rl["remaining"]), reset=int(rl["reset"]),
                            exceeded=bool(rl["exceeded"]), id=str(rl.get("id", "")),
                            auto_apply=bool(rl.get("autoApply", False)))
            for rl in data.get("ratelimits") or ()),
    )


async def _aclose(client: httpx.AsyncClient) -> None:
    await client.aclose()
