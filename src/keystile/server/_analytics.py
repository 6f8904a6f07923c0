"""``analytics.getVerifications``: Unkey's SQL over the verifications the store recorded.

The query is parsed and evaluated by keystile's own small SQL (:mod:`keystile._sql`,
:mod:`keystile._sqleval`): never ``eval``, never SQL handed to SQLite or Redis. The
tables are Unkey's (the ``_v1`` suffix may be left off):

- ``key_verifications_v1``: one row per verification: ``time`` (Unix ms), ``outcome``
  (the code: ``VALID``, ``RATE_LIMITED``, …), ``key_id``, ``key_space_id``, ``api_id``,
  ``identity_id``, ``external_id``, ``tags`` (an array), ``region``, ``spent_credits``.
  A missing id is ``''``, as in ClickHouse.
- ``key_verifications_per_{minute,hour,day,month}_v1``: one row per bucket and distinct
  (``outcome``, ``key_id``, ``key_space_id``, ``api_id``, ``identity_id``, ``external_id``,
  ``tags``, ``region``), with ``time`` the bucket's start (Unix ms, UTC), ``count`` and
  ``spent_credits``.

Only the time range the WHERE bounds is read (``time >= now() - INTERVAL 7 DAY``,
``time BETWEEN a AND b``, …, in its top-level ANDs); with no lower bound, the whole
retention (``Analytics.retention_days``, 30 days by default) is read, and a lower bound
before the start of the day (of the month, for the monthly table) retention reaches
back to is a 400. Equalities on ids and outcomes and ``has(tags, …)`` are handed to the
store's own filter. A query reading more than :data:`MAX_EVENTS` events is a 422;
answers stop at :data:`MAX_ROWS` rows, as Unkey's do.

A root key needs ``api.*.read_analytics``, or ``api.<apiId>.read_analytics`` for some
APIs: then it sees the rows of those APIs only, and naming another API in the query is
a 403. Verifications of root keys are never shown; those of unknown keys (``NOT_FOUND``
with no key) only to ``api.*.read_analytics``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .. import _sql
from .._analytics import Analytics, Event, EventFilter, records_events
from .._sql import MAX_QUERY_LENGTH, Column, InList, Literal, Node, SqlError, parse, walk
from .._sqleval import Plan, bounds, conjuncts, plan, run
from .._sqlfunctions import Span, shift, start_of
from ._errors import ApiError
from ._ops import Body, Call, Operation
from ._schema import FREE_OBJECT, array, obj, string

__all__ = ["MAX_EVENTS", "MAX_ROWS", "OPERATIONS", "TABLES"]

#: At most this many events are read for one query (beyond: 422).
MAX_EVENTS = 1_000_000
#: At most this many rows are answered (as Unkey caps its answers).
MAX_ROWS = 10_000
_DAY: Final = 86_400_000
DIMENSIONS: Final = ("outcome", "key_id", "key_space_id", "api_id", "identity_id", "external_id",
                     "tags", "region")
_MISSING: Final = {"request_id": "keystile does not record request ids",
                   "workspace_id": "keystile has no workspaces"}


@dataclass(frozen=True)
class Table:
    """A table of queries; ``bucket`` (``MINUTE`` … ``MONTH``) for the aggregated ones."""

    name: str
    columns: tuple[str, ...]
    bucket: str | None = None


_RAW = Table("key_verifications_v1", ("time", *DIMENSIONS, "spent_credits"))
_AGGREGATED = [Table(f"key_verifications_per_{unit.lower()}_v1", ("time", *DIMENSIONS, "count",
                                                                  "spent_credits"), unit)
               for unit in ("MINUTE", "HOUR", "DAY", "MONTH")]
TABLES: Final[dict[str, Table]] = {
    **{table.name: table for table in (_RAW, *_AGGREGATED)},
    **{table.name.removesuffix("_v1"): table for table in (_RAW, *_AGGREGATED)},
}


def get_verifications(call: Call, body: Body) -> list[dict[str, Any]]:
    call.require_anywhere("api", "read_analytics")
    if not records_events(call.ks.store):
        raise ApiError(412, "unkey/application/precondition_failed",
                       "This server's store keeps no analytics events.")
    now = call.ks.now()
    try:
        select = parse(body["query"])
        table = _table(select.table, select.table_pos)
        query = plan(select, table.columns, _MISSING)
        readable = _readable(call, query)
        since, until = _span(query, table, now, _retention_ms(call))
        events = _events(call, query, readable, since, until)
        return run(query, _rows(events, table), now=now, max_rows=MAX_ROWS)
    except SqlError as exc:
        raise _invalid(exc) from exc


def _table(name: str, position: int) -> Table:
    table = TABLES.get(name)
    if table is None:
        names = ", ".join(t.name for t in (_RAW, *_AGGREGATED))
        raise SqlError(f"there is no table {name}; the tables are {names}", position,
                       code="invalid_analytics_table")
    return table


def _retention_ms(call: Call) -> int:
    recorder = call.ks.verifier.events
    days = recorder.options.retention_days if recorder is not None else Analytics().retention_days
    return int(days * _DAY)


def _invalid(exc: SqlError) -> ApiError:
    issue = {"location": "body.query", "message": str(exc)}
    if exc.fix:
        issue["fix"] = exc.fix
    return ApiError(400, f"user/bad_request/{exc.code}", f"The query cannot run: {exc}",
                    errors=[issue])


# -- who may read what ----------------------------------------------------------------------------


def _readable(call: Call, query: Plan) -> frozenset[str] | None:
    """The APIs whose rows the root key may read (``None``: every one); 403 if the query
    names another."""
    if call.principal.allows("api", "read_analytics"):
        return None
    readable = call.principal.resources("api", "read_analytics")
    others = sorted(_named_apis(query.where) - readable)
    if others:
        raise ApiError(403, "unkey/authorization/insufficient_permissions",
                       f"The root key may read the analytics of {', '.join(sorted(readable))} only, "
                       f"and the query names {', '.join(others)}: it needs api.*.read_analytics or "
                       + " and ".join(f"api.{api}.read_analytics" for api in others) + ".",
                       title="Insufficient Permissions")
    return readable


def _named_apis(where: Node | None) -> set[str]:
    named: set[str] = set()
    for node in [] if where is None else walk(where):
        if isinstance(node, _sql.Operation) and node.op == "=":
            named |= _strings_against(node.operands, "api_id")
        elif isinstance(node, InList) and not node.negated and _is(node.operand, "api_id"):
            named |= {item.value for item in node.items
                      if isinstance(item, Literal) and isinstance(item.value, str)}
    return named


def _strings_against(pair: Sequence[Node], column: str) -> set[str]:
    first, second = pair
    if _is(second, column):
        first, second = second, first
    if _is(first, column) and isinstance(second, Literal) and isinstance(second.value, str):
        return {second.value}
    return set()


def _is(node: Node, column: str) -> bool:
    return isinstance(node, Column) and node.name == column


# -- what to read ---------------------------------------------------------------------------------


def _span(query: Plan, table: Table, now: int, retention_ms: int) -> tuple[int, int]:
    """The events to read: every one of the time range the WHERE bounds, whole buckets
    for the aggregated tables; 400 for a range reaching back beyond the retention."""
    low, high = bounds(query.where, "time", now)
    unit = table.bucket or "DAY"
    earliest = start_of(unit, now - retention_ms)
    if low is not None and low < earliest:
        raise SqlError(
            f"the query reaches back to {_date(low)}, beyond what is kept: this server keeps "
            f"{retention_ms / _DAY:g} days of verifications, so a query of {table.name} may start "
            f"at {_date(earliest)} at the earliest", code="query_range_exceeds_retention",
            fix="raise the lower bound of time, e.g. time >= now() - INTERVAL 7 DAY")
    since = now - retention_ms if low is None else low
    until = now + 1 if high is None else min(high, now + _DAY)  # a day of clock skew at most
    if table.bucket is None or until <= since:
        return since, until
    return start_of(table.bucket, since), _bucket_end(table.bucket, until)


def _bucket_end(unit: str, time: int) -> int:
    """The end of the bucket holding ``time - 1`` (``time`` itself when it starts one)."""
    start = start_of(unit, time - 1)
    return shift(start, Span(1, unit), 1)


def _date(time: int) -> str:
    try:
        moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=time)
    except OverflowError:
        return f"{time} (Unix ms)"
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _events(call: Call, query: Plan, readable: frozenset[str] | None, since: int,
            until: int) -> list[Event]:
    if until <= since:
        return []
    events = call.ks._events(since, until, _pushed(query, readable))
    if len(events) > MAX_EVENTS:
        raise _too_many()
    hidden = call.roots.api_id()
    return [event for event in events if event.api_id != hidden
            and (readable is None or event.api_id in readable)]


def _too_many() -> ApiError:
    return ApiError(422, "user/unprocessable_entity/query_rows_limit_exceeded",
                    f"The query reads more than {MAX_EVENTS} verifications; narrow its time range"
                    " or filter on key_id, api_id, key_space_id or outcome.")


def _pushed(query: Plan, readable: frozenset[str] | None) -> EventFilter:
    """What the store can filter itself: equalities of the WHERE's top-level ANDs (the
    query applies its whole WHERE again, so this only narrows what is read)."""
    equal: dict[str, tuple[str, ...]] = {}
    tags: list[str] = []
    for node in conjuncts(query.where):
        if isinstance(node, _sql.Call) and node.name == "has" and _is(node.args[0], "tags"):
            value = node.args[1]
            if isinstance(value, Literal) and isinstance(value.value, str):
                tags.append(value.value)
            continue
        for column in ("api_id", "key_space_id", "key_id", "identity_id", "external_id", "outcome"):
            values = _equal_strings(node, column)
            if values and column not in equal:
                equal[column] = values
    single = {column: values[0] for column, values in equal.items() if len(values) == 1}
    api_id = single.get("api_id")
    if api_id is None and readable is not None and len(readable) == 1:
        api_id = next(iter(readable))
    return EventFilter(api_id=api_id, keyspace_id=single.get("key_space_id"),
                       key_id=single.get("key_id"),
                       identity=single.get("identity_id") or single.get("external_id"),
                       tags=tuple(tags), codes=equal.get("outcome", ()))


def _equal_strings(node: Node, column: str) -> tuple[str, ...]:
    """The non-empty strings ``node`` says ``column`` equals (``= 'a'``, ``IN ('a', 'b')``);
    an empty id is a missing one, which the store knows as NULL, not ``''``."""
    if isinstance(node, _sql.Operation) and node.op == "=":
        found: Iterable[str] = _strings_against(node.operands, column)
    elif isinstance(node, InList) and not node.negated and _is(node.operand, column):
        items = node.items
        if not all(isinstance(item, Literal) and isinstance(item.value, str) for item in items):
            return ()
        found = [item.value for item in items if isinstance(item, Literal)]
    else:
        return ()
    values = tuple(found)
    return () if "" in values else values


# -- rows -----------------------------------------------------------------------------------------


def _rows(events: list[Event], table: Table) -> list[dict[str, Any]]:
    if table.bucket is None:
        # One row per verification: the store keeps them counted per minute, so each
        # event stands for ``count`` rows at its minute (the credits spread over them).
        if sum(event.count for event in events) > MAX_EVENTS:
            raise _too_many()
        rows = []
        for event in events:
            share, extra = divmod(event.spent, event.count)
            dimensions = _dimensions(event)
            rows += [{"time": event.time, **dimensions, "spent_credits": share + (i < extra)}
                     for i in range(event.count)]
        return rows
    buckets: dict[tuple[Any, ...], list[int]] = {}
    starts: dict[int, int] = {}  # the bucket of each minute seen, so months need no calendar per event
    for event in events:
        minute = event.time - event.time % 60_000
        start = starts.get(minute)
        if start is None:
            start = starts[minute] = start_of(table.bucket, minute)
        totals = buckets.setdefault((start, *_dimensions(event).values()), [0, 0])
        totals[0] += event.count
        totals[1] += event.spent
    return [{"time": key[0], **dict(zip(DIMENSIONS, key[1:], strict=True)), "count": count,
             "spent_credits": spent} for key, (count, spent) in buckets.items()]


def _dimensions(event: Event) -> dict[str, Any]:
    return {"outcome": event.code, "key_id": event.key_id or "",
            "key_space_id": event.keyspace_id or "", "api_id": event.api_id or "",
            "identity_id": event.identity_id or "", "external_id": event.external_id or "",
            "tags": tuple(event.tags), "region": event.region or ""}


OPERATIONS = (
    Operation(
        "analytics.getVerifications", get_verifications,
        obj({"query": string(1, MAX_QUERY_LENGTH, description=(
            "A ClickHouse-flavoured SELECT over key_verifications_v1 or "
            "key_verifications_per_{minute,hour,day,month}_v1; keystile's subset is in its README."))},
            required=["query"], strict=False),
        array(FREE_OBJECT, description="One object per row, named by the SELECT list."),
        "Query the verifications with SQL", statuses=(412, 422)),
)
