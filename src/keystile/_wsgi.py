"""``KeyAuthWSGIMiddleware``: the same gate for WSGI apps (Flask, Django, any WSGI app).

>>> from flask import Flask                                     # doctest: +SKIP
>>> app = Flask(__name__)                                       # doctest: +SKIP
>>> app.wsgi_app = KeyAuthWSGIMiddleware(app.wsgi_app, store="sqlite:///keys.db")  # doctest: +SKIP

The result lands in ``environ["keystile"]`` (Flask: ``request.environ``, Django:
``request.META``). Verification takes the blocking store path: no event loop per
request.
"""

from __future__ import annotations

import http
from collections.abc import Callable, Iterable
from typing import Any

from ._errors import KeystileError
from ._gate import VERIFIER_SCOPE_KEY, Gate
from ._problem import Problem

__all__ = ["KeyAuthWSGIMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class KeyAuthWSGIMiddleware:
    """Verify the API key of every request before the WSGI app sees it.

    The options are those of :class:`KeyAuthMiddleware` (``store``/``verifier``,
    ``header``, ``extractor``, ``query_param``, ``exclude_paths``,
    ``allow_anonymous``, ``permissions``, ``cost``, ``ratelimits``, ``api_id``,
    ``trusted_proxies``, ``forwarded_header``, ``ratelimit_headers``,
    ``credits_header``, cache options); the answers are the same problem+json
    responses. The client address is ``REMOTE_ADDR`` (or the forwarded one behind
    trusted proxies). With ``query_param``, the key parameter is removed from
    ``QUERY_STRING``, ``REQUEST_URI`` and ``RAW_URI`` before the app and the
    server's access log see them.
    """

    def __init__(self, app: WSGIApp, **options: Any) -> None:
        self.app = app
        self.gate = gate = Gate(**options)
        wanted = [gate.header, *([gate.forwarded_header] if gate.trusted_proxies else [])]
        self._wanted = [(_environ_key(name), name) for name in wanted]

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        gate = self.gate
        environ["keystile"] = None
        environ[VERIFIER_SCOPE_KEY] = gate.verifier  # for @require_key on the views
        if gate.excluded(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        headers = self._headers(environ)
        key = gate.read_request(headers, self._query(environ))
        if key is None:
            return self.app(environ, start_response)
        if isinstance(key, Problem):
            return _answer(key, start_response)
        ip = gate.client_ip(environ.get("REMOTE_ADDR"), headers)
        try:
            result = gate.verifier.verify_request(key, gate.request, ip, stale_ms=gate.stale_ms)
        except KeystileError as exc:
            return _answer(gate.failure(exc), start_response)
        if not result.valid:
            return _answer(gate.rejection(result), start_response)
        environ["keystile"] = result
        extra = [(name.decode("latin-1"), value.decode("latin-1"))
                 for name, value in gate.response_headers(result)]
        if extra:
            start_response = _adding(start_response, extra)
        return self.app(environ, start_response)

    def _headers(self, environ: Environ) -> list[tuple[bytes, bytes]]:
        # PEP 3333 hands header values over as latin-1 decoded str; servers join
        # repeated headers with commas, which the key reader rejects. An extractor
        # sees every header, the rest only the headers the options name.
        if self.gate.extractor is not None:
            return [(_header_name(key), _raw(value)) for key, value in environ.items()
                    if key.startswith("HTTP_") or key in _UNPREFIXED]
        return [(name, _raw(environ[key])) for key, name in self._wanted if key in environ]

    def _query(self, environ: Environ) -> bytes:
        """The query string, after taking the key parameter out of the environ."""
        if self.gate.query_param is None:
            return b""
        query = _raw(environ.get("QUERY_STRING", ""))
        environ["QUERY_STRING"] = self.gate.strip_query(query).decode("latin-1")
        for name in ("REQUEST_URI", "RAW_URI"):  # what uWSGI and Gunicorn log
            path, mark, rest = str(environ.get(name, "")).partition("?")
            if mark:
                stripped = self.gate.strip_query(_raw(rest)).decode("latin-1")
                environ[name] = f"{path}?{stripped}" if stripped else path
        return query


_UNPREFIXED = ("CONTENT_TYPE", "CONTENT_LENGTH")


def _environ_key(name: bytes) -> str:
    return "HTTP_" + name.decode("latin-1").upper().replace("-", "_")


def _header_name(environ_key: str) -> bytes:
    return environ_key.removeprefix("HTTP_").lower().replace("_", "-").encode("latin-1")


def _raw(value: Any) -> bytes:
    # "replace": a str that is not latin-1, against PEP 3333, is a bad key, not a 500.
    return str(value).encode("latin-1", "replace")


def _answer(problem: Problem, start_response: StartResponse) -> list[bytes]:
    status = f"{problem.status} {http.HTTPStatus(problem.status).phrase}"
    start_response(status, [(n.decode("latin-1"), v.decode("latin-1")) for n, v in problem.raw_headers()])
    return [problem.body()]


def _adding(start_response: StartResponse, headers: list[tuple[str, str]]) -> StartResponse:
    def start(status: str, response_headers: list[tuple[str, str]], *args: Any) -> Any:
        return start_response(status, [*response_headers, *headers], *args)

    return start
