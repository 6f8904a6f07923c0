"""Running a parsed SELECT (:mod:`keystile._sql`) over rows: pure, no I/O.

:func:`plan` checks a query against a table's columns (each name resolved, each
function known, aggregates only where they may be) and :func:`run` evaluates it over
rows (dicts of column to value). Values are ClickHouse's as JSON carries them: int,
float, str, tuple (an array), ``None``; a condition is 1 or 0; a time is Unix ms.

Names resolve as ClickHouse resolves them: an alias of the SELECT list may be used
anywhere in the query (``SELECT toStartOfHour(time) AS hour … GROUP BY hour``), except
inside its own definition, where the name is the column (``sum(count) AS count``).

>>> from keystile._sql import parse
>>> query = plan(parse("SELECT outcome, count() AS n FROM t GROUP BY outcome ORDER BY n DESC"),
...              ["outcome"])
>>> run(query, [{"outcome": "VALID"}, {"outcome": "DISABLED"}, {"outcome": "VALID"}], now=0)
[{'outcome': 'VALID', 'n': 2}, {'outcome': 'DISABLED', 'n': 1}]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from . import _sqlfunctions as fn
from ._sql import (
    Between,
    Call,
    Column,
    Item,
    Literal,
    Node,
    Operation,
    Order,
    Select,
    SqlError,
    Star,
    children,
    walk,
    with_children,
)
from ._sqlcompile import Compiled, Row, compile_node
from ._sqlfunctions import FUNCTIONS, Span, order_key, truth

__all__ = ["UNROLLED", "Plan", "bounds", "conjuncts", "constant", "plan", "run"]

#: The column an ``arrayJoin(…)`` of the query becomes, one row per element.
UNROLLED: Final = "\0arrayJoin"
_MAX_NODES: Final = 5_000  # nodes of the query once its aliases are expanded


@dataclass(frozen=True, slots=True)
class Plan(Select):
    """A query checked against a table, ready to :func:`run`: every name resolved (aliases
    expanded, ``*`` and ``ORDER BY 2`` replaced by what they stand for)."""

    aggregate: bool = False
    unroll: Node | None = None  # what arrayJoin unrolls

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(item.name for item in self.items)

    @property
    def exprs(self) -> tuple[Node, ...]:
        return tuple(item.expr for item in self.items if item.expr is not None)


# -- planning -------------------------------------------------------------------------------------


def plan(select: Select, columns: Collection[str], missing: Mapping[str, str] | None = None) -> Plan:
    """``select`` checked against a table of ``columns`` (``missing``: columns the
    table has elsewhere but not here, and why, for a clearer error)."""
    resolver = _Resolver(select, columns, missing or {})
    items = resolver.items()
    exprs = tuple(item.expr for item in items if item.expr is not None)
    built = Plan(
        items, select.table, select.table_pos, resolver.resolve(select.where),
        tuple(resolver.by(node, exprs, "GROUP BY") for node in select.group_by),
        resolver.resolve(select.having),
        tuple(Order(resolver.by(order.expr, exprs, "ORDER BY"), order.descending, order.nulls_first)
              for order in select.order_by),
        select.limit, select.offset, select.distinct)
    built = _unrolled(built)
    return dataclasses.replace(built, aggregate=_check_aggregates(built))


class _Resolver:
    def __init__(self, select: Select, columns: Collection[str], missing: Mapping[str, str]) -> None:
        self.select, self.columns, self.missing = select, frozenset(columns), missing
        self.aliases: dict[str, Node] = {}
        for item in select.items:
            if item.aliased and item.expr is not None:
                if item.name in self.aliases and self.aliases[item.name] != item.expr:
                    raise SqlError(f"the alias {item.name} names two different expressions",
                                   item.expr.pos)
                self.aliases[item.name] = item.expr
        self.budget = _MAX_NODES

    def items(self) -> tuple[Item, ...]:
        items: list[Item] = []
        for item in self.select.items:
            if item.expr is None:  # SELECT *
                items += [Item(Column(0, name), name) for name in sorted(self.columns)]
            else:
                expanding = frozenset({item.name} if item.aliased else ())
                items.append(Item(self.resolve(item.expr, expanding), item.name, item.aliased))
        return tuple(items)

    def resolve(self, node: Node | None, expanding: frozenset[str] = frozenset()) -> Any:
        if node is None:
            return None
        self.budget -= 1
        if self.budget < 0:
            raise SqlError(f"the query is larger than {_MAX_NODES} terms once its aliases are expanded",
                           node.pos)
        if isinstance(node, Column):
            return self.column(node, expanding)
        if isinstance(node, Star):
            raise SqlError("'*' stands alone only as SELECT * or count(*)", node.pos)
        if isinstance(node, Call):
            node = _checked_call(node)
        return with_children(node, [self.resolve(child, expanding) for child in children(node)])

    def by(self, node: Node, exprs: tuple[Node, ...], clause: str) -> Node:
        """A GROUP BY or ORDER BY expression: ``2`` is the second selected one (ClickHouse's
        positional arguments), already resolved."""
        if isinstance(node, Literal) and type(node.value) is int:
            if not 1 <= node.value <= len(exprs):
                raise SqlError(f"{clause} {node.value} names no column: the query selects {len(exprs)}",
                               node.pos)
            return exprs[node.value - 1]
        resolved: Node = self.resolve(node)
        return resolved

    def column(self, node: Column, expanding: frozenset[str]) -> Node:
        name = node.name
        if name in self.aliases and name not in expanding:
            resolved: Node = self.resolve(self.aliases[name], expanding | {name})
            return resolved
        if name in self.columns:
            return node
        if name in self.missing:
            raise SqlError(f"there is no column {name}: {self.missing[name]}", node.pos)
        raise SqlError(f"there is no column {name}; the columns are {', '.join(sorted(self.columns))}",
                       node.pos, fix="name one of the table's columns, or an alias of the SELECT list")


def _checked_call(node: Call) -> Call:
    function = FUNCTIONS.get(node.name)
    if function is None:
        raise SqlError(f"the function {node.spelled}() is not supported; the functions are "
                       f"{', '.join(fn.SPELLINGS)}", node.pos, code="invalid_analytics_function")
    args = node.args
    if args and isinstance(args[0], Star):
        if node.name != "count" or len(args) != 1:
            raise SqlError(f"'*' is an argument of count(*) only, not of {node.spelled}()", node.pos)
        args = ()
    high = function.high
    if len(args) < function.low or (high is not None and len(args) > high):
        raise SqlError(f"{node.spelled}() takes {_arity(function.low, high)}, not {len(args)}",
                       node.pos)
    if node.distinct and not function.aggregate:
        raise SqlError(f"DISTINCT goes inside aggregate functions only, not {node.spelled}()", node.pos)
    return Call(node.pos, node.name, args, node.distinct, node.spelled)


def _arity(low: int, high: int | None) -> str:
    if high == low:
        return f"{low} argument{'s' if low != 1 else ''}"
    if high is None:
        return f"{low} or more arguments"
    return f"{low} to {high} arguments"


def _every_expr(built: Plan) -> list[Node]:
    found = [*built.exprs, *built.group_by, *(order.expr for order in built.order_by)]
    return found + [node for node in (built.where, built.having) if node is not None]


def _unrolled(built: Plan) -> Plan:
    """``arrayJoin(tags) AS tag``: one row per element, the calls become a column."""
    calls = {node for expr in _every_expr(built) for node in walk(expr)
             if isinstance(node, Call) and node.name == "arrayjoin"}
    if not calls:
        return built
    if len({call.args[0] for call in calls}) > 1:
        raise SqlError("a query may unroll one array: use one arrayJoin(…)", min(c.pos for c in calls))
    call = next(iter(calls))
    if any(isinstance(node, Call) and FUNCTIONS[node.name].aggregate for node in walk(call.args[0])):
        raise SqlError("arrayJoin() cannot unroll an aggregate", call.pos)

    def swap(node: Any) -> Any:
        if node is None:
            return None
        if isinstance(node, Call) and node.name == "arrayjoin":
            return Column(node.pos, UNROLLED)
        return with_children(node, [swap(child) for child in children(node)])

    return dataclasses.replace(
        built, items=tuple(Item(swap(i.expr), i.name, i.aliased) for i in built.items),
        where=swap(built.where), group_by=tuple(swap(e) for e in built.group_by),
        having=swap(built.having), unroll=call.args[0],
        order_by=tuple(Order(swap(o.expr), o.descending, o.nulls_first) for o in built.order_by))


def _aggregate_calls(node: Node | None) -> list[Call]:
    if node is None:
        return []
    return [n for n in walk(node) if isinstance(n, Call) and FUNCTIONS[n.name].aggregate]


def _check_aggregates(built: Plan) -> bool:
    """Whether the query aggregates; a SqlError if an aggregate is out of place."""
    for clause, nodes in (("WHERE", [built.where]), ("GROUP BY", built.group_by)):
        for node in nodes:
            found = _aggregate_calls(node)
            if found:
                raise SqlError(f"aggregate functions such as {found[0].spelled}() cannot be in {clause};"
                               " filter groups with HAVING", found[0].pos)
    for expr in _every_expr(built):
        for call in _aggregate_calls(expr):
            inner = [n for arg in call.args for n in _aggregate_calls(arg)]
            if inner:
                raise SqlError(f"{inner[0].spelled}() is inside another aggregate function, "
                               f"{call.spelled}()", inner[0].pos)
    aggregate = bool(built.group_by) or built.having is not None or any(
        _aggregate_calls(expr) for expr in (*built.exprs, *(o.expr for o in built.order_by)))
    if aggregate:
        grouped = frozenset(built.group_by)
        checked: list[Node | None] = [*built.exprs, *(o.expr for o in built.order_by), built.having]
        for node in checked:
            if node is not None:
                _check_grouped(node, grouped)
    return aggregate


def _check_grouped(node: Node, grouped: frozenset[Node]) -> None:
    if node in grouped or (isinstance(node, Call) and FUNCTIONS[node.name].aggregate):
        return
    if isinstance(node, Column):
        name = "arrayJoin(…)" if node.name == UNROLLED else node.name
        raise SqlError(f"{name} is neither in GROUP BY nor inside an aggregate function such as "
                       "count(), sum() or any()", node.pos,
                       fix=f"add {name} to GROUP BY, or aggregate it")
    for child in children(node):
        _check_grouped(child, grouped)


# -- evaluating -----------------------------------------------------------------------------------


def run(built: Plan, rows: Iterable[Row], *, now: int, max_rows: int | None = None) -> list[dict[str, Any]]:
    """The answer of ``built`` over ``rows``: one dict per row, at most ``max_rows``."""
    exprs = [compile_node(expr, now) for expr in built.exprs]
    orders = [compile_node(order.expr, now) for order in built.order_by]
    if built.unroll is not None:
        rows = _unroll(compile_node(built.unroll, now), built.unroll.pos, rows)
    if built.where is not None:
        where, pos = compile_node(built.where, now), built.where.pos
        rows = [row for row in rows if truth(where(row, None), pos)]
    answers = _grouped(built, exprs, orders, rows, now) if built.aggregate else [
        (tuple(order(row, None) for order in orders), tuple(expr(row, None) for expr in exprs))
        for row in rows]
    for index in reversed(range(len(built.order_by))):
        order = built.order_by[index]
        nulls_high = (order.nulls_first is not True) != order.descending
        answers.sort(key=lambda answer: _sort_key(answer[0][index], nulls_high),
                     reverse=order.descending)
    values = [answer[1] for answer in answers]
    if built.distinct:
        values = list(dict.fromkeys(values))
    end = None if built.limit is None else built.offset + built.limit
    values = values[built.offset:end]
    if max_rows is not None:
        values = values[:max_rows]
    return [dict(zip(built.names, map(_json, row), strict=True)) for row in values]


def _unroll(array_of: Compiled, pos: int, rows: Iterable[Row]) -> list[Row]:
    out: list[Row] = []
    for row in rows:
        array = array_of(row, None)
        if array is None:
            continue
        if not isinstance(array, tuple):
            raise SqlError(f"arrayJoin() unrolls an array such as tags, not {fn.kind(array)}", pos)
        out += [{**row, UNROLLED: item} for item in array]
    return out


Answer = tuple[tuple[Any, ...], tuple[Any, ...]]  # (sort keys, values) of one answer row


def _grouped(built: Plan, exprs: list[Compiled], orders: list[Compiled], rows: Iterable[Row],
             now: int) -> list[Answer]:
    groups: dict[tuple[Any, ...], list[Row]] = {}
    if not built.group_by:
        groups[()] = list(rows)
    else:
        keys = [compile_node(node, now) for node in built.group_by]
        for row in rows:
            groups.setdefault(tuple(key(row, None) for key in keys), []).append(row)
    having = None if built.having is None else (compile_node(built.having, now), built.having.pos)
    answers = []
    for members in groups.values():
        first = members[0] if members else {}
        if having is not None and not truth(having[0](first, members), having[1]):
            continue
        answers.append((tuple(order(first, members) for order in orders),
                        tuple(expr(first, members) for expr in exprs)))
    return answers


def _sort_key(value: Any, nulls_high: bool) -> tuple[Any, ...]:
    if value is None:
        return (1,) if nulls_high else (-1,)
    return 0, *order_key(value)


def _json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return [_json(item) for item in value]
    if isinstance(value, Span):
        raise SqlError("an INTERVAL is not a value to return: add it to or take it from a time")
    return value


# -- what a WHERE says about one column -----------------------------------------------------------


def conjuncts(node: Node | None) -> list[Node]:
    """The conditions ``node`` ANDs together (``a AND (b AND c)``: a, b, c)."""
    out: list[Node] = []
    stack = [] if node is None else [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Operation) and current.op == "and":
            stack.extend(reversed(current.operands))
        else:
            out.append(current)
    return out


def constant(node: Node, now: int) -> tuple[bool, Any]:
    """``(True, value)`` if ``node`` depends on no row (``now() - INTERVAL 7 DAY``)."""
    for part in walk(node):
        if isinstance(part, (Column, Star)) or (isinstance(part, Call) and FUNCTIONS[part.name].aggregate):
            return False, None
    return True, compile_node(node, now)({}, None)


_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "="}
_BOUND = 2**62


def bounds(where: Node | None, column: str, now: int) -> tuple[int | None, int | None]:
    """What the top-level conditions of ``where`` bound ``column`` to: ``low <= column <
    high`` (``None``: unbounded). Only ``column <op> constant`` and BETWEEN count."""
    low: int | None = None
    high: int | None = None
    for op, value in _comparisons(where, column, now):
        if op in (">=", ">", "="):
            start = math.ceil(value) if op != ">" else math.floor(value) + 1
            low = start if low is None else max(low, start)
        if op in ("<", "<=", "="):
            end = math.ceil(value) if op == "<" else math.floor(value) + 1
            high = end if high is None else min(high, end)
    return _clamped(low), _clamped(high)


def _clamped(value: int | None) -> int | None:
    return None if value is None else max(-_BOUND, min(_BOUND, value))


def _comparisons(where: Node | None, column: str, now: int) -> list[tuple[str, float]]:
    found: list[tuple[str, Any]] = []
    for node in conjuncts(where):
        if isinstance(node, Operation) and node.op in _FLIPPED:
            left, right = node.operands
            if _is_column(left, column):
                found.append((node.op, right))
            elif _is_column(right, column):
                found.append((_FLIPPED[node.op], left))
        elif isinstance(node, Between) and not node.negated and _is_column(node.operand, column):
            found += [(">=", node.low), ("<=", node.high)]
    out = []
    for op, side in found:
        known, value = constant(side, now)
        if known and isinstance(value, (int, float)) and math.isfinite(value):
            out.append((op, value))
    return out


def _is_column(node: Node, name: str) -> bool:
    return isinstance(node, Column) and node.name == name
