"""The public surface: exactly these names, each importable from ``keystile``."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import keystile

PUBLIC_NAMES = [
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


def test_if_the_public_names_are_listed_then_they_are_exactly_the_pinned_ones() -> None:
    assert keystile.__all__ == PUBLIC_NAMES


def test_if_the_public_names_are_listed_then_none_is_repeated() -> None:
    assert len(set(keystile.__all__)) == len(keystile.__all__)


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_if_a_public_name_is_imported_then_it_exists(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from keystile import {name}", namespace)
    assert namespace[name] is getattr(keystile, name)


def test_if_star_is_imported_then_exactly_the_public_names_arrive() -> None:
    namespace: dict[str, object] = {}
    exec("from keystile import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(PUBLIC_NAMES)


def test_if_the_errors_are_public_then_all_descend_from_keystile_error() -> None:
    errors = [getattr(keystile, name) for name in PUBLIC_NAMES if name.endswith("Error")]
    assert len(errors) == 11
    assert all(issubclass(error, keystile.KeystileError) for error in errors)
    assert issubclass(keystile.StoreUnavailableError, keystile.StoreError)
    assert issubclass(keystile.PermissionQueryError, ValueError)
    assert issubclass(keystile.ValidationError, ValueError)


def test_if_the_version_is_read_then_it_is_a_dotted_string() -> None:
    assert isinstance(keystile.__version__, str)
    assert all(part.isdigit() for part in keystile.__version__.split("."))


PRIVATE_MODULES = sorted(
    info.name for info in pkgutil.iter_modules(keystile.__path__, "keystile.")
    if info.name.rsplit(".", 1)[1].startswith("_") and not info.name.startswith("keystile._demo")
)


def test_if_private_modules_are_listed_then_the_core_ones_are_there() -> None:
    assert {"keystile._keys", "keystile._permissions", "keystile._ratelimit", "keystile._credits",
            "keystile._decide", "keystile._extract", "keystile._problem"} <= set(PRIVATE_MODULES)


@pytest.mark.parametrize("module_name", PRIVATE_MODULES)
def test_if_a_private_module_declares_all_then_every_name_in_it_exists(module_name: str) -> None:
    module = importlib.import_module(module_name)
    declared = getattr(module, "__all__", None)
    assert declared is not None, f"{module_name} has no __all__"
    assert [name for name in declared if not hasattr(module, name)] == []


def test_async_keystile_has_every_public_method_of_keystile_awaitable() -> None:
    import inspect

    from keystile import AsyncKeystile, Keystile

    public = [name for name, value in vars(Keystile).items()
              if not name.startswith("_") and callable(value)]
    missing = [name for name in public if not inspect.iscoroutinefunction(getattr(AsyncKeystile, name, None))]

    assert "update_refill" in public and missing == []
