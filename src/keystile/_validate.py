"""Checks on management arguments: each raises :class:`ValidationError` with a clear message."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ._errors import ValidationError
from ._keys import MAX_BYTES, MIN_BYTES, PREFIX_PATTERN
from ._models import Credits, RatelimitConfig, Refill

__all__ = [
    "MAX_EXPIRES",
    "check_bytes",
    "check_cidrs",
    "check_credits",
    "check_expires",
    "check_external_id",
    "check_lease",
    "check_meta",
    "check_name",
    "check_prefix",
    "check_ratelimits",
    "check_slugs",
]

SLUG = re.compile(r"[A-Za-z0-9._\-*:/]{1,128}")
EXTERNAL_ID = re.compile(r"[A-Za-z0-9_.\-]{1,255}")
MAX_EXPIRES = 4_102_444_800_000  # 2100-01-01, Unkey's bound


def check_name(value: str, what: str, *, low: int = 1, high: int = 255) -> str:
    if not isinstance(value, str) or not low <= len(value) <= high:
        raise ValidationError(f"{what} must be a string of {low} to {high} characters")
    return value


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or PREFIX_PATTERN.fullmatch(prefix) is None:
        raise ValidationError(
            f"prefix must be 1 to 8 letters, digits or '_' (e.g. 'sk_live'), not {prefix!r}"
        )
    return prefix


def check_bytes(nbytes: int) -> int:
    if not isinstance(nbytes, int) or not MIN_BYTES <= nbytes <= MAX_BYTES:
        raise ValidationError(f"key bytes must be an integer from {MIN_BYTES} to {MAX_BYTES}")
    return nbytes


MAX_LEASE = 1_000_000


def check_lease(units: int) -> int:
    """A leased-mode batch size: 0 (exact mode) up to a million units per store trip."""
    if not isinstance(units, int) or isinstance(units, bool) or not 0 <= units <= MAX_LEASE:
        raise ValidationError(f"lease must be an integer from 0 (exact) to {MAX_LEASE}")
    return units


def check_cidrs(cidrs: Iterable[str]) -> list[str]:
    out = []
    for cidr in cidrs:
        try:
            out.append(str(ipaddress.ip_network(cidr, strict=False)))
        except ValueError as exc:
            raise ValidationError(f"ip whitelist entry {cidr!r} is not an IP or CIDR") from exc
    return out


def check_slugs(slugs: Iterable[str], what: str = "permission") -> list[str]:
    if isinstance(slugs, str) or slugs is None:
        raise ValidationError(f"{what}s must be a list of names (empty to clear), not {slugs!r}")
    out = []
    for slug in slugs:
        if not isinstance(slug, str) or SLUG.fullmatch(slug) is None:
            raise ValidationError(
                f"{what} {slug!r} must be 1 to 128 letters, digits or . _ - * : /"
            )
        out.append(slug)
    return sorted(set(out))


def check_external_id(value: str) -> str:
    if not isinstance(value, str) or EXTERNAL_ID.fullmatch(value) is None:
        raise ValidationError("externalId must be 1 to 255 letters, digits or . _ -")
    return value


def check_meta(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise ValidationError("meta must be a JSON object")
    try:
        return dict(json.loads(json.dumps(meta, allow_nan=False)))  # NaN is not JSON
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"meta must be JSON-serialisable: {exc}") from exc


def check_expires(expires: int | dt.datetime | None) -> int | None:
    if expires is None:
        return None
    if isinstance(expires, dt.datetime):
        if expires.tzinfo is None:
            raise ValidationError("expires must be a timezone-aware datetime or Unix ms")
        expires = int(expires.timestamp() * 1000)
    if isinstance(expires, bool) or not isinstance(expires, int) or not 0 <= expires <= MAX_EXPIRES:
        raise ValidationError(f"expires must be Unix milliseconds from 0 to {MAX_EXPIRES}")
    return expires


def check_ratelimits(limits: Iterable[RatelimitConfig | Mapping[str, Any]]) -> list[RatelimitConfig]:
    out: dict[str, RatelimitConfig] = {}
    for item in limits:
        config = item if isinstance(item, RatelimitConfig) else _ratelimit_from_mapping(item)
        check_name(config.name, "rate limit name", high=128)
        if not isinstance(config.limit, int) or config.limit < 1:
            raise ValidationError(f"rate limit {config.name!r}: limit must be 1 or more")
        if not isinstance(config.duration, int) or not 1000 <= config.duration <= 2_592_000_000:
            raise ValidationError(
                f"rate limit {config.name!r}: duration must be 1000 ms to 30 days in ms"
            )
        if config.name in out:
            raise ValidationError(f"rate limit {config.name!r} is given twice")
        out[config.name] = config
    return list(out.values())


def _ratelimit_from_mapping(item: Mapping[str, Any]) -> RatelimitConfig:
    try:
        return RatelimitConfig(
            name=item["name"], limit=item["limit"], duration=item["duration"],
            auto_apply=bool(item.get("autoApply", item.get("auto_apply", False))),
            id=item.get("id", ""),
        )
    except KeyError as exc:
        raise ValidationError(f"a rate limit needs name, limit and duration: missing {exc}") from exc


def check_credits(credits: Credits | int | None) -> Credits | None:
    if credits is None:
        return None
    if isinstance(credits, int) and not isinstance(credits, bool):
        credits = Credits(credits)
    if not isinstance(credits, Credits):
        raise ValidationError("credits must be an int, a Credits object or None")
    if credits.remaining is not None and (
        not isinstance(credits.remaining, int) or credits.remaining < 0
    ):
        raise ValidationError("credits remaining must be 0 or more")
    if credits.refill is not None:
        _check_refill(credits.refill, credits.remaining)
    return credits


def _check_refill(refill: Refill, remaining: int | None) -> None:
    if remaining is None:
        raise ValidationError("a refill needs limited credits (remaining is unlimited)")
    if refill.interval not in ("daily", "monthly"):
        raise ValidationError("refill interval must be 'daily' or 'monthly'")
    if not isinstance(refill.amount, int) or refill.amount < 1:
        raise ValidationError("refill amount must be 1 or more")
    if refill.refill_day is not None:
        if refill.interval != "monthly":
            raise ValidationError("refill day only applies to a monthly refill")
        if not 1 <= refill.refill_day <= 31:
            raise ValidationError("refill day must be from 1 to 31")
