"""A one-file Django project protected by keystile's WSGI middleware.

    pip install django
    KEYSTILE_STORE=sqlite:///keys.db python -m keystile_examples.django_app 127.0.0.1:8000

The verified result is in ``request.META["keystile"]`` (Django's ``META`` is the WSGI
environ).
"""

from __future__ import annotations

import sys
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path

from keystile import KeyAuthWSGIMiddleware, Keystile, VerifyResult


def hello(request: HttpRequest) -> JsonResponse:
    result: VerifyResult = request.META["keystile"]
    return JsonResponse({"keyId": result.key_id, "permissions": list(result.permissions),
                         "creditsLeft": result.credits})


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [path("hello", hello), path("health", health)]


def build_app(store: str | Keystile | None = None) -> KeyAuthWSGIMiddleware:
    """The Django WSGI application wrapped by keystile (configures Django once)."""
    if not settings.configured:
        settings.configure(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], DEBUG=False,
                           SECRET_KEY="keystile-example-not-secret", MIDDLEWARE=[],
                           INSTALLED_APPS=[])
    from django.core.wsgi import get_wsgi_application

    source: dict[str, Any] = {"verifier": store} if isinstance(store, Keystile) else {"store": store}
    return KeyAuthWSGIMiddleware(get_wsgi_application(), exclude_paths=["/health"], **source)


if __name__ == "__main__":  # pragma: no cover
    from wsgiref.simple_server import make_server

    host, _, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8000").partition(":")
    make_server(host, int(port), build_app()).serve_forever()
