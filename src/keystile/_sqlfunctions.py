"""The functions and operators of analytics queries, as ClickHouse has them, on
keystile's values: int, float, str, tuple (an array), ``None`` (NULL); a time is Unix
ms, a condition 1 or 0. A value of the wrong kind raises :class:`Wrong`, which the
evaluator (:mod:`keystile._sqleval`) reports with the position of its node.

>>> FUNCTIONS["tostartofhour"].run(0, 1_700_000_123_456)
1699999200000
>>> shift(1_711_886_400_000, Span(1, "MONTH"), -1)  # 2024-03-31 12:00 minus a month
1709208000000
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ._sql import SqlError

__all__ = [
    "FUNCTIONS",
    "OPERATORS",
    "SPELLINGS",
    "Function",
    "Span",
    "Wrong",
    "compare",
    "equal",
    "kind",
    "negate",
    "not_",
    "order_key",
    "shift",
    "start_of",
    "truth",
]

Args = Sequence[tuple[Any, ...]]
_INT64: Final = 2**63
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS: Final = {"SECOND": 1_000, "MINUTE": 60_000, "HOUR": 3_600_000, "DAY": 86_400_000,
              "WEEK": 604_800_000}
_MONTHS: Final = {"MONTH": 1, "QUARTER": 3, "YEAR": 12}
_DAY: Final = 86_400_000


class Wrong(Exception):
    """A value of the wrong kind for an operator or function (the evaluator says where)."""


@dataclass(frozen=True, slots=True)
class Span:
    """The value of ``INTERVAL n UNIT``: only added to or taken from a time."""

    amount: int
    unit: str


def kind(value: Any) -> str:
    """How an error message names a value."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, tuple):
        return "an array"
    if isinstance(value, Span):
        return "an INTERVAL"
    return f"the number {value!r}"


def _number(value: Any, what: str) -> int | float:
    if isinstance(value, (int, float)):
        return value
    raise Wrong(f"{what} needs a number, not {kind(value)}")


