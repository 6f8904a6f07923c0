"""Django REST framework cases, driven in-process through Django's WSGI handler.

Django is configured once per process (a SQLite file of its own, no
middleware, JSON renderer only, DEBUG off). Three views share one URLconf:
``/bare/`` (AllowAny, the baseline), ``/api-key/`` (djangorestframework-api-key's
``HasAPIKey``, a database query per request, as its docs set it up) and
``/keystile/`` (keystile's :class:`~keystile.Verifier` in a DRF authentication
class, cache hit on a memory store).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from keystile import Verifier, VerifyRequest

from .fixture import Fixture, wrong_key

if TYPE_CHECKING:
    from .cases import Target

__all__ = ["target"]

_state: dict[str, Any] = {}
_NO_OPTIONS = VerifyRequest()


def target(fixture: Fixture, variant: str) -> Target:
    from .cases import Target

    wsgi = _setup()
    if variant == "bare":
        return Target(wsgi, (), None, missing_status=200, interface="wsgi", path="/bare/")
    if variant == "api_key":
        key = _state["api_key"]
        return Target(wsgi, (("authorization", f"Api-Key {key}"),),
                      (("authorization", f"Api-Key {key}x"),), missing_status=403, wrong_status=403,
                      interface="wsgi", path="/api-key/")
    key = fixture.memory().key
    _state["verifier"] = fixture.memory().ks.verifier
    return Target(wsgi, (("authorization", f"Bearer {key}"),),
                  (("authorization", f"Bearer {wrong_key(key)}"),), interface="wsgi",
                  path="/keystile/")


def _setup() -> Any:
    if "wsgi" in _state:
        return _state["wsgi"]
    import django
    from django.conf import settings

    # The harness calls the WSGI app synchronously from inside its asyncio loop, one
    # request at a time; Django's guard against ORM calls from async code does not apply.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from django.core.management import call_command

    settings.configure(
        DEBUG=False, SECRET_KEY="keystile-bench-not-secret", ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__, MIDDLEWARE=[], USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework",
                        "rest_framework_api_key"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _database()}},
        REST_FRAMEWORK={"DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
                        "DEFAULT_AUTHENTICATION_CLASSES": [],
                        "DEFAULT_PERMISSION_CLASSES": []},
    )
    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    from django.core.wsgi import get_wsgi_application
    from rest_framework_api_key.models import APIKey

    _, _state["api_key"] = APIKey.objects.create_key(name="bench")
    _state["wsgi"] = get_wsgi_application()
    return _state["wsgi"]


def _database() -> str:
    """A SQLite file for the life of the process: Django is configured only once."""
    directory = tempfile.mkdtemp(prefix="keystile-bench-drf-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return os.path.join(directory, "drf.db")


def _views() -> list[Any]:
    from django.urls import path
    from rest_framework.authentication import BaseAuthentication
    from rest_framework.exceptions import AuthenticationFailed
    from rest_framework.permissions import AllowAny, IsAuthenticated
    from rest_framework.response import Response
    from rest_framework.views import APIView
    from rest_framework_api_key.permissions import HasAPIKey

    class KeystileAuthentication(BaseAuthentication):  # type: ignore[misc]
        """``Authorization: Bearer <key>`` verified by keystile (what a DRF user would write)."""

        def authenticate(self, request: Any) -> tuple[Any, Any] | None:
            header = request.META.get("HTTP_AUTHORIZATION")
            if not header:
                return None
            scheme, _, key = header.partition(" ")
            if scheme.lower() != "bearer" or not key:
                raise AuthenticationFailed("expected 'Authorization: Bearer <key>'")
            verifier: Verifier = _state["verifier"]
            result = verifier.verify_request(key, _NO_OPTIONS)
            if not result.valid:
                raise AuthenticationFailed(result.code.value)
            return _KeyUser(result.key_id), result

        def authenticate_header(self, request: Any) -> str:
            return 'Bearer realm="api"'

    class Bare(APIView):  # type: ignore[misc]
        authentication_classes: tuple[Any, ...] = ()
        permission_classes: tuple[Any, ...] = (AllowAny,)

        def get(self, request: Any) -> Response:
            return Response({"ok": True})

    class WithApiKey(Bare):
        permission_classes = (HasAPIKey,)

    class WithKeystile(Bare):
        authentication_classes = (KeystileAuthentication,)
        permission_classes = (IsAuthenticated,)

    return [path("bare/", Bare.as_view()), path("api-key/", WithApiKey.as_view()),
            path("keystile/", WithKeystile.as_view())]


class _KeyUser:
    is_authenticated = True

    def __init__(self, key_id: str | None) -> None:
        self.key_id = key_id


def __getattr__(name: str) -> Any:
    # Django imports this module as the URLconf after settings are configured.
    if name == "urlpatterns":
        patterns = _state.setdefault("urlpatterns", _views())
        return patterns
    raise AttributeError(name)
