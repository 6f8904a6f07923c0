"""A small SQL: the SELECT that analytics queries are written in, parsed by hand.

``keystile serve`` answers Unkey's ``analytics.getVerifications``, whose queries are
ClickHouse-flavoured SELECTs. This module turns the text into a tree of frozen nodes
(never ``eval``, never SQL handed to a database); :mod:`keystile._sqleval` checks the
tree against a table's columns and evaluates it over rows. Keywords and function
names are case-insensitive; ``--`` and ``/* */`` are comments::

    query   := SELECT [DISTINCT] item ("," item)* FROM name ["." name]
               [WHERE expr] [GROUP BY expr ("," expr)*] [HAVING expr]
               [ORDER BY expr [ASC|DESC] [NULLS FIRST|LAST] ("," ...)*]
               [LIMIT n [OFFSET m] | LIMIT m "," n] [";"]
    item    := "*" | expr [[AS] name]
    expr    := and (OR and)*          and := not (AND not)*       not := NOT not | compare
    compare := sum [("="|"=="|"!="|"<>"|"<"|"<="|">"|">=") sum | IS [NOT] NULL
                    | [NOT] IN ("(" list ")" | "[" list "]") | [NOT] BETWEEN sum AND sum
                    | [NOT] (LIKE|ILIKE) sum]
    sum     := product (("+"|"-"|"||") product)*     product := unary (("*"|"/"|"%") unary)*
    unary   := "-" unary | primary
    primary := number | 'string' | NULL | TRUE | FALSE | name | name "(" [DISTINCT] [list|"*"] ")"
             | "(" expr ")" | "[" [list] "]" | INTERVAL (unary unit | 'n unit')
             | CASE [expr] (WHEN expr THEN expr)+ [ELSE expr] END

>>> query = parse("SELECT outcome, count() AS n FROM key_verifications_v1 GROUP BY outcome")
>>> [item.name for item in query.items], query.table
(['outcome', 'n'], 'key_verifications_v1')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from ._errors import ValidationError

__all__ = [
    "MAX_DEPTH",
    "MAX_QUERY_LENGTH",
    "Array",
    "Between",
    "Call",
    "Case",
    "Column",
    "InList",
    "Interval",
    "IsNull",
    "Item",
    "Literal",
    "Node",
    "Operation",
    "Order",
    "Select",
    "SqlError",
    "Star",
    "children",
    "parse",
    "walk",
    "with_children",
]

MAX_QUERY_LENGTH: Final = 10_000
#: How deep a tree may grow (``a + b + c`` is 3 deep): evaluation recurses that far.
MAX_DEPTH: Final = 100
_MAX_NESTING: Final = 32  # parentheses, calls and NOTs inside each other, while parsing
INTERVAL_UNITS: Final = ("SECOND", "MINUTE", "HOUR", "DAY", "WEEK", "MONTH", "QUARTER", "YEAR")


class SqlError(ValidationError):
    """A query keystile cannot run. ``code`` says what kind of problem (Unkey's names:
    ``invalid_analytics_query``, ``invalid_analytics_table``, ``invalid_analytics_function``,
    ``invalid_analytics_query_type``, ``query_range_exceeds_retention``); ``position``
    is the 0-based offset in the query it is about, when there is one."""

    def __init__(self, message: str, position: int | None = None, *,
                 code: str = "invalid_analytics_query", fix: str | None = None) -> None:
        where = "" if position is None else f" (at position {position})"
        super().__init__(message + where)
        self.reason = message
        self.position = position
        self.code = code
        self.fix = fix


# -- the tree -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """A node of an expression; ``pos`` and ``depth`` play no part in equality, so
    ``GROUP BY outcome`` and a later ``outcome`` compare equal."""

    pos: int = field(compare=False)
    depth: int = field(default=1, init=False, compare=False)

    def __post_init__(self) -> None:
        depth = 1 + max((child.depth for child in children(self)), default=0)
        if depth > MAX_DEPTH:
            raise SqlError(f"the query is nested more than {MAX_DEPTH} levels deep", self.pos)
        object.__setattr__(self, "depth", depth)


@dataclass(frozen=True, slots=True)
class Literal(Node):
    value: Any  # int, float, str or None


@dataclass(frozen=True, slots=True)
class Column(Node):
    name: str


@dataclass(frozen=True, slots=True)
class Star(Node):
    """``*`` in ``count(*)``."""


@dataclass(frozen=True, slots=True)
class Call(Node):
    name: str  # lower case
    args: tuple[Node, ...]
    distinct: bool = False
    spelled: str = field(default="", compare=False)  # as the query wrote it


@dataclass(frozen=True, slots=True)
class Operation(Node):
    """``op`` is ``+ - * / % || = != < <= > >= and or like ilike`` (two operands) or
    ``not``, ``neg`` (one)."""

    op: str
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class InList(Node):
    operand: Node
    items: tuple[Node, ...]
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Between(Node):
    operand: Node
    low: Node
    high: Node
    negated: bool = False


@dataclass(frozen=True, slots=True)
class IsNull(Node):
    operand: Node
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Interval(Node):
    amount: Node
    unit: str  # one of INTERVAL_UNITS


@dataclass(frozen=True, slots=True)
class Case(Node):
    operand: Node | None
    whens: tuple[tuple[Node, Node], ...]
    default: Node | None


@dataclass(frozen=True, slots=True)
class Array(Node):
    items: tuple[Node, ...]


def children(node: Node) -> tuple[Node, ...]:
    """The direct sub-expressions of ``node``, in order."""
    if isinstance(node, Operation):
        return node.operands
    if isinstance(node, Call):
        return node.args
    if isinstance(node, Array):
        return node.items
    if isinstance(node, InList):
        return (node.operand, *node.items)
    if isinstance(node, Between):
        return node.operand, node.low, node.high
    if isinstance(node, IsNull):
        return (node.operand,)
    if isinstance(node, Interval):
        return (node.amount,)
    if isinstance(node, Case):
        parts = [] if node.operand is None else [node.operand]
        parts += [part for pair in node.whens for part in pair]
        return (*parts, *(() if node.default is None else (node.default,)))
    return ()


def with_children(node: Node, new: list[Node]) -> Node:
    """``node`` with its sub-expressions replaced by ``new`` (in :func:`children` order)."""
    if not new:
        return node
    if isinstance(node, Operation):
        return Operation(node.pos, node.op, tuple(new))
    if isinstance(node, Call):
        return Call(node.pos, node.name, tuple(new), node.distinct, node.spelled)
    if isinstance(node, Array):
        return Array(node.pos, tuple(new))
    if isinstance(node, InList):
        return InList(node.pos, new[0], tuple(new[1:]), node.negated)
    if isinstance(node, Between):
        return Between(node.pos, new[0], new[1], new[2], node.negated)
    if isinstance(node, IsNull):
        return IsNull(node.pos, new[0], node.negated)
    if isinstance(node, Interval):
        return Interval(node.pos, new[0], node.unit)
    assert isinstance(node, Case)
    parts = iter(new)
    operand = None if node.operand is None else next(parts)
    whens = tuple((next(parts), next(parts)) for _ in node.whens)
    return Case(node.pos, operand, whens, None if node.default is None else next(parts))


def walk(node: Node) -> Iterator[Node]:
    """``node`` and every node below it."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(children(current)))