def _string(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    raise Wrong(f"{what} needs a string, not {kind(value)}")


def _array(value: Any, what: str) -> tuple[Any, ...]:
    if isinstance(value, tuple):
        return value
    raise Wrong(f"{what} needs an array such as tags, not {kind(value)}")


def _int64(value: Any) -> Any:
    if type(value) is int and not -_INT64 <= value < _INT64:
        raise Wrong("the result is beyond 64-bit integers")
    return value


def truth(value: Any, pos: int | None = None) -> bool:
    """Whether a condition holds (NULL does not); only numbers are conditions."""
    if value is None:
        return False
    if isinstance(value, (int, float)):
        return value != 0
    message = f"a condition is a comparison (true or false), not {kind(value)}"
    if pos is None:
        raise Wrong(message)
    raise SqlError(message, pos)


def not_(value: Any) -> Any:
    return None if value is None else int(not truth(value))


def negate(value: Any) -> Any:
    return None if value is None else _int64(-_number(value, "'-'"))


# -- comparing ------------------------------------------------------------------------------------


def _family(value: Any) -> int:
    if isinstance(value, (int, float)):
        return 0
    if isinstance(value, str):
        return 1
    if isinstance(value, tuple):
        return 2
    raise Wrong(f"{kind(value)} cannot be compared")


def _same_family(first: Any, second: Any) -> None:
    if _family(first) != _family(second):
        raise Wrong(f"{kind(first)} cannot be compared with {kind(second)}")


def equal(first: Any, second: Any) -> bool | None:
    """``first = second`` (``None`` when either is NULL)."""
    if first is None or second is None:
        return None
    _same_family(first, second)
    if isinstance(first, tuple):
        return len(first) == len(second) and all(
            equal(a, b) for a, b in zip(first, second, strict=True))
    return bool(first == second)


def compare(op: str, first: Any, second: Any) -> int | None:
    """``first <op> second`` for ``<``, ``<=``, ``>``, ``>=`` (1, 0, or None for NULL)."""
    if first is None or second is None:
        return None
    _same_family(first, second)
    a, b = order_key(first), order_key(second)
    return int(a < b if op == "<" else a <= b if op == "<=" else a > b if op == ">" else a >= b)


def order_key(value: Any) -> tuple[Any, ...]:
    """A key that orders any two values without a TypeError (numbers, strings, arrays)."""
    if value is None:
        return (-1, 0)
    if isinstance(value, (int, float)):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    if isinstance(value, tuple):
        return (2, tuple(order_key(item) for item in value))
    return (3, repr(value))


def _like(text: Any, pattern: Any, fold: bool) -> Any:
    if text is None or pattern is None:
        return None
    text, pattern = _string(text, "LIKE"), _string(pattern, "LIKE")
    if fold:
        text, pattern = text.lower(), pattern.lower()
    return int(like(text, pattern))


def like(text: str, pattern: str) -> bool:
    """SQL LIKE (``%`` any run, ``_`` one character, ``\\`` escapes), matched segment by
    segment with no backtracking, so no pattern can take long."""
    segments: list[list[str | None]] = [[]]
    escaped = False
    for char in pattern:
        if escaped:
            segments[-1].append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            segments.append([])
        else:
            segments[-1].append(None if char == "_" else char)
    if len(segments) == 1:
        return len(text) == len(segments[0]) and _matches_at(text, 0, segments[0])
    first, *middle, last = segments
    start, stop = len(first), len(text) - len(last)
    if stop < start or not _matches_at(text, 0, first) or not _matches_at(text, stop, last):
        return False
    for segment in middle:
        found = _find(text, segment, start, stop)
        if found < 0:
            return False
        start = found + len(segment)
    return True


def _matches_at(text: str, at: int, segment: list[str | None]) -> bool:
    return all(char is None or text[at + i] == char for i, char in enumerate(segment))


def _find(text: str, segment: list[str | None], start: int, stop: int) -> int:
    if None not in segment:
        return text.find("".join(segment), start, stop)  # type: ignore[arg-type]
    for at in range(start, stop - len(segment) + 1):
        if _matches_at(text, at, segment):
            return at
    return -1


# -- arithmetic -----------------------------------------------------------------------------------


def _plus(first: Any, second: Any) -> Any:
    if first is None or second is None:
        return None
    if isinstance(second, Span):
        return shift(first, second, 1)
    if isinstance(first, Span):
        return shift(second, first, 1)
    return _int64(_number(first, "'+'") + _number(second, "'+'"))


def _minus(first: Any, second: Any) -> Any:
    if first is None or second is None:
        return None
    if isinstance(second, Span):
        return shift(first, second, -1)
    return _int64(_number(first, "'-'") - _number(second, "'-'"))


def _times(first: Any, second: Any) -> Any:
    if first is None or second is None:
        return None
    return _int64(_number(first, "'*'") * _number(second, "'*'"))


def _divided(first: Any, second: Any) -> Any:
    """``/`` gives a float, as in ClickHouse; by zero: NULL (JSON has no infinity)."""
    if first is None or second is None:
        return None
    divisor = _number(second, "'/'")
    dividend = _number(first, "'/'")
    return None if divisor == 0 else dividend / divisor


def _modulo(first: Any, second: Any) -> Any:
    if first is None or second is None:
        return None
    a, b = _number(first, "'%'"), _number(second, "'%'")
    if b == 0:
        return None
    if type(a) is int and type(b) is int:
        rest = abs(a) % abs(b)
        return rest if a >= 0 else -rest  # the sign of the dividend, as in C
    return math.fmod(a, b)


def _concat(*values: Any) -> Any:
    if any(value is None for value in values):
        return None
    return "".join(_text(value) for value in values)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return "[" + ",".join(repr(item) if isinstance(item, str) else _text(item) for item in value) + "]"
    if isinstance(value, Span):
        raise Wrong("an INTERVAL has no text")
    return "NULL" if value is None else str(value)


OPERATORS: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "+": _plus, "-": _minus, "*": _times, "/": _divided, "%": _modulo, "||": _concat,
    "like": lambda a, b: _like(a, b, False), "ilike": lambda a, b: _like(a, b, True),
}


