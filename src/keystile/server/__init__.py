"""``keystile serve``: Unkey's v2 HTTP API on any keystile store.

Unkey's own SDKs (``unkey-py``) work against it unchanged; keystile apps can use it
as their remote store. ``build_app(store_url)`` gives the ASGI app;
:class:`RootKeys` issues the root keys that may call it.

>>> from keystile import Keystile
>>> ks = Keystile("memory://")
>>> app = build_app(ks)
>>> root = RootKeys(ks).create(["api.*.create_api", "api.*.verify_key"])
"""

from __future__ import annotations

from .app import OPERATIONS, build_app
from .openapi import openapi_document
from .rootkeys import ROOT_ACTIONS, ROOT_PREFIX, Principal, RootKeys, check_root_permissions

__all__ = [
    "OPERATIONS",
    "ROOT_ACTIONS",
    "ROOT_PREFIX",
    "Principal",
    "RootKeys",
    "build_app",
    "check_root_permissions",
    "openapi_document",
]
