"""Permission queries, in Unkey's grammar, parsed once and evaluated against a set.

::

    expr    := and_expr ( OR and_expr )*
    and_expr:= primary ( AND primary )*
    primary := PERMISSION | "(" expr ")"

``AND`` binds tighter than ``OR``; operators are case-insensitive whole words;
whitespace is insignificant. Permission names are letters, digits and ``. _ - * : /``.

>>> query = parse_query("read AND (write OR admin)")
>>> query.allows(frozenset({"read", "admin"}))
True
"""

from __future__ import annotations

import functools
import re
from collections.abc import Set
from dataclasses import dataclass

from ._errors import PermissionQueryError

__all__ = ["MAX_QUERY_LENGTH", "PermissionQuery", "parse_query"]

MAX_QUERY_LENGTH = 1000
_TOKEN = re.compile(r"\s*(?:(\()|(\))|([A-Za-z0-9._\-*:/]+))")
_WS = re.compile(r"\s*")

# A node is a permission name, or ("and" | "or", children).
Node = str | tuple[str, tuple["Node", ...]]


@dataclass(frozen=True, slots=True)
class PermissionQuery:
    """A parsed permission query; ``allows(permissions)`` evaluates it."""

    text: str
    tree: Node

    def allows(self, permissions: Set[str]) -> bool:
        return _evaluate(self.tree, permissions)

    def names(self) -> frozenset[str]:
        """Every permission name the query mentions."""
        return frozenset(_names(self.tree))


def _evaluate(node: Node, permissions: Set[str]) -> bool:
    if isinstance(node, str):
        return node in permissions
    op, children = node
    if op == "and":
        return all(_evaluate(child, permissions) for child in children)
    return any(_evaluate(child, permissions) for child in children)


def _names(node: Node) -> list[str]:
    if isinstance(node, str):
        return [node]
    return [name for child in node[1] for name in _names(child)]


@functools.lru_cache(maxsize=1024)
def parse_query(text: str) -> PermissionQuery:
    """Parse ``text``; raise :class:`PermissionQueryError` naming the position of a fault."""
    if not text.strip():
        raise PermissionQueryError("empty query", query=text, position=0)
    if len(text) > MAX_QUERY_LENGTH:
        raise PermissionQueryError(
            f"query longer than {MAX_QUERY_LENGTH} characters", query=text, position=MAX_QUERY_LENGTH
        )
    parser = _Parser(text)
    tree = parser.expr(depth=0)
    parser.expect_end()
    return PermissionQuery(text, tree)


_MAX_DEPTH = 50


class _Parser:
    """Recursive descent over tokens: names, parentheses and the words AND / OR."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = self._tokenize(text)
        self.index = 0

    def _tokenize(self, text: str) -> list[tuple[str, str, int]]:
        tokens: list[tuple[str, str, int]] = []
        pos = 0
        end = len(text.rstrip())
        while pos < end:
            match = _TOKEN.match(text, pos)
            if match is None:
                start = _WS.match(text, pos).end()  # type: ignore[union-attr]
                raise self.error(f"unexpected character {text[start]!r}", start)
            kind, value = self._classify(match)
            tokens.append((kind, value, match.start(match.lastindex or 0)))
            pos = match.end()
        tokens.append(("end", "", len(text)))
        return tokens

    @staticmethod
    def _classify(match: re.Match[str]) -> tuple[str, str]:
        if match.group(1):
            return "(", "("
        if match.group(2):
            return ")", ")"
        word = match.group(3)
        upper = word.upper()
        if upper in ("AND", "OR"):
            return upper, word
        return "name", word

    def error(self, message: str, position: int) -> PermissionQueryError:
        return PermissionQueryError(message, query=self.text, position=position)

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.index]

    def take(self) -> tuple[str, str, int]:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expr(self, depth: int) -> Node:
        children = [self.and_expr(depth)]
        while self.peek()[0] == "OR":
            self.take()
            children.append(self.and_expr(depth))
        return children[0] if len(children) == 1 else ("or", tuple(children))

    def and_expr(self, depth: int) -> Node:
        children = [self.primary(depth)]
        while self.peek()[0] == "AND":
            self.take()
            children.append(self.primary(depth))
        return children[0] if len(children) == 1 else ("and", tuple(children))

    def primary(self, depth: int) -> Node:
        kind, value, position = self.take()
        if kind == "name":
            return value
        if kind == "(":
            if depth >= _MAX_DEPTH:
                raise self.error(f"parentheses nested deeper than {_MAX_DEPTH}", position)
            node = self.expr(depth + 1)
            closing = self.take()
            if closing[0] != ")":
                raise self.error("expected ')'", closing[2])
            return node
        if kind == "end":
            raise self.error("expected a permission name or '(' but the query ended", position)
        raise self.error(f"expected a permission name or '(' but found {value!r}", position)

    def expect_end(self) -> None:
        kind, value, position = self.peek()
        if kind != "end":
            raise self.error(f"unexpected {value!r}; join permissions with AND or OR", position)
