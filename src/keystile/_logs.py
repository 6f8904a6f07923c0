"""What keystile's log records carry: ids and a store URL fit to show, never a secret.

Every record of the ``keystile`` loggers has a message for people and the same facts
as ``extra`` fields for machines (a JSON formatter prints them as they are):
``key_id``, ``keyspace_id``, ``api_id``, ``code``, ``store`` (its URL without password
or credentials in the query), ``operation``, ``error`` (the exception's type), and
where they apply ``events`` (analytics), ``channel`` (Redis invalidations),
``request_id`` (keystile serve). A plaintext key or a root key is never among them,
nor in a message.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ._models import KeyRecord, VerifyResult

__all__ = ["failure_fields", "key_fields", "safe_url"]

# Query options keystile's URLs take; any other value may be a credential (redis-py
# reads ``?password=`` from the query too) and is masked.
_SHOWN_OPTIONS = frozenset({"prefix", "prefixes", "timeout", "db"})


def safe_url(url: str) -> str:
    """``url`` without its password and with credentials in its query masked.

    >>> safe_url("redis://app:s3cret@redis.internal:6379/0?prefix=ks:&password=x")
    'redis://app:***@redis.internal:6379/0?prefix=ks:&password=***'
    """
    parts = urlsplit(url)
    if parts.password is None and not parts.query:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = urlencode([(name, value if name in _SHOWN_OPTIONS else "***")
                       for name, value in parse_qsl(parts.query, keep_blank_values=True)], safe="*:,")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def failure_fields(store: str | None, operation: str | None, error: BaseException,
                   **more: Any) -> dict[str, Any]:
    """The ``extra`` of a record about a failed store trip (or write), and ``more``."""
    return {"store": store, "operation": operation, "error": type(error).__name__, **more}


def key_fields(item: VerifyResult | KeyRecord, **more: Any) -> dict[str, Any]:
    """The ``extra`` of a record about one key: its ids (and a result's code), and ``more``."""
    fields = {"key_id": item.key_id, "keyspace_id": item.keyspace_id, "api_id": item.api_id}
    if isinstance(item, VerifyResult):
        fields["code"] = item.code.value
    fields.update(more)
    return fields
