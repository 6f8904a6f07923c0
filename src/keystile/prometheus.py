"""Prometheus: a verifier's metrics for a ``prometheus_client`` registry.

Needs the ``prometheus`` extra (``pip install 'keystile[prometheus]'``); keystile
itself never imports this module.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> from keystile import Keystile
>>> ks = Keystile("memory://")
>>> registry = CollectorRegistry()
>>> collector = register(ks, registry=registry)   # or the default registry
>>> b"keystile_verifications_total" in generate_latest(registry)
True

The collector reads ``verifier.metrics`` when it is scraped and at no other time, so
between scrapes it costs nothing. What it exposes:

=================================================  =========  =============================
``keystile_verifications_total{code}``             counter    verifications by outcome code
``keystile_cache_hits_total``                      counter    answered from the local cache
``keystile_cache_misses_total``                    counter    read the record, or asked the remote
``keystile_unrouted_total``                        counter    rejected before any lookup
``keystile_cache_entries``                         gauge      entries in the local cache
``keystile_store_latency_seconds{operation}``      histogram  store trips of verifications
``keystile_store_errors_total{operation}``         counter    store trips that failed
``keystile_fail_policy_activations_total{op...}``  counter    ``open_cached`` answers after a failure
``keystile_breaker_opens_total``                   counter    the remote's circuit breaker opened
``keystile_analytics_events_dropped_total``        counter    events lost (queue full, store down)
``keystile_analytics_events_written_total``        counter    events written to the store
``keystile_analytics_write_errors_total``          counter    failed writes of events (retried)
``keystile_analytics_events_queued``               gauge      events waiting for the writer
=================================================  =========  =============================

``operation`` is ``load_keyspaces``, ``load_record``, ``settle`` or ``lease`` (a local
store), ``verify_remote`` (the remote backend). The verification counters lag by up to
the analytics flush interval (1 s): see :mod:`keystile._metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator, Mapping

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import (
        REGISTRY,
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("keystile.prometheus needs the prometheus extra: "
                      "pip install 'keystile[prometheus]'") from exc
from starlette.requests import Request
from starlette.responses import Response

from ._async import AsyncKeystile
from ._errors import ConfigurationError
from ._manage import Keystile
from ._metrics import Metrics
from ._middleware import KeyAuthMiddleware
from ._remote import RemoteVerifier
from ._verify import Verifier
from ._wsgi import KeyAuthWSGIMiddleware

__all__ = ["KeystileCollector", "Target", "endpoint", "metrics_of", "register"]

#: What has metrics: a verifier, what holds one, or the registry itself.
Target = (Verifier | RemoteVerifier | Keystile | AsyncKeystile | KeyAuthMiddleware
          | KeyAuthWSGIMiddleware | Metrics)


class KeystileCollector(Collector):
    """Exposes one verifier's :class:`~keystile.Metrics`, read at each scrape."""

    def __init__(self, target: Target) -> None:
        self.metrics = metrics_of(target)

    def describe(self) -> Iterator[Metric]:
        return self.collect()  # the names, for the registry's check against duplicates

    def collect(self) -> Iterator[Metric]:
        snapshot = self.metrics.snapshot()
        verifications = CounterMetricFamily("keystile_verifications", "Verifications by outcome code.",
                                            labels=["code"])
        for code, count in snapshot.verifications.items():
            verifications.add_metric([code], count)
        yield verifications
        yield CounterMetricFamily("keystile_cache_hits", "Verifications answered from the local cache.",
                                  value=snapshot.cache_hits)
        yield CounterMetricFamily(
            "keystile_cache_misses",
            "Verifications that read the key's record from the store (or asked the remote).",
            value=snapshot.cache_misses)
        yield CounterMetricFamily(
            "keystile_unrouted", "Keys rejected by prefix routing or their shape, before any lookup.",
            value=snapshot.unrouted)
        yield GaugeMetricFamily("keystile_cache_entries", "Entries in the local cache.",
                                value=snapshot.cache_entries)
        latency = HistogramMetricFamily("keystile_store_latency_seconds",
                                        "Store trips of verifications, by operation.",
                                        labels=["operation"])
        for operation, histogram in snapshot.store_latency.items():
            latency.add_metric([operation], [("+Inf" if math.isinf(bound) else repr(bound), count)
                                             for bound, count in histogram.buckets],
                               sum_value=histogram.sum)
        yield latency
        yield _by_operation("keystile_store_errors", "Store trips of verifications that failed.",
                            snapshot.store_errors)
        yield _by_operation("keystile_fail_policy_activations",
                            "Verifications the open_cached fail policy answered after a failed trip.",
                            snapshot.fail_policy)
        yield CounterMetricFamily("keystile_breaker_opens",
                                  "Times the remote backend's circuit breaker opened.",
                                  value=snapshot.breaker_opens)
        yield CounterMetricFamily(
            "keystile_analytics_events_dropped",
            "Verification events lost: the queue was full, or the store failed too long.",
            value=snapshot.events_dropped)
        yield CounterMetricFamily("keystile_analytics_events_written",
                                  "Verification events written to the store.", value=snapshot.events_written)
        yield CounterMetricFamily("keystile_analytics_write_errors",
                                  "Failed writes of verification events (retried).",
                                  value=snapshot.event_write_errors)
        yield GaugeMetricFamily("keystile_analytics_events_queued",
                                "Verification events waiting for the writer.", value=snapshot.events_queued)


def register(target: Target, registry: CollectorRegistry | None = None) -> KeystileCollector:
    """Add ``target``'s metrics to ``registry`` (default: prometheus_client's own).

    One collector per registry: a second one in the same registry is refused as a
    duplicate (``ValueError``); give each verifier a registry of its own.
    """
    collector = KeystileCollector(target)
    (REGISTRY if registry is None else registry).register(collector)
    return collector


def endpoint(target: Target) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint answering ``target``'s metrics in Prometheus' text format
    (a registry of its own): ``Route("/metrics", endpoint(ks))``. ``keystile serve
    --metrics`` serves it."""
    registry = CollectorRegistry(auto_describe=True)
    register(target, registry)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics


def metrics_of(target: Target) -> Metrics:
    """The metrics registry of a verifier or of what holds one."""
    if isinstance(target, Metrics):
        return target
    if isinstance(target, Verifier | RemoteVerifier):
        return target.metrics
    if isinstance(target, Keystile):
        return target.verifier.metrics
    if isinstance(target, AsyncKeystile):
        return target.sync.verifier.metrics
    if isinstance(target, KeyAuthMiddleware):
        return target.verifier.metrics
    if isinstance(target, KeyAuthWSGIMiddleware):
        return target.gate.verifier.metrics
    raise ConfigurationError(f"no keystile metrics in {target!r}: pass a Verifier, Keystile, "
                             "AsyncKeystile, KeyAuthMiddleware or KeyAuthWSGIMiddleware")


def _by_operation(name: str, documentation: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["operation"])
    for operation, count in counts.items():
        family.add_metric([operation], count)
    return family
