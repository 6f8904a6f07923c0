"""The Prometheus exporter: what a scrape exposes, read back with prometheus_client's own
parser, and ``keystile serve --metrics`` (in this process, and as a real command)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Clock, free_port
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from served import wait_until_live
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keystile import (
    AsyncKeystile,
    ConfigurationError,
    Credits,
    KeyAuthMiddleware,
    KeyAuthWSGIMiddleware,
    Keystile,
    Verifier,
    generate_key,
)
from keystile._remote import RemoteVerifier
from keystile.prometheus import KeystileCollector, endpoint, metrics_of, register
from keystile.server import RootKeys, build_app


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition: (name, labels) -> value."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found[name, frozenset(labels.items())]


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


async def test_if_a_scrape_follows_a_scripted_mix_then_it_exposes_the_exact_counts(
    sqlite_url: str, clock: Clock, registry: CollectorRegistry,
) -> None:
    ks = Keystile(sqlite_url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    plain = ks.create_key(api.id).key
    paid = ks.create_key(api.id, credits=Credits(2)).key
    register(ks, registry)
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(KeyAuthMiddleware, verifier=ks)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for key, times in ((plain, 5), (paid, 3), (generate_key("sk_shop", 16), 2), ("sk_x_1", 1)):
            for _ in range(times):
                await c.get("/", headers={"authorization": f"Bearer {key}"})
    assert ks.verifier.events is not None
    ks.verifier.events.flush()

    found = samples(generate_latest(registry).decode())

    assert value(found, "keystile_verifications_total", code="VALID") == 7
    assert value(found, "keystile_verifications_total", code="USAGE_EXCEEDED") == 1
    assert value(found, "keystile_verifications_total", code="NOT_FOUND") == 3
    assert value(found, "keystile_verifications_total", code="RATE_LIMITED") == 0  # every code, from 0
    assert value(found, "keystile_cache_misses_total") == 3
    assert value(found, "keystile_cache_hits_total") == 7
    assert value(found, "keystile_unrouted_total") == 1
    assert value(found, "keystile_cache_entries") == 3
    assert value(found, "keystile_store_latency_seconds_count", operation="settle") == 3
    assert value(found, "keystile_store_latency_seconds_count", operation="load_record") == 3
    assert value(found, "keystile_store_latency_seconds_bucket", operation="settle", le="+Inf") == 3
    assert value(found, "keystile_store_latency_seconds_sum", operation="settle") > 0
    assert value(found, "keystile_store_latency_seconds_count", operation="lease") == 0
    assert value(found, "keystile_store_errors_total", operation="settle") == 0
    assert value(found, "keystile_fail_policy_activations_total", operation="load_record") == 0
    assert value(found, "keystile_analytics_events_written_total") == 11
    assert value(found, "keystile_analytics_events_dropped_total") == 0
    assert value(found, "keystile_analytics_events_queued") == 0
    ks.close()


def test_if_metrics_change_between_scrapes_then_each_scrape_reads_them_anew(
    registry: CollectorRegistry,
) -> None:
    verifier = Verifier("memory://")
    register(verifier, registry)
    before = samples(generate_latest(registry).decode())
    verifier.verify("sk_none_" + "2" * 22)
    assert verifier.events is not None
    verifier.events.flush()

    after = samples(generate_latest(registry).decode())

    assert value(before, "keystile_unrouted_total") == 0 and value(after, "keystile_unrouted_total") == 1
    verifier.close()


def test_if_one_registry_gets_a_second_verifier_then_it_is_refused_as_a_duplicate(
    registry: CollectorRegistry,
) -> None:
    first, second = Verifier("memory://"), Verifier("memory://")
    register(first, registry)
    with pytest.raises(ValueError, match="Duplicated"):
        register(second, registry)
    first.close()
    second.close()


def test_if_anything_holding_a_verifier_is_registered_then_its_metrics_are_found(tmp_path: Path) -> None:
    ks = Keystile(f"sqlite:///{tmp_path / 'k.db'}")
    remote = RemoteVerifier("unkey+http://127.0.0.1:1?prefixes=sk", root_key="r")
    asgi = KeyAuthMiddleware(Starlette(), verifier=ks)
    wsgi = KeyAuthWSGIMiddleware(lambda environ, start: [], verifier=ks)
    aks = AsyncKeystile("memory://")

    assert {id(metrics_of(target)) for target in (ks, ks.verifier, asgi, wsgi, ks.verifier.metrics)} == {
        id(ks.verifier.metrics)}
    assert metrics_of(remote) is remote.metrics and metrics_of(aks) is aks.sync.verifier.metrics
    with pytest.raises(ConfigurationError, match="no keystile metrics"):
        KeystileCollector("sqlite:///k.db")  # type: ignore[arg-type]
    for closing in (ks, remote, aks.sync):
        closing.close()


async def test_if_an_app_mounts_the_endpoint_then_it_answers_the_text_format(sqlite_url: str) -> None:
    ks = Keystile(sqlite_url)
    app = Starlette(routes=[Route("/metrics", endpoint(ks))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert value(samples(response.text), "keystile_cache_hits_total") == 0
    ks.close()


# -- keystile serve --metrics ------------------------------------------------------------------


async def test_if_keystile_serve_has_metrics_then_verify_key_calls_show_without_a_root_key(
    sqlite_url: str,
) -> None:
    ks = Keystile(sqlite_url)
    root = RootKeys(ks).create(["api.*.verify_key"]).key
    created = ks.create_key(ks.create_api("app", prefix="sk_app").id)
    app = build_app(ks, metrics=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for key in (created.key, created.key, "sk_app_" + "2" * 22):
            answer = await c.post("/v2/keys.verifyKey", json={"key": key},
                                  headers={"authorization": f"Bearer {root}"})
            assert answer.status_code == 200
        assert ks.verifier.events is not None
        ks.verifier.events.flush()
        response = await c.get("/metrics")

    found = samples(response.text)
    assert response.status_code == 200
    # The root key is verified too, on every request: three more VALID verifications.
    assert value(found, "keystile_verifications_total", code="VALID") == 2 + 3
    assert value(found, "keystile_verifications_total", code="NOT_FOUND") == 1
    assert root not in response.text and created.key not in response.text
    ks.close()


def test_if_keystile_serve_has_no_metrics_option_then_there_is_no_metrics_route(sqlite_url: str) -> None:
    ks = Keystile(sqlite_url)
    assert "/metrics" not in {getattr(route, "path", None) for route in build_app(ks).routes}
    ks.close()


def test_if_prometheus_client_is_missing_then_metrics_ask_for_the_extra(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # its import fails
    monkeypatch.delitem(sys.modules, "keystile.prometheus", raising=False)
    ks = Keystile(sqlite_url)
    with pytest.raises(ConfigurationError, match=r"pip install 'keystile\[prometheus\]'"):
        build_app(ks, metrics=True)
    ks.close()


@pytest.fixture
def serve_with_metrics(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "keystile", "serve", "--store", f"sqlite:///{tmp_path / 'k.db'}",
         "--port", str(port), "--metrics", "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(url, process)
        yield url, process
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_if_keystile_serve_runs_with_metrics_then_prometheus_can_scrape_it(
    serve_with_metrics: tuple[str, Any], tmp_path: Path,
) -> None:
    url, process = serve_with_metrics
    response = httpx.get(f"{url}/metrics", timeout=5)

    assert response.status_code == 200
    assert value(samples(response.text), "keystile_verifications_total", code="VALID") == 0
    process.terminate()
    assert process.wait(10) == 0
    assert "metrics at /metrics" in (tmp_path / "serve.log").read_text()
