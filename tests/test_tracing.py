"""OpenTelemetry: a span per store trip, none per cache hit, and nothing without the package.

The spans are captured by the SDK's in-memory exporter (the SDK is a test dependency;
keystile needs only ``opentelemetry-api``).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keystile import (
    Credits,
    KeyAuthMiddleware,
    Keystile,
    SQLiteStore,
    StoreUnavailableError,
    VerifyRequest,
)
from keystile._remote import RemoteVerifier
from keystile.server import RootKeys
from tests.conftest import Clock, InProcessServe


@pytest.fixture(scope="module")
def provider() -> TracerProvider:
    """The process's tracer provider: ours, unless one was set before (it can be set once)."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    ours = TracerProvider()
    trace.set_tracer_provider(ours)
    return ours


@pytest.fixture(scope="module")
def exporter(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # keeps no spans of the tests after these


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    yield exporter
    exporter.clear()


def keystile_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name.startswith("keystile.")]


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def app_for(ks: Any, **options: Any) -> Starlette:
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(KeyAuthMiddleware, verifier=ks, **options)
    return app


def traced() -> AbstractContextManager[Any]:
    """A span of the application's own, as its instrumentation would start per request."""
    return trace.get_tracer("tests").start_as_current_span("request")


def everything_said(span: ReadableSpan) -> str:
    """The span's name, attributes and events, as text to search."""
    return repr((span.name, dict(span.attributes or {}),
                 [(event.name, dict(event.attributes or {})) for event in span.events]))


async def test_if_a_key_misses_the_cache_then_each_store_trip_is_a_client_span_of_the_request(
    sqlite_url: str, clock: Clock, spans: InMemorySpanExporter,
) -> None:
    ks = Keystile(sqlite_url, now=clock)
    created = ks.create_key(ks.create_api("shop", prefix="sk_shop").id, credits=Credits(10))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app_for(ks)),
                                 base_url="http://test") as client:
        with traced() as request_span:
            response = await client.get("/", headers={"authorization": f"Bearer {created.key}"})

    assert response.status_code == 200
    found = keystile_spans(spans)
    assert [span.name for span in found] == ["keystile.load_keyspaces", "keystile.load_record",
                                             "keystile.settle"]
    parent = request_span.get_span_context()
    for span in found:
        assert span.kind is SpanKind.CLIENT and span.status.status_code is StatusCode.UNSET
        assert span.parent is not None and span.parent.span_id == parent.span_id
        assert span.context is not None and span.context.trace_id == parent.trace_id
        assert dict(span.attributes or {}) == {"keystile.operation": span.name.removeprefix("keystile."),
                                               "keystile.store": ks.store.url}
        assert created.key not in everything_said(span)
    ks.close()


async def test_if_keys_hit_the_cache_then_no_span_is_made(
    sqlite_url: str, clock: Clock, spans: InMemorySpanExporter,
) -> None:
    ks = Keystile(sqlite_url, now=clock)
    created = ks.create_key(ks.create_api("shop", prefix="sk_shop").id)
    assert ks.verify(created.key).valid  # cached
    spans.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app_for(ks)),
                                 base_url="http://test") as client:
        with traced():
            for _ in range(20):
                assert (await client.get("/", headers={"authorization": f"Bearer {created.key}"})
                        ).status_code == 200
    with traced():
        for _ in range(20):
            assert ks.verify(created.key).valid
            assert not ks.verify("sk_else_" + "2" * 22).valid  # unrouted: no lookup at all

    assert keystile_spans(spans) == []
    ks.close()


def test_if_no_trace_is_recorded_then_store_trips_make_no_span(
    sqlite_url: str, clock: Clock, spans: InMemorySpanExporter,
) -> None:
    ks = Keystile(sqlite_url, now=clock)
    created = ks.create_key(ks.create_api("shop", prefix="sk_shop").id, credits=Credits(10))
    spans.clear()

    assert ks.verify(created.key).valid  # three store trips, no request span around them

    assert keystile_spans(spans) == []
    ks.close()


def test_if_a_store_trip_fails_then_its_span_is_an_error_without_the_key(
    tmp_path: Path, clock: Clock, spans: InMemorySpanExporter,
) -> None:
    path = tmp_path / "keys.db"
    ks = Keystile(SQLiteStore(f"sqlite:///{path}", timeout=0.05), now=clock)
    created = ks.create_key(ks.create_api("shop", prefix="sk_shop").id, credits=Credits(10))
    assert ks.verify(created.key).valid
    spans.clear()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailableError), traced():
            ks.verifier.verify(created.key)
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    [span] = keystile_spans(spans)
    assert span.name == "keystile.settle" and span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]
    assert "locked" in everything_said(span) and created.key not in everything_said(span)
    ks.close()


async def test_if_the_remote_backend_forwards_then_the_call_is_a_span(
    sqlite_url: str, spans: InMemorySpanExporter,
) -> None:
    ks = Keystile(sqlite_url)
    root = RootKeys(ks).create(["api.*.verify_key"]).key
    created = ks.create_key(ks.create_api("app", prefix="sk_app").id)
    server = InProcessServe(ks)
    remote = RemoteVerifier(f"unkey+http://127.0.0.1:{server.port}?prefixes=sk_app", root_key=root)
    try:
        spans.clear()
        request = VerifyRequest()
        with traced():
            assert (await remote.verify_request_async(created.key, request)).valid
            assert (await remote.verify_request_async(created.key, request)).valid  # cached: no call
    finally:
        server.stop()
        remote.close()
        ks.close()

    [span] = [s for s in keystile_spans(spans) if s.name == "keystile.verify_remote"]
    assert dict(span.attributes or {})["keystile.store"] == f"unkey+http://127.0.0.1:{server.port}"
    said = everything_said(span)
    assert created.key not in said and root not in said


def test_if_opentelemetry_is_not_installed_then_keystile_verifies_without_spans(tmp_path: Path) -> None:
    script = f"""
import sys
sys.modules["opentelemetry"] = None  # as if the package were absent: its import fails
from keystile import Keystile, _tracing
ks = Keystile("sqlite:///{tmp_path / 'keys.db'}")
created = ks.create_key(ks.create_api("shop", prefix="sk_shop").id, credits=10)
assert ks.verify(created.key).valid and ks.verify(created.key).credits == 8
assert _tracing.ENABLED is False and _tracing.store_span("settle", "memory://") is None
assert "opentelemetry.trace" not in sys.modules
ks.close()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


@pytest.mark.parametrize("lookup", ["context", "api"])
def test_if_the_current_span_is_looked_up_either_way_then_only_recorded_traces_get_spans(
    sqlite_url: str, clock: Clock, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch,
    lookup: str,
) -> None:
    from keystile import _tracing

    if lookup == "api":  # as with an OpenTelemetry that keeps the current span elsewhere
        monkeypatch.setattr(_tracing, "_current_span", _tracing._current_span_by_api)
    ks = Keystile(sqlite_url, now=clock)
    created = ks.create_key(ks.create_api("shop", prefix="sk_shop").id, credits=Credits(10))
    spans.clear()
    assert ks.verify(created.key).valid
    assert keystile_spans(spans) == []
    with traced():
        assert ks.verify(created.key).valid  # the settle: one store trip
    assert [span.name for span in keystile_spans(spans)] == ["keystile.settle"]
    ks.close()
