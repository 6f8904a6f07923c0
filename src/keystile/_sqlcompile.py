"""Expressions of a query (:mod:`keystile._sql`) compiled into Python closures, once per
query: ``compile_node(node, now)(row, group)`` is the node's value for one row
(``group`` None), or for a group of rows (``row`` is its first; aggregates run over
``group``). No ``eval``: each node becomes a closure over its children's closures, and
parts that depend on no row (``now() - INTERVAL 7 DAY``) are computed once, here.

A value of the wrong kind (:class:`~keystile._sqlfunctions.Wrong`) becomes a
:class:`~keystile._sql.SqlError` at the position of its node.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any, Final

from . import _sqlfunctions as fn
from ._sql import (
    Array,
    Between,
    Call,
    Case,
    Column,
    InList,
    Interval,
    IsNull,
    Literal,
    Node,
    Operation,
    SqlError,
)
from ._sqlfunctions import FUNCTIONS, Span, Wrong, compare, equal, truth

__all__ = ["Compiled", "Row", "compile_node"]

Row = Mapping[str, Any]
Compiled = Callable[[Row, "list[Row] | None"], Any]
_SCALARS: Final = (int, float, str)
_ORDERS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def compile_node(node: Node, now: int) -> Compiled:
    """The closure computing ``node``."""
    return _Compiler(now).build(node)[0]


class _Compiler:
    def __init__(self, now: int) -> None:
        self.now = now
        self.kinds: dict[type, Callable[[Any], tuple[Compiled, bool]]] = {
            Literal: self.literal, Column: self.column, Operation: self.operation,
            Call: self.call, InList: self.in_list, Between: self.between, IsNull: self.is_null,
            Interval: self.interval, Case: self.case, Array: self.array,
        }

    def build(self, node: Node) -> tuple[Compiled, bool]:
        """The closure of ``node`` and whether it depends on no row (then it is folded)."""
        run, constant = self.kinds[type(node)](node)
        if constant and not isinstance(node, Literal):
            value = run({}, None)
            return (lambda row, group: value), True
        return run, constant

    def all(self, nodes: tuple[Node, ...]) -> tuple[list[Compiled], bool]:
        built = [self.build(node) for node in nodes]
        return [run for run, _ in built], all(constant for _, constant in built)

    def literal(self, node: Literal) -> tuple[Compiled, bool]:
        value = node.value
        return (lambda row, group: value), True

    def column(self, node: Column) -> tuple[Compiled, bool]:
        name = node.name
        return (lambda row, group: row.get(name)), False

    def array(self, node: Array) -> tuple[Compiled, bool]:
        items, constant = self.all(node.items)
        return (lambda row, group: tuple(item(row, group) for item in items)), constant

    def interval(self, node: Interval) -> tuple[Compiled, bool]:
        (amount, constant), unit, pos = self.build(node.amount), node.unit, node.pos

        def run(row: Row, group: list[Row] | None) -> Any:
            value = amount(row, group)
            if type(value) is not int:
                raise SqlError(f"INTERVAL needs a whole number, not {fn.kind(value)}", pos)
            return Span(value, unit)
        return run, constant

    def operation(self, node: Operation) -> tuple[Compiled, bool]:
        (parts, constant), op, pos = self.all(node.operands), node.op, node.pos
        if op in ("and", "or"):
            return _logical(op == "and", parts, [o.pos for o in node.operands]), constant
        if len(parts) == 1:
            return _positioned(fn.negate if op == "neg" else fn.not_, parts, pos), constant
        first, second = parts
        if op in ("=", "!="):
            wanted = op == "="

            def equality(row: Row, group: list[Row] | None) -> Any:
                a, b = first(row, group), second(row, group)
                if type(a) is type(b) and type(a) in _SCALARS:
                    return int((a == b) == wanted)
                try:
                    same = equal(a, b)
                except Wrong as wrong:
                    raise SqlError(str(wrong), pos) from None
                return None if same is None else int(same == wanted)
            return equality, constant
        if op in _ORDERS:
            order = _ORDERS[op]

            def comparison(row: Row, group: list[Row] | None) -> Any:
                a, b = first(row, group), second(row, group)
                if type(a) is type(b) and type(a) in _SCALARS:
                    return int(order(a, b))
                try:
                    return compare(op, a, b)
                except Wrong as wrong:
                    raise SqlError(str(wrong), pos) from None
            return comparison, constant
        return _positioned(fn.OPERATORS[op], parts, pos), constant

    def call(self, node: Call) -> tuple[Compiled, bool]:
        function, pos = FUNCTIONS[node.name], node.pos
        args, constant = self.all(node.args)
        if function.aggregate:
            return _aggregate(node, args), False
        if node.name == "if":
            return _if(args, node.args[0].pos), constant
        run, nulls, now = function.run, function.nulls, self.now

        def scalar(row: Row, group: list[Row] | None) -> Any:
            values = [arg(row, group) for arg in args]
            if nulls and None in values:
                return None
            try:
                return run(now, *values)
            except Wrong as wrong:
                raise SqlError(str(wrong), pos) from None
        return scalar, constant

    def in_list(self, node: InList) -> tuple[Compiled, bool]:
        (subject, first_constant), (items, constant) = self.build(node.operand), self.all(node.items)
        negated, pos = node.negated, node.pos

        def run(row: Row, group: list[Row] | None) -> Any:
            value = subject(row, group)
            if value is None:
                return None
            try:
                found = any(equal(value, item(row, group)) for item in items)
            except Wrong as wrong:
                raise SqlError(str(wrong), pos) from None
            return int(found != negated)
        return run, first_constant and constant

    def between(self, node: Between) -> tuple[Compiled, bool]:
        (subject, low, high), constant = self.all((node.operand, node.low, node.high))
        negated, pos = node.negated, node.pos

        def run(row: Row, group: list[Row] | None) -> Any:
            value = subject(row, group)
            try:
                above = compare(">=", value, low(row, group))
                below = compare("<=", value, high(row, group))
            except Wrong as wrong:
                raise SqlError(str(wrong), pos) from None
            if above is None or below is None:
                return None
            return int(bool(above and below) != negated)
        return run, constant

    def is_null(self, node: IsNull) -> tuple[Compiled, bool]:
        (subject, constant), negated = self.build(node.operand), node.negated
        return (lambda row, group: int((subject(row, group) is None) != negated)), constant

    def case(self, node: Case) -> tuple[Compiled, bool]:
        subject, subject_constant = self.build(node.operand) if node.operand is not None else (None, True)
        whens = [(*self.build(condition), condition.pos, *self.build(result))
                 for condition, result in node.whens]
        default, default_constant = self.build(node.default) if node.default is not None else (None, True)
        constant = subject_constant and default_constant and all(w[1] and w[4] for w in whens)
        pos = node.pos

        def run(row: Row, group: list[Row] | None) -> Any:
            tested = None if subject is None else subject(row, group)
            for condition, _, where, result, _ in whens:
                value = condition(row, group)
                try:
                    hit = equal(tested, value) if subject is not None else truth(value, where)
                except Wrong as wrong:
                    raise SqlError(str(wrong), pos) from None
                if hit:
                    return result(row, group)
            return None if default is None else default(row, group)
        return run, constant


def _positioned(run: Callable[..., Any], parts: list[Compiled], pos: int) -> Compiled:
    if len(parts) == 1:
        (only,) = parts

        def unary(row: Row, group: list[Row] | None) -> Any:
            try:
                return run(only(row, group))
            except Wrong as wrong:
                raise SqlError(str(wrong), pos) from None
        return unary
    first, second = parts

    def binary(row: Row, group: list[Row] | None) -> Any:
        try:
            return run(first(row, group), second(row, group))
        except Wrong as wrong:
            raise SqlError(str(wrong), pos) from None
    return binary


def _logical(conjunction: bool, parts: list[Compiled], positions: list[int]) -> Compiled:
    """AND / OR with SQL's NULL: unknown unless some operand decides."""
    pairs = list(zip(parts, positions, strict=True))

    def run(row: Row, group: list[Row] | None) -> Any:
        unknown = False
        for part, pos in pairs:
            value = part(row, group)
            if value is None:
                unknown = True
            elif truth(value, pos) != conjunction:
                return int(not conjunction)
        return None if unknown else int(conjunction)
    return run


def _if(args: list[Compiled], pos: int) -> Compiled:
    condition, then, otherwise = args
    return lambda row, group: (then if truth(condition(row, group), pos) else otherwise)(row, group)


def _aggregate(node: Call, args: list[Compiled]) -> Compiled:
    function, pos, distinct, spelled = FUNCTIONS[node.name], node.pos, node.distinct, node.spelled

    def run(row: Row, group: list[Row] | None) -> Any:
        if group is None:
            raise SqlError(f"{spelled}() aggregates groups of rows; it cannot be here", pos)
        if not args and not distinct:
            return len(group)
        tuples = [tuple(arg(member, None) for arg in args) for member in group]
        if distinct:
            tuples = list(dict.fromkeys(tuples))
        try:
            return function.run(tuples)
        except Wrong as wrong:
            raise SqlError(str(wrong), pos) from None
    return run
