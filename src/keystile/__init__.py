"""keystile: API-key authentication for Python web services.

A pure ASGI middleware that turns ``Authorization: Bearer sk_live_…`` into a
verified identity, permissions and rate-limit state on the request, backed by a
local cache in front of a store (memory, SQLite by default), plus a typed API to
issue and manage keys.

>>> ks = Keystile("memory://")
>>> api = ks.create_api("docs", prefix="sk_docs")
>>> created = ks.create_key(api.id, permissions=["docs.read"])
>>> ks.verify(created.key, permissions="docs.read").code
<Code.VALID: 'VALID'>
"""

from __future__ import annotations

from ._analytics import Analytics, Bucket, Event, Top
from ._async import AsyncKeystile
from ._decorator import require_key
from ._errors import (
    ConfigurationError,
    ConflictError,
    KeystileError,
    NotFoundError,
    PermissionQueryError,
    ProtectedError,
    StoreError,
    StoreUnavailableError,
    UnknownRatelimitError,
    ValidationError,
    VaultError,
)
from ._keys import generate_key, hash_key
from ._manage import UNSET, KeyPage, Keystile
from ._metrics import HistogramSnapshot, Metrics, MetricsSnapshot
from ._middleware import KeyAuthMiddleware, KeyUser
from ._models import (
    Api,
    Code,
    CreatedKey,
    Credits,
    Identity,
    KeyInfo,
    KeyRecord,
    Keyspace,
    Permission,
    RatelimitConfig,
    RatelimitResult,
    Refill,
    Role,
    VerifyRequest,
    VerifyResult,
)
from ._permissions import PermissionQuery, parse_query
from ._verify import Verifier
from ._wsgi import KeyAuthWSGIMiddleware
from .stores import MemoryStore, SQLiteStore, Store, open_store

__version__ = "0.1.0"

__all__ = [
    "UNSET",
    "Analytics",
    "Api",
    "AsyncKeystile",
    "Bucket",
    "Code",
    "ConfigurationError",
    "ConflictError",
    "CreatedKey",
    "Credits",
    "Event",
    "HistogramSnapshot",
    "Identity",
    "KeyAuthMiddleware",
    "KeyAuthWSGIMiddleware",
    "KeyInfo",
    "KeyPage",
    "KeyRecord",
    "KeyUser",
    "Keyspace",
    "Keystile",
    "KeystileError",
    "MemoryStore",
    "Metrics",
    "MetricsSnapshot",
    "NotFoundError",
    "Permission",
    "PermissionQuery",
    "PermissionQueryError",
    "ProtectedError",
    "RatelimitConfig",
    "RatelimitResult",
    "Refill",
    "Role",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "Top",
    "UnknownRatelimitError",
    "ValidationError",
    "VaultError",
    "Verifier",
    "VerifyRequest",
    "VerifyResult",
    "__version__",
    "generate_key",
    "hash_key",
    "open_store",
    "parse_query",
    "require_key",
]
