"""A Flask app protected by keystile's WSGI middleware.

    pip install flask
    KEYSTILE_STORE=sqlite:///keys.db flask --app keystile_examples.flask_app:app run
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from keystile import KeyAuthWSGIMiddleware, Keystile, VerifyResult


def build_app(store: str | Keystile | None = None) -> Flask:
    app = Flask(__name__)
    source: dict[str, Any] = {"verifier": store} if isinstance(store, Keystile) else {"store": store}
    app.wsgi_app = KeyAuthWSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, exclude_paths=["/health"], **source)

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/hello")
    def hello() -> dict[str, Any]:
        result: VerifyResult = request.environ["keystile"]
        return {"keyId": result.key_id, "permissions": list(result.permissions),
                "creditsLeft": result.credits}

    return app


def __getattr__(name: str) -> Flask:
    if name == "app":
        return build_app()
    raise AttributeError(name)