@dataclass(frozen=True, slots=True)
class Item:
    """A selected expression (``None``: ``*``) and the name of its column in the answer:
    its alias, else its text as written."""

    expr: Node | None
    name: str
    aliased: bool = False


@dataclass(frozen=True, slots=True)
class Order:
    expr: Node
    descending: bool = False
    nulls_first: bool | None = None  # None: nulls last (ClickHouse's default)


@dataclass(frozen=True, slots=True)
class Select:
    items: tuple[Item, ...]
    table: str
    table_pos: int
    where: Node | None = None
    group_by: tuple[Node, ...] = ()
    having: Node | None = None
    order_by: tuple[Order, ...] = ()
    limit: int | None = None
    offset: int = 0
    distinct: bool = False


# -- tokens ---------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<skip>\s+|--[^\n]*|/\*.*?\*/)
  | (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<str>'(?:[^'\\]|\\.|'')*')
  | (?P<qid>"(?:[^"]|"")*"|`[^`]*`)
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|<>|!=|==|->|\|\||[-+*/%=<>(),\[\];.:?{}])
""", re.VERBOSE | re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_OPENERS = {"'": "string", '"': "quoted name", "`": "quoted name"}
RESERVED: Final = frozenset({
    "ALL", "AND", "ANTI", "ARRAY", "AS", "ASC", "ASOF", "BETWEEN", "BY", "CASE", "CROSS",
    "DESC", "DISTINCT", "ELSE", "END", "EXCEPT", "FINAL", "FIRST", "FORMAT", "FROM", "FULL",
    "GLOBAL", "GROUP", "HAVING", "ILIKE", "IN", "INNER", "INTERSECT", "INTERVAL", "INTO",
    "IS", "JOIN", "LAST", "LEFT", "LIKE", "LIMIT", "NOT", "NULL", "NULLS", "OFFSET", "ON",
    "OR", "ORDER", "OUTER", "PREWHERE", "RIGHT", "SAMPLE", "SELECT", "SEMI", "SETTINGS",
    "THEN", "UNION", "USING", "WHEN", "WHERE", "WINDOW", "WITH"
})
_STATEMENTS: Final = frozenset({
    "ALTER", "ATTACH", "BACKUP", "CHECK", "CREATE", "DELETE", "DESCRIBE", "DETACH", "DROP",
    "EXCHANGE", "EXPLAIN", "GRANT", "INSERT", "KILL", "OPTIMIZE", "RENAME", "REPLACE",
    "RESTORE", "REVOKE", "SET", "SHOW", "SYSTEM", "TRUNCATE", "UNDROP", "UPDATE", "USE",
    "WATCH"
})


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # num, str, qid, id, op, end
    text: str  # the value: a number's digits, a string's content, a name, an operator
    pos: int
    end: int

    def word(self) -> str:
        """The keyword this token is (upper case), or ``""``."""
        return self.text.upper() if self.kind == "id" else ""

    def describe(self) -> str:
        if self.kind == "end":
            return "the end of the query"
        text = self.text if len(self.text) <= 30 else self.text[:27] + "..."
        return f"'{text}'" if self.kind != "str" else repr(text)


def tokenize(text: str) -> list[Token]:
    tokens = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or (text.startswith("/*", pos) and match.lastgroup != "skip"):
            raise _bad_character(text, pos)
        kind = match.lastgroup or "skip"
        if kind != "skip":
            tokens.append(Token(kind, _value(kind, match.group()), pos, match.end()))
        pos = match.end()
    tokens.append(Token("end", "", len(text), len(text)))
    return tokens


def _bad_character(text: str, pos: int) -> SqlError:
    char = text[pos]
    if text.startswith("/*", pos):
        return SqlError("this comment is never closed with */", pos)
    if char in _OPENERS:
        return SqlError(f"this {_OPENERS[char]} is never closed with {char}", pos)
    return SqlError(f"unexpected character {char!r}", pos)


def _value(kind: str, raw: str) -> str:
    if kind == "str":
        return re.sub(r"\\(.)|''", lambda m: _ESCAPES.get(m.group(1), m.group(1)) if m.group(1)
                      else "'", raw[1:-1], flags=re.DOTALL)
    if kind == "qid":
        return raw[1:-1].replace('""', '"') if raw[0] == '"' else raw[1:-1]
    return raw


# -- the parser -----------------------------------------------------------------------------------


def parse(text: str) -> Select:
    """The tree of ``text``; a :class:`SqlError` names what is wrong, and where."""
    if not isinstance(text, str) or not text.strip():
        raise SqlError("the query is empty; write SELECT … FROM key_verifications_v1")
    if len(text) > MAX_QUERY_LENGTH:
        raise SqlError(f"the query is longer than {MAX_QUERY_LENGTH} characters")
    return _Parser(text).query()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0
        self.nesting = 0

    # -- tokens --

    @property
    def token(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def at(self, *words: str) -> bool:
        return self.token.word() in words

    def at_op(self, *ops: str) -> bool:
        return self.token.kind == "op" and self.token.text in ops

    def accept(self, word: str) -> bool:
        if self.token.word() == word:
            self.advance()
            return True
        return False

    def expect(self, word: str, after: str) -> Token:
        if self.token.word() == word or (self.token.kind == "op" and self.token.text == word):
            return self.advance()
        raise SqlError(f"expected {word} {after}, found {self.token.describe()}", self.token.pos)

    def fail(self, message: str, token: Token | None = None) -> SqlError:
        token = token or self.token
        return SqlError(message, token.pos)

    def enter(self) -> None:
        self.nesting += 1
        if self.nesting > _MAX_NESTING:
            raise self.fail(f"the query nests more than {_MAX_NESTING} levels of parentheses, "
                            "calls or NOTs")

    # -- the statement --

    def query(self) -> Select:
        first = self.token
        if first.word() != "SELECT":
            raise self._not_a_select(first)
        self.advance()
        distinct = self.accept("DISTINCT")
        items = self.items()
        self.expect("FROM", "after the selected columns")
        table, table_pos = self.table()
        where = self.expr() if self.accept("WHERE") else None
        group_by = self.by_list("GROUP") if self.at("GROUP") else ()
        having = self.expr() if self.accept("HAVING") else None
        order_by = self.order_by() if self.at("ORDER") else ()
        limit, offset = self.limit() if self.accept("LIMIT") else (None, 0)
        if self.at_op(";"):
            self.advance()
        if self.token.kind != "end":
            raise self._trailing()
        return Select(tuple(items), table, table_pos, where, tuple(group_by), having,
                      tuple(order_by), limit, offset, distinct)

    def _not_a_select(self, first: Token) -> SqlError:
        word = first.word()
        if word in _STATEMENTS:
            return SqlError(f"only SELECT queries are allowed, not {word}", first.pos,
                            code="invalid_analytics_query_type")
        if word == "WITH":
            return SqlError("WITH (common table expressions) is not supported; write one SELECT",
                            first.pos)
        return SqlError(f"a query starts with SELECT, not {first.describe()}", first.pos)

    def _trailing(self) -> SqlError:
        token = self.token
        word = token.word()
        if word in ("UNION", "INTERSECT", "EXCEPT"):
            return self.fail(f"{word} is not supported: one SELECT per query")
        if word in ("WHERE", "GROUP", "HAVING", "ORDER", "LIMIT"):
            return self.fail(f"{word} is out of place: the clauses go in the order WHERE, "
                             "GROUP BY, HAVING, ORDER BY, LIMIT")
        if word in ("FORMAT", "SETTINGS", "INTO"):
            return self.fail(f"{word} is not supported")
        if self.tokens[self.index - 1].text == ";":
            return self.fail("one statement per query: nothing may follow ';'")
        return self.fail(f"unexpected {token.describe()} after the query")

    def items(self) -> list[Item]:
        items = [self.item()]
        while self.at_op(","):
            self.advance()
            items.append(self.item())
        return items

    def item(self) -> Item:
        if self.at_op("*"):
            self.advance()
            return Item(None, "*")
        start = self.token.pos
        expr = self.expr()
        if self.accept("AS"):
            return Item(expr, self.name("after AS"), aliased=True)
        if self.token.kind == "qid" or (self.token.kind == "id" and self.token.word() not in RESERVED):
            return Item(expr, self.name("as an alias"), aliased=True)
        if isinstance(expr, Column):
            return Item(expr, expr.name)
        end = self.tokens[self.index - 1].end
        return Item(expr, " ".join(self.text[start:end].split()))

    def name(self, after: str) -> str:
        token = self.token
        if token.kind == "qid" or (token.kind == "id" and token.word() not in RESERVED):
            self.advance()
            return token.text
        raise self.fail(f"expected a name {after}, found {token.describe()}")

    def table(self) -> tuple[str, int]:
        token = self.token
        if self.at_op("("):
            raise self.fail("subqueries are not supported: FROM names one table")
        if token.kind not in ("id", "qid") or token.word() in RESERVED:
            raise self.fail(f"expected a table name after FROM, found {token.describe()}")
        self.advance()
        name = token.text
        while self.at_op("."):
            self.advance()
            name += "." + self.name("after '.' in the table name")
        if self.at_op("("):
            raise SqlError(f"table functions such as {name}(…) are not allowed", token.pos,
                           code="invalid_analytics_function")
        if self.at_op(",") or self.at("JOIN", "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "ARRAY",
                                      "GLOBAL", "ANY", "ALL", "SEMI", "ANTI", "ASOF"):
            raise self.fail("joins are not supported: one table per query")
        if self.at("FINAL", "SAMPLE", "PREWHERE"):
            raise self.fail(f"{self.token.word()} is not supported")
        if self.token.kind == "qid" or (self.token.kind == "id" and self.token.word() not in RESERVED):
            raise self.fail("table aliases are not supported: name columns without a table")
        return name, token.pos

    def by_list(self, clause: str) -> list[Node]:
        self.advance()
        self.expect("BY", f"after {clause}")
        exprs = [self.expr()]
        while self.at_op(","):
            self.advance()
            exprs.append(self.expr())
        return exprs

    def order_by(self) -> list[Order]:
        self.advance()
        self.expect("BY", "after ORDER")
        orders = [self.order()]
        while self.at_op(","):
            self.advance()
            orders.append(self.order())
        return orders

    def order(self) -> Order:
        expr = self.expr()
        descending = self.accept("DESC") or self.accept("DESCENDING")
        if not descending and not self.accept("ASC"):
            self.accept("ASCENDING")
        nulls_first = None
        if self.accept("NULLS"):
            if not self.at("FIRST", "LAST"):
                raise self.fail(f"expected FIRST or LAST after NULLS, found {self.token.describe()}")
            nulls_first = self.advance().word() == "FIRST"
        return Order(expr, descending, nulls_first)

    def limit(self) -> tuple[int, int]:
        first = self.count("LIMIT")
        if self.at_op(","):
            self.advance()
            return self.count("LIMIT m,"), first
        if self.accept("OFFSET"):
            return first, self.count("OFFSET")
        if self.at("BY", "WITH"):
            raise self.fail(f"LIMIT … {self.token.word()} is not supported")
        return first, 0

    def count(self, after: str) -> int:
        token = self.token
        if token.kind != "num" or not token.text.isdigit() or len(token.text) > 18:
            raise self.fail(f"expected a whole number after {after}, found {token.describe()}")
        self.advance()
        return int(token.text)

    # -- expressions --

    def chain(self, operand: Callable[[], Node], *ops: str) -> Node:
        """``operand (op operand)*``, left to right; ``ops`` are operators or keywords."""
        node = operand()
        while self.at(*ops) or self.at_op(*ops):
            token = self.advance()
            node = Operation(token.pos, token.text.lower(), (node, operand()))
        return node

    def expr(self) -> Node:
        return self.chain(self.conjunction, "OR")

    def conjunction(self) -> Node:
        return self.chain(self.negation, "AND")

    def negation(self) -> Node:
        if self.at("NOT"):
            token = self.advance()
            self.enter()
            operand = self.negation()
            self.nesting -= 1
            return Operation(token.pos, "not", (operand,))
        return self.comparison()

    def comparison(self) -> Node:
        left = self.sum()
        token = self.token
        if token.kind == "op" and token.text in ("=", "==", "!=", "<>", "<", "<=", ">", ">="):
            self.advance()
            op = {"==": "=", "<>": "!="}.get(token.text, token.text)
            return Operation(token.pos, op, (left, self.sum()))
        if self.accept("IS"):
            negated = self.accept("NOT")
            self.expect("NULL", "after IS")
            return IsNull(token.pos, left, negated)
        negated = self.at("NOT")
        if negated:
            if self.tokens[self.index + 1].word() not in ("IN", "BETWEEN", "LIKE", "ILIKE"):
                return left  # "a NOT b": left for the caller to refuse
            self.advance()
        if self.accept("IN"):
            return InList(token.pos, left, tuple(self.in_list()), negated)
        if self.accept("BETWEEN"):
            low = self.sum()
            self.expect("AND", "between the bounds of BETWEEN")
            return Between(token.pos, left, low, self.sum(), negated)
        if self.at("LIKE", "ILIKE"):
            node: Node = Operation(token.pos, self.advance().word().lower(), (left, self.sum()))
            return Operation(token.pos, "not", (node,)) if negated else node
        return left

    def in_list(self) -> list[Node]:
        if not self.at_op("(", "["):
            raise self.fail(f"expected '(' after IN, found {self.token.describe()}")
        closer = ")" if self.advance().text == "(" else "]"
        if self.at("SELECT"):
            raise self.fail("subqueries are not supported: list the values, IN ('a', 'b')")
        items = self.list_until(closer, "in the IN list")
        if not items:
            raise self.fail("IN needs at least one value")
        return items

    def list_until(self, closer: str, where: str) -> list[Node]:
        self.enter()
        items: list[Node] = []
        if not self.at_op(closer):
            items.append(self.expr())
            while self.at_op(","):
                self.advance()
                items.append(self.expr())
        if not self.at_op(closer):
            raise self.fail(f"expected ',' or '{closer}' {where}, found {self.token.describe()}")
        self.advance()
        self.nesting -= 1
        return items

    def sum(self) -> Node:
        return self.chain(self.product, "+", "-", "||")

    def product(self) -> Node:
        return self.chain(self.unary, "*", "/", "%")

    def unary(self) -> Node:
        if self.at_op("-"):
            token = self.advance()
            self.enter()
            operand = self.unary()
            self.nesting -= 1
            if isinstance(operand, Literal) and isinstance(operand.value, (int, float)):
                return Literal(token.pos, -operand.value)
            return Operation(token.pos, "neg", (operand,))
        return self.primary()

    def primary(self) -> Node:
        token = self.token
        if token.kind == "num":
            self.advance()
            return Literal(token.pos, _number(token))
        if token.kind == "str":
            self.advance()
            return Literal(token.pos, token.text)
        if token.kind == "qid":
            self.advance()
            return Column(token.pos, token.text)
        if token.kind == "id":
            return self.word_expr(token)
        if self.at_op("("):
            return self.parenthesised()
        if self.at_op("["):
            self.advance()
            return Array(token.pos, tuple(self.list_until("]", "in the array")))
        if self.at_op("*"):
            raise self.fail("'*' stands alone only as SELECT * or count(*)")
        raise self.fail(f"expected a value, a column or a function, found {token.describe()}")

    def parenthesised(self) -> Node:
        self.advance()
        if self.at("SELECT"):
            raise self.fail("subqueries are not supported")
        self.enter()
        node = self.expr()
        if self.at_op(","):
            raise self.fail("tuples are not supported")
        self.expect(")", "to close the parenthesis")
        self.nesting -= 1
        return node

    def word_expr(self, token: Token) -> Node:
        word = token.word()
        if word in ("NULL", "TRUE", "FALSE"):
            self.advance()
            return Literal(token.pos, {"NULL": None, "TRUE": 1, "FALSE": 0}[word])
        if word == "INTERVAL":
            return self.interval()
        if word == "CASE":
            return self.case()
        if word == "SELECT":
            raise self.fail("subqueries are not supported")
        if word in RESERVED:
            raise self.fail(f"unexpected keyword {word} where a value belongs")
        self.advance()
        if self.at_op("->"):
            raise self.fail("lambda functions (x -> …) are not supported",
                            token=self.token)
        if self.at_op("."):
            raise self.fail("qualified names (table.column) are not supported: name the column")
        if not self.at_op("("):
            return Column(token.pos, token.text)
        return self.call(token)

    def call(self, name: Token) -> Node:
        self.advance()
        distinct = self.accept("DISTINCT")
        args: list[Node]
        if self.at_op("*") and self.tokens[self.index + 1].text == ")":
            args = [Star(self.advance().pos)]
            self.advance()
        else:
            if self.token.kind == "id" and self.tokens[self.index + 1].text == "->":
                raise self.fail("lambda functions (x -> …) are not supported",
                                token=self.tokens[self.index + 1])
            args = self.list_until(")", f"in the arguments of {name.text}()")
        if self.at_op("("):
            raise self.fail(f"parametric functions such as {name.text}(…)(…) are not supported")
        return Call(name.pos, name.text.lower(), tuple(args), distinct, name.text)

    def interval(self) -> Node:
        start = self.advance()
        if self.token.kind == "str":  # INTERVAL '7 day'
            token = self.advance()
            parts = token.text.split()
            if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 12:
                raise self.fail(f"expected INTERVAL 'n unit', found {token.describe()}", token)
            return Interval(start.pos, Literal(token.pos, int(parts[0])), _unit(parts[1], token))
        amount = self.unary()
        unit = self.token
        if unit.kind != "id":
            raise self.fail(f"expected a unit ({', '.join(INTERVAL_UNITS)}) after INTERVAL n, "
                            f"found {unit.describe()}")
        self.advance()
        return Interval(start.pos, amount, _unit(unit.text, unit))

    def case(self) -> Node:
        start = self.advance()
        self.enter()
        operand = None if self.at("WHEN") else self.expr()
        whens = []
        while self.accept("WHEN"):
            condition = self.expr()
            self.expect("THEN", "after the WHEN condition")
            whens.append((condition, self.expr()))
        if not whens:
            raise self.fail(f"expected WHEN in CASE, found {self.token.describe()}")
        default = self.expr() if self.accept("ELSE") else None
        self.expect("END", "to close CASE")
        self.nesting -= 1
        return Case(start.pos, operand, tuple(whens), default)


def _unit(text: str, token: Token) -> str:
    unit = text.upper()
    unit = unit[:-1] if unit.endswith("S") and unit[:-1] in INTERVAL_UNITS else unit
    if unit not in INTERVAL_UNITS:
        raise SqlError(f"{text!r} is not an interval unit; they are {', '.join(INTERVAL_UNITS)}",
                       token.pos)
    return unit


def _number(token: Token) -> int | float:
    text = token.text
    if len(text) > 40:
        raise SqlError(f"the number {token.describe()} is too long", token.pos)
    if text.isdigit():
        value = int(text)
        if value >= 2**63:
            raise SqlError(f"the number {text} is beyond 64 bits", token.pos)
        return value
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise SqlError(f"the number {text} is out of range", token.pos)
    return number
