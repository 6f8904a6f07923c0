"""The typed objects of keystile: what is stored, what a verify returns.

Everything here is an immutable dataclass. ``to_dict()`` gives the JSON shape with
Unkey's camelCase field names, omitting unset optional fields as Unkey does.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast

from ._errors import PermissionQueryError, ValidationError
from ._permissions import parse_query

_T = TypeVar("_T")


def builder(cls: type[_T]) -> Callable[..., _T]:
    """A constructor of the frozen slots dataclass ``cls`` for the hot paths: every
    field by position, in order, no defaults; the object is a true ``cls``, equal to
    the one ``cls(...)`` builds.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``,
    a slow call: it is most of the cost of a result (1.3 us for the 15 fields of a
    :class:`VerifyResult`). This one fills a plain twin of ``cls`` (the same slots, in
    the same order, so the same memory layout) with plain stores, then makes it a
    ``cls`` by assigning ``__class__``, which Python allows between classes of one
    layout: about a fifth of the time. Where Python refuses that, it is ``cls`` itself.
    Refused (``TypeError``) for a class it cannot serve: no slots, not frozen, or a
    ``__post_init__`` it would skip.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen dataclass with slots")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__")
    names = [spec.name for spec in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if tuple(names) != tuple(cls.__dict__["__slots__"]) or cls.__bases__ != (object,):
        raise TypeError(f"{cls.__name__}: its slots are not its fields (inherited fields?)")
    namespace: dict[str, Any] = {"_cls": cls}
    body = [f"    self.{name} = {name}" for name in names]
    exec(f"def __init__(self, {', '.join(names)}):\n" + "\n".join(body)
         + "\n    self.__class__ = _cls", namespace)
    twin = type(f"_{cls.__name__}Builder", (), {
        "__slots__": tuple(names), "__init__": namespace["__init__"],
        "__module__": cls.__module__, "__qualname__": f"{cls.__qualname__}.build"})
    try:
        probe = twin(*names)  # the layouts must match: Python refuses the assignment otherwise
    except TypeError:  # pragma: no cover - a Python that refuses it: the plain constructor
        return cls
    if type(probe) is not cls or [getattr(probe, name) for name in names] != names:
        return cls  # pragma: no cover - likewise
    return cast(Callable[..., _T], twin)


__all__ = [
    "Api",
    "Code",
    "CreatedKey",
    "Credits",
    "Identity",
    "KeyInfo",
    "KeyRecord",
    "Keyspace",
    "Permission",
    "RatelimitConfig",
    "RatelimitResult",
    "Refill",
    "Role",
    "VerifyRequest",
    "VerifyResult",
]

JSON = dict[str, Any]
Interval = Literal["daily", "monthly"]


def _set_fields(out: JSON, **optional: Any) -> JSON:
    """``out`` plus each optional field that is set: not ``None``, not an empty list."""
    out.update((name, value) for name, value in optional.items() if value is not None and value != [])
    return out


class Code(enum.StrEnum):
    """Verification outcomes, in the order Unkey decides them."""

    NOT_FOUND = "NOT_FOUND"
    DISABLED = "DISABLED"
    EXPIRED = "EXPIRED"
    FORBIDDEN = "FORBIDDEN"
    INSUFFICIENT_PERMISSIONS = "INSUFFICIENT_PERMISSIONS"
    RATE_LIMITED = "RATE_LIMITED"
    USAGE_EXCEEDED = "USAGE_EXCEEDED"
    VALID = "VALID"


@dataclass(frozen=True, slots=True)
class Refill:
    """Credits refill: ``daily`` at 00:00 UTC or ``monthly`` on ``refill_day``."""

    interval: Interval
    amount: int
    refill_day: int | None = None

    def to_dict(self) -> JSON:
        return _set_fields({"interval": self.interval, "amount": self.amount},
                           refillDay=self.refill_day)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Refill:
        return cls(data["interval"], int(data["amount"]), data.get("refillDay"))


@dataclass(frozen=True, slots=True)
class Credits:
    """A key's credits: ``remaining=None`` means unlimited."""

    remaining: int | None
    refill: Refill | None = None

    def to_dict(self) -> JSON:
        out: JSON = {"remaining": self.remaining}
        if self.refill is not None:
            out["refill"] = self.refill.to_dict()
        return out


@dataclass(frozen=True, slots=True)
class RatelimitConfig:
    """A named rate limit: ``limit`` requests per ``duration`` milliseconds."""

    name: str
    limit: int
    duration: int
    auto_apply: bool = False
    id: str = ""

    def to_dict(self) -> JSON:
        return {
            "id": self.id,
            "name": self.name,
            "limit": self.limit,
            "duration": self.duration,
            "autoApply": self.auto_apply,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RatelimitConfig:
        return cls(
            name=data["name"],
            limit=int(data["limit"]),
            duration=int(data["duration"]),
            auto_apply=bool(data.get("autoApply", False)),
            id=data.get("id", ""),
        )


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a key belongs to; its rate limits are shared by all its keys."""

    id: str
    external_id: str
    meta: JSON | None = None
    ratelimits: tuple[RatelimitConfig, ...] = ()

    def to_dict(self) -> JSON:
        return _set_fields({"id": self.id, "externalId": self.external_id}, meta=self.meta,
                           ratelimits=[rl.to_dict() for rl in self.ratelimits])


@dataclass(frozen=True, slots=True)
class Api:
    """A container of keys; it owns exactly one keyspace."""

    id: str
    name: str
    keyspace_id: str
    created_at: int

    def to_dict(self) -> JSON:
        return {"id": self.id, "name": self.name, "keyspaceId": self.keyspace_id}


@dataclass(frozen=True, slots=True)
class Keyspace:
    """The key settings of an API: prefix, key length, whitelist, protection."""

    id: str
    api_id: str
    prefix: str
    default_bytes: int = 16
    store_encrypted_keys: bool = False
    ip_whitelist: tuple[str, ...] = ()
    delete_protection: bool = False
    #: Leased mode for the keys of this keyspace: units leased per store trip (0: exact).
    lease: int = 0
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default=(), compare=False, repr=False
    )

    def to_dict(self) -> JSON:
        return {
            "id": self.id,
            "apiId": self.api_id,
            "prefix": self.prefix,
            "defaultBytes": self.default_bytes,
            "storeEncryptedKeys": self.store_encrypted_keys,
            "ipWhitelist": list(self.ip_whitelist),
            "deleteProtection": self.delete_protection,
            "lease": self.lease,
        }


@dataclass(frozen=True, slots=True)
class Permission:
    id: str
    name: str
    slug: str
    description: str | None = None

    def to_dict(self) -> JSON:
        return _set_fields({"id": self.id, "name": self.name, "slug": self.slug},
                           description=self.description)


@dataclass(frozen=True, slots=True)
class Role:
    id: str
    name: str
    description: str | None = None
    permissions: tuple[str, ...] = ()

    def to_dict(self) -> JSON:
        return _set_fields({"id": self.id, "name": self.name}, description=self.description,
                           permissions=list(self.permissions))


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What verification needs of a key: the static part, safe to cache.

    ``permissions`` (sorted) already holds the permissions of the key's roles. Credits and
    rate-limit counters are not here: they live in the store and are never decided
    from a cached copy.
    """

    key_id: str
    keyspace_id: str
    api_id: str
    name: str | None
    meta: JSON | None
    expires: int | None
    enabled: bool
    roles: tuple[str, ...]
    permissions: tuple[str, ...]
    ratelimits: tuple[RatelimitConfig, ...]
    identity: Identity | None
    credits_limited: bool
    #: Leased mode for this key (units per store trip); ``None``: its keyspace's setting.
    lease: int | None = None
    #: The key whose credits and key-scoped rate-limit counters this one spends (a
    #: rerolled key shares those of the key it replaced); ``None``: its own.
    states_of: str | None = None
    permission_set: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    #: True when a verify of this key needs no store trip (no credits, no auto-applied limit).
    static_only: bool = field(default=False, compare=False, repr=False)
    _permits: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Derived, so dataclasses.replace(record, permissions=...) cannot keep stale values.
        object.__setattr__(self, "permission_set", frozenset(self.permissions))
        auto = any(rl.auto_apply for rl in self.ratelimits) or bool(
            self.identity and any(rl.auto_apply for rl in self.identity.ratelimits))
        object.__setattr__(self, "static_only", not self.credits_limited and not auto)
        object.__setattr__(self, "_permits", {})

    def permits(self, query: str) -> bool:
        """Whether the key's permissions satisfy ``query`` (answers are memoised per record)."""
        try:
            return self._permits[query]
        except KeyError:
            if len(self._permits) >= 256:
                self._permits.clear()
            allowed = self._permits[query] = parse_query(query).allows(self.permission_set)
            return allowed


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as management sees it (never the plaintext, never the hash)."""

    id: str
    api_id: str
    keyspace_id: str
    start: str
    enabled: bool
    created_at: int
    updated_at: int | None = None
    name: str | None = None
    meta: JSON | None = None
    expires: int | None = None
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    ratelimits: tuple[RatelimitConfig, ...] = ()
    credits: Credits | None = None
    identity: Identity | None = None
    #: When the key was last verified (from analytics: to within a minute or so).
    last_used_at: int | None = None

    def to_dict(self) -> JSON:
        out: JSON = {
            "keyId": self.id,
            "start": self.start,
            "enabled": self.enabled,
            "createdAt": self.created_at,
        }
        return _set_fields(
            out,
            apiId=self.api_id,
            name=self.name,
            meta=self.meta,
            updatedAt=self.updated_at,
            lastUsedAt=self.last_used_at,
            expires=self.expires,
            credits=self.credits.to_dict() if self.credits else None,
            identity=self.identity.to_dict() if self.identity else None,
            roles=list(self.roles),
            permissions=list(self.permissions),
            ratelimits=[rl.to_dict() for rl in self.ratelimits],
        )


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """The answer to creating a key: the only time the plaintext is seen."""

    key_id: str
    key: str = field(repr=False)

    def to_dict(self) -> JSON:
        return {"keyId": self.key_id, "key": self.key}


@dataclass(frozen=True, slots=True)
class VerifyRequest:
    """What the route asks of a key besides the key itself.

    A malformed permission query or a negative cost raises here, at construction,
    so a route's requirements fail at startup rather than on the first request.
    """

    permissions: str | None = None
    cost: int | None = None
    ratelimits: tuple[str | Mapping[str, Any], ...] = ()
    api_id: str | None = None
    ip: str | None = None
    tags: tuple[str, ...] = ()
    #: Apply the key's and identity's auto-applied limits (off for a route's extra
    #: charge after the middleware has applied them once).
    auto_apply: bool = True

    def __post_init__(self) -> None:
        if self.permissions is not None:
            if not isinstance(self.permissions, str):
                raise PermissionQueryError(
                    "a permission query must be a string such as 'a AND b', not "
                    f"{type(self.permissions).__name__}", query=repr(self.permissions), position=0)
            parse_query(self.permissions)
        if self.cost is not None and not _natural(self.cost):
            raise ValidationError("cost must be an integer, 0 or more")
        if isinstance(self.ratelimits, (str, Mapping)):
            object.__setattr__(self, "ratelimits", (self.ratelimits,))
        # A spec given as a mapping is copied read-only: a plan made of this request is
        # kept with the cached record (Entry.plans), so the request must not change.
        object.__setattr__(self, "ratelimits", tuple(
            spec if isinstance(spec, str) or not isinstance(spec, Mapping)
            else MappingProxyType(dict(spec)) for spec in self.ratelimits))
        for spec in self.ratelimits:
            _check_ratelimit_spec(spec)


#: The request objects that live as long as the app (a middleware's, a route's), by id.
#: Only they get plans kept with cached records, remembered answers and shared analytics
#: entries: a verify() call's own request is made for that call, and keeping anything
#: for it would only fill memory.
LASTING: dict[int, VerifyRequest] = {}


def lasting(request: VerifyRequest) -> VerifyRequest:
    """Mark ``request`` as one that is verified again and again (a route's requirements);
    returns it. Held for the process's life."""
    LASTING[id(request)] = request
    return request


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_ratelimit_spec(spec: str | Mapping[str, Any]) -> None:
    """A rate limit a verify names: ``"name"`` or ``{name, cost?, limit?, duration?}``."""
    if isinstance(spec, str):
        return
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ValidationError(f"a rate limit to apply is a name or {{'name': ...}}, not {spec!r}")
    name = spec["name"]
    if not _natural(spec.get("cost", 1)):
        raise ValidationError(f"rate limit {name!r}: cost must be an integer, 0 or more")
    if spec.get("limit") is not None and not _natural(spec["limit"]):
        raise ValidationError(f"rate limit {name!r}: limit must be an integer, 0 or more")
    if spec.get("duration") is not None and (not _natural(spec["duration"]) or spec["duration"] < 1):
        raise ValidationError(f"rate limit {name!r}: duration must be 1 ms or more")


@dataclass(frozen=True, slots=True)
class RatelimitResult:
    """One rate limit as checked by a verify; ``reset`` is the window end (Unix ms)."""

    name: str
    limit: int
    duration: int
    remaining: int
    reset: int
    exceeded: bool
    id: str = ""
    auto_apply: bool = False

    def to_dict(self) -> JSON:
        return {
            "id": self.id,
            "name": self.name,
            "limit": self.limit,
            "duration": self.duration,
            "reset": self.reset,
            "remaining": self.remaining,
            "exceeded": self.exceeded,
            "autoApply": self.auto_apply,
        }


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of a verification, with Unkey's field set.

    ``credits`` is what remains after this verification (``None``: unlimited).
    Everything but ``valid`` and ``code`` is unset for ``NOT_FOUND``.
    """

    valid: bool
    code: Code
    key_id: str | None = None
    keyspace_id: str | None = None
    api_id: str | None = None
    name: str | None = None
    meta: JSON | None = None
    expires: int | None = None
    credits: int | None = None
    enabled: bool | None = None
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    identity: Identity | None = None
    ratelimits: tuple[RatelimitResult, ...] = ()
    credits_reset: int | None = None  # keystile's own: next refill when USAGE_EXCEEDED

    def to_dict(self) -> JSON:
        """The result as Unkey's ``keys.verifyKey`` ``data`` object."""
        out: JSON = {"valid": self.valid, "code": self.code.value}
        if self.key_id is None:
            return out
        _set_fields(
            out,
            keyId=self.key_id,
            keyspaceId=self.keyspace_id,
            apiId=self.api_id,
            name=self.name,
            meta=self.meta,
            expires=self.expires,
            credits=self.credits,
            enabled=self.enabled,
            identity=self.identity.to_dict() if self.identity else None,
        )
        out["roles"] = list(self.roles)  # always present, even empty, as Unkey sends them
        out["permissions"] = list(self.permissions)
        return _set_fields(out, ratelimits=[rl.to_dict() for rl in self.ratelimits])

    @property
    def tightest_ratelimit(self) -> RatelimitResult | None:
        """The checked limit with the fewest remaining (for the RateLimit headers)."""
        limits = self.ratelimits
        if len(limits) < 2:
            return limits[0] if limits else None
        return min(limits, key=lambda rl: (rl.remaining, rl.reset))
