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
from ._gate import Gate
from ._problem import Problem

__all__ = ["KeyAuthWSGIMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class KeyAuthWSGIMiddleware:
    """Verify the API key of every request before the WSGI app sees it.

    The options are those of :class:`KeyAuthMiddleware` (``store``/``verifier``,
    ``header``, ``exclude_paths``, ``allow_anonymous``, ``permissions``, ``cost``,
    ``ratelimits``, ``api_id``, ``ratelimit_headers``, cache options); the answers
    are the same problem+json responses.
    """

    def __init__(self, app: WSGIApp, **options: Any) -> None:
        self.app = app
        self.gate = Gate(**options)
        self._environ_key = "HTTP_" + self.gate.header.decode("latin-1").upper().replace("-", "_")

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        gate = self.gate
        environ["keystile"] = None
        if gate.excluded(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        key = gate.read(self._headers(environ))
        if key is None:
            return self.app(environ, start_response)
        if isinstance(key, Problem):
            return _answer(key, start_response)
        try:
            result = gate.verifier.verify_request(key, gate.request, environ.get("REMOTE_ADDR"))
        except KeystileError as exc:
            return _answer(gate.failure(exc), start_response)
        if not result.valid:
            return _answer(gate.rejection(result), start_response)
        environ["keystile"] = result
        extra = [(name.decode("latin-1"), value.decode("latin-1"))
                 for name, value in gate.success_headers(result)]
        if extra:
            start_response = _adding(start_response, extra)
        return self.app(environ, start_response)

    def _headers(self, environ: Environ) -> list[tuple[bytes, bytes]]:
        # PEP 3333 hands header values over as latin-1 decoded str; servers join
        # repeated headers with commas, which the key reader rejects.
        value = environ.get(self._environ_key)
        return [] if value is None else [(self.gate.header, value.encode("latin-1"))]


def _answer(problem: Problem, start_response: StartResponse) -> list[bytes]:
    status = f"{problem.status} {http.HTTPStatus(problem.status).phrase}"
    start_response(status, [(n.decode("latin-1"), v.decode("latin-1")) for n, v in problem.raw_headers()])
    return [problem.body()]


def _adding(start_response: StartResponse, headers: list[tuple[str, str]]) -> StartResponse:
    def start(status: str, response_headers: list[tuple[str, str]], *args: Any) -> Any:
        return start_response(status, [*response_headers, *headers], *args)

    return start