# -- time -----------------------------------------------------------------------------------------


def _time(value: Any, what: str = "a time function") -> int:
    if type(value) is int:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return math.floor(value)
    raise Wrong(f"{what} needs a time (Unix ms), not {kind(value)}")


def _utc(ms: int) -> dt.datetime:
    try:
        return _EPOCH + dt.timedelta(milliseconds=ms)
    except OverflowError:
        raise Wrong(f"the time {ms} is out of range") from None


def _ms(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // dt.timedelta(milliseconds=1)


def shift(time: Any, span: Span, sign: int) -> int:
    """``time ± INTERVAL``: months, quarters and years by the calendar (the day kept, or
    the month's last), shorter units by their length."""
    if isinstance(time, Span):
        raise Wrong("two INTERVALs cannot be added; add an INTERVAL to a time")
    at = _time(time, "INTERVAL arithmetic")
    if span.unit in _MS:
        return int(_int64(at + sign * span.amount * _MS[span.unit]))
    moment = _utc(at)
    months = moment.year * 12 + moment.month - 1 + sign * span.amount * _MONTHS[span.unit]
    year, month = divmod(months, 12)
    if not 1 <= year <= 9999:
        raise Wrong("the time is out of range")
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return _ms(moment.replace(year=year, month=month + 1, day=day))


def start_of(unit: str, time: int, *, sunday: bool = False) -> int:
    """The start of the ``unit`` (``SECOND`` … ``YEAR``, ``FIVE_MINUTES``,
    ``FIFTEEN_MINUTES``) holding ``time``; weeks start on Monday, or Sunday."""
    sizes = {**_MS, "FIVE_MINUTES": 300_000, "FIFTEEN_MINUTES": 900_000}
    if unit == "WEEK":
        day = time // _DAY
        return (day - (day + (4 if sunday else 3)) % 7) * _DAY
    if unit in sizes:
        return time - time % sizes[unit]
    moment = _utc(time)
    month = 1 if unit == "YEAR" else moment.month - (moment.month - 1) % 3 if unit == "QUARTER" \
        else moment.month
    return _ms(moment.replace(month=month, day=1, hour=0, minute=0, second=0, microsecond=0))


def _starting(unit: str) -> Callable[..., Any]:
    return lambda now, time: start_of(unit, _time(time))


def _week(now: int, time: Any, mode: Any = 0) -> int:
    if not isinstance(mode, int):
        raise Wrong(f"the mode of toStartOfWeek() is a number, not {kind(mode)}")
    return start_of("WEEK", _time(time), sunday=mode % 2 == 0)


def _trunc(now: int, unit: Any, time: Any) -> int:
    name = _string(unit, "date_trunc()").upper()
    if name not in _MS and name not in _MONTHS:
        raise Wrong(f"date_trunc() truncates to second, minute, hour, day, week, month, quarter or "
                    f"year, not {unit!r}")
    return start_of(name, _time(time))


def _precise(now: int, time: Any, precision: Any = 3) -> int:
    at = _time(time)
    if not isinstance(precision, int):
        raise Wrong(f"the precision of toDateTime64() is a number, not {kind(precision)}")
    step = int(10 ** max(0, 3 - precision))
    return at - at % step


# -- strings, arrays, numbers ---------------------------------------------------------------------


def _has(now: int, array: Any, value: Any) -> int:
    return int(any(equal(item, value) for item in _array(array, "has()")))


def _has_any(now: int, array: Any, values: Any) -> int:
    items = _array(array, "hasAny()")
    return int(any(equal(item, value) for value in _array(values, "hasAny()") for item in items))


def _has_all(now: int, array: Any, values: Any) -> int:
    items = _array(array, "hasAll()")
    return int(all(any(equal(item, value) for item in items) for value in _array(values, "hasAll()")))


def _length(now: int, value: Any) -> int:
    if isinstance(value, (str, tuple)):
        return len(value)
    raise Wrong(f"length() needs a string or an array, not {kind(value)}")


def _substring(now: int, text: Any, offset: Any, length: Any = None) -> str:
    string = _string(text, "substring()")
    if not isinstance(offset, int) or not isinstance(length, (int, type(None))):
        raise Wrong("substring() takes whole numbers for its offset and length")
    start = offset - 1 if offset > 0 else max(0, len(string) + offset) if offset < 0 else len(string)
    if length is None:
        return string[start:]
    return string[start:start + length] if length >= 0 else string[start:len(string) + length]


def _round(now: int, value: Any, digits: Any = 0) -> Any:
    number = _number(value, "round()")
    if not isinstance(digits, int) or abs(digits) > 30:
        raise Wrong("round() takes a whole number of digits, from -30 to 30")
    if isinstance(number, float) and not math.isfinite(number):
        return number
    return round(number, digits)


def _rounded(how: Callable[[float], int]) -> Callable[..., Any]:
    def run(now: int, value: Any) -> Any:
        number = _number(value, "floor() and ceil()")
        if isinstance(number, int) or not math.isfinite(number):
            return number
        return float(how(number))
    return run


def _to_int(now: int, value: Any) -> int:
    if isinstance(value, str):
        if not re.fullmatch(r"\s*[-+]?\d{1,19}\s*", value):
            raise Wrong(f"toInt64() cannot read {kind(value)} as a whole number")
        return int(_int64(int(value)))
    number = _number(value, "toInt64()")
    if isinstance(number, float) and not math.isfinite(number):
        raise Wrong("toInt64() cannot convert an infinite number")
    return int(_int64(int(number)))


def _to_float(now: int, value: Any) -> float:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise Wrong(f"toFloat64() cannot read {kind(value)} as a number") from None
    return float(_number(value, "toFloat64()"))


def _coalesce(now: int, *values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _strings(run: Callable[..., Any], name: str) -> Callable[..., Any]:
    return lambda now, *values: run(*(_string(value, name) for value in values))


# -- aggregates -----------------------------------------------------------------------------------


def _sum(values: Any, what: str) -> Any:
    total: int | float = 0
    for value in values:
        if value is not None:
            total += _number(value, what)
    return _int64(total)


def _avg(args: Args) -> Any:
    values = [_number(v, "avg()") for (v,) in args if v is not None]
    return sum(values) / len(values) if values else None


def _extreme(pick: Callable[..., Any], name: str) -> Callable[[Args], Any]:
    def run(args: Args) -> Any:
        values = [v for (v,) in args if v is not None]
        if not values:
            return None
        if len({_family(v) for v in values}) > 1:
            raise Wrong(f"{name}() of numbers and strings mixed")
        return pick(values, key=order_key)
    return run


def _unique(args: Args) -> Any:
    return tuple(dict.fromkeys(v for (v,) in args if v is not None))


@dataclass(frozen=True, slots=True)
class Function:
    """A function of queries: ``low``..``high`` arguments (``high`` None: any number).
    A scalar one runs as ``run(now, *args)`` and gives NULL for a NULL argument unless
    ``nulls`` is False; an aggregate one as ``run(argument tuples, one per row)``."""

    spelling: str
    low: int
    high: int | None
    run: Callable[..., Any]
    aggregate: bool = False
    nulls: bool = True


def _unsupported_here(*args: Any) -> Any:
    raise Wrong("arrayJoin() and if() are evaluated by the query itself")


_LIST: Final = [
    # time
    Function("now", 0, 1, lambda now, *precision: now),
    Function("now64", 0, 1, lambda now, *precision: now),
    Function("today", 0, 0, lambda now: start_of("DAY", now)),
    Function("toStartOfSecond", 1, 1, _starting("SECOND")),
    Function("toStartOfMinute", 1, 1, _starting("MINUTE")),
    Function("toStartOfFiveMinutes", 1, 1, _starting("FIVE_MINUTES")),
    Function("toStartOfFifteenMinutes", 1, 1, _starting("FIFTEEN_MINUTES")),
    Function("toStartOfHour", 1, 1, _starting("HOUR")),
    Function("toStartOfDay", 1, 1, _starting("DAY")),
    Function("toStartOfWeek", 1, 2, _week),
    Function("toMonday", 1, 1, _starting("WEEK")),
    Function("toStartOfMonth", 1, 1, _starting("MONTH")),
    Function("toStartOfQuarter", 1, 1, _starting("QUARTER")),
    Function("toStartOfYear", 1, 1, _starting("YEAR")),
    Function("toDate", 1, 1, _starting("DAY")),
    Function("toDateTime", 1, 1, _starting("SECOND")),
    Function("toDateTime64", 1, 2, _precise),
    Function("date_trunc", 2, 2, _trunc),
    Function("fromUnixTimestamp64Milli", 1, 1, lambda now, ms: _time(ms)),
    Function("toUnixTimestamp64Milli", 1, 1, lambda now, time: _time(time)),
    Function("fromUnixTimestamp", 1, 1, lambda now, s: _int64(_time(s) * 1000)),
    Function("toUnixTimestamp", 1, 1, lambda now, time: _time(time) // 1000),
    # arrays and strings
    Function("has", 2, 2, _has),
    Function("hasAny", 2, 2, _has_any),
    Function("hasAll", 2, 2, _has_all),
    Function("arrayJoin", 1, 1, _unsupported_here),
    Function("length", 1, 1, _length),
    Function("empty", 1, 1, lambda now, value: int(_length(now, value) == 0)),
    Function("notEmpty", 1, 1, lambda now, value: int(_length(now, value) > 0)),
    Function("lower", 1, 1, _strings(str.lower, "lower()")),
    Function("upper", 1, 1, _strings(str.upper, "upper()")),
    Function("trim", 1, 1, _strings(str.strip, "trim()")),
    Function("startsWith", 2, 2, _strings(lambda s, p: int(s.startswith(p)), "startsWith()")),
    Function("endsWith", 2, 2, _strings(lambda s, p: int(s.endswith(p)), "endsWith()")),
    Function("concat", 1, None, lambda now, *values: _concat(*values)),
    Function("substring", 2, 3, _substring),
    # numbers, conditions, conversions
    Function("round", 1, 2, _round),
    Function("floor", 1, 1, _rounded(math.floor)),
    Function("ceil", 1, 1, _rounded(math.ceil)),
    Function("abs", 1, 1, lambda now, value: abs(_number(value, "abs()"))),
    Function("if", 3, 3, _unsupported_here, nulls=False),
    Function("coalesce", 1, None, _coalesce, nulls=False),
    Function("ifNull", 2, 2, _coalesce, nulls=False),
    Function("toString", 1, 1, lambda now, value: _text(value)),
    Function("toInt64", 1, 1, _to_int),
    Function("toInt32", 1, 1, _to_int),
    Function("toFloat64", 1, 1, _to_float),
    # aggregates
    Function("count", 0, 1, lambda args: sum(1 for t in args if None not in t), aggregate=True),
    Function("countIf", 1, 1, lambda args: sum(1 for (c,) in args if truth(c)), aggregate=True),
    Function("sum", 1, 1, lambda args: _sum((v for (v,) in args), "sum()"), aggregate=True),
    Function("sumIf", 2, 2, lambda args: _sum((v for v, c in args if truth(c)), "sumIf()"),
             aggregate=True),
    Function("avg", 1, 1, _avg, aggregate=True),
    Function("min", 1, 1, _extreme(min, "min"), aggregate=True),
    Function("max", 1, 1, _extreme(max, "max"), aggregate=True),
    Function("uniq", 1, None, lambda args: len({t for t in args if None not in t}), aggregate=True),
    Function("uniqExact", 1, None, lambda args: len({t for t in args if None not in t}),
             aggregate=True),
    Function("any", 1, 1, lambda args: next((v for (v,) in args if v is not None), None),
             aggregate=True),
    Function("groupArray", 1, 1, lambda args: tuple(v for (v,) in args if v is not None),
             aggregate=True),
    Function("groupUniqArray", 1, 1, _unique, aggregate=True),
]
#: The functions by lower-case name (queries may spell them in any case).
FUNCTIONS: Final[dict[str, Function]] = {function.spelling.lower(): function for function in _LIST}
SPELLINGS: Final = tuple(function.spelling for function in _LIST)
