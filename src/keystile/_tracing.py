"""OpenTelemetry spans around store trips, when ``opentelemetry-api`` is importable.

Looked for once, when keystile is imported. Without the package a store trip pays one
``is None`` test. With it, every store trip of a verification (reading keyspaces or a
record, settling, leasing, a remote ``verifyKey``) made inside a recorded trace (a
request your ASGI/WSGI instrumentation traces, or a span of your own) is a client
span named ``keystile.<operation>``, a child of the current span, failed when the
trip failed. A cache hit makes no span; neither does a trip outside a recorded trace
(the API alone, with no SDK configured, records none), where the check costs about
0.2 us instead of the 5 us a no-op span would.

Attributes: ``keystile.operation`` and ``keystile.store`` (the store URL without its
password). Never a key, a key hash or a root key.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

try:
    from opentelemetry import trace as _trace
except ImportError:  # the [otel] extra is not installed: no spans
    _trace = None  # type: ignore[assignment]

__all__ = ["ENABLED", "store_span"]

ENABLED = _trace is not None
_TRACER = _trace.get_tracer("keystile") if _trace is not None else None


def _current_span_by_api() -> Any:
    return _trace.get_current_span()


# FastAPI brings opentelemetry-api along, so most apps pay this check on every store
# trip, traced or not. The current span read from the context directly is three calls
# fewer than get_current_span() (its key is the API's own; without it, the public way).
try:
    from opentelemetry.context import get_current as _current_context
    from opentelemetry.trace.propagation import _SPAN_KEY

    def _current_span() -> Any:
        return _current_context().get(_SPAN_KEY)
except ImportError:  # no OpenTelemetry, or one that keeps the span elsewhere
    _current_span = _current_span_by_api


def store_span(operation: str, store: str) -> AbstractContextManager[Any] | None:
    """A span for one store trip, entered (the caller exits it); ``None`` without
    OpenTelemetry or outside a recorded trace."""
    if _TRACER is None:
        return None
    current = _current_span()
    if current is None or not current.is_recording():
        return None
    span = _TRACER.start_as_current_span(
        f"keystile.{operation}", kind=_trace.SpanKind.CLIENT,
        attributes={"keystile.operation": operation, "keystile.store": store})
    span.__enter__()
    return span
