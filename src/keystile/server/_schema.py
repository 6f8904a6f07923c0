"""JSON Schema, written once: the server validates requests with it and publishes it.

The builders below make the plain JSON Schema dicts that go into ``/openapi.json``;
:func:`validate` checks a request body against the same dicts, so the document and
the server cannot disagree. It covers the part of JSON Schema the builders emit:
``type`` (a name or a list of names), ``properties``, ``required``,
``additionalProperties``, ``minLength``/``maxLength``, ``pattern``,
``minimum``/``maximum``, ``enum``, ``items`` and ``minItems``/``maxItems``.

>>> issues = validate(obj({"apiId": string(3, 255)}, required=["apiId"]), {}, "body")[1]
>>> [(issue["location"], issue["message"]) for issue in issues]
[('body.apiId', 'is required')]
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "FREE_OBJECT",
    "Schema",
    "array",
    "boolean",
    "integer",
    "nullable",
    "obj",
    "string",
    "validate",
]

Schema = dict[str, Any]
Issue = dict[str, str]


def _described(schema: Schema, description: str | None) -> Schema:
    if description:
        schema["description"] = description
    return schema


def string(
    low: int | None = None, high: int | None = None, *, pattern: str | None = None,
    enum: Iterable[str] | None = None, description: str | None = None,
) -> Schema:
    schema: Schema = {"type": "string"}
    if low is not None:
        schema["minLength"] = low
    if high is not None:
        schema["maxLength"] = high
    if pattern is not None:
        schema["pattern"] = pattern
    if enum is not None:
        schema["enum"] = list(enum)
    return _described(schema, description)


def integer(low: int | None = None, high: int | None = None, *, description: str | None = None) -> Schema:
    schema: Schema = {"type": "integer", "format": "int64"}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    return _described(schema, description)


def boolean(description: str | None = None) -> Schema:
    return _described({"type": "boolean"}, description)


def array(items: Schema, low: int | None = None, high: int | None = None, *,
          description: str | None = None) -> Schema:
    schema: Schema = {"type": "array", "items": items}
    if low is not None:
        schema["minItems"] = low
    if high is not None:
        schema["maxItems"] = high
    return _described(schema, description)


def obj(properties: Mapping[str, Schema], required: Iterable[str] = (), *, strict: bool = True,
        description: str | None = None) -> Schema:
    """An object; ``strict`` (Unkey's default) refuses fields it does not list."""
    schema: Schema = {"type": "object", "properties": dict(properties)}
    names = list(required)
    if names:
        schema["required"] = names
    schema["additionalProperties"] = not strict
    return _described(schema, description)


def nullable(schema: Schema) -> Schema:
    """``schema`` that also admits ``null`` (OpenAPI 3.1: a list of types)."""
    kind = schema["type"]
    out = {**schema, "type": [*kind, "null"] if isinstance(kind, list) else [kind, "null"]}
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


FREE_OBJECT: Schema = {"type": "object", "additionalProperties": True,
                       "description": "Any JSON object."}


# -- validation ----------------------------------------------------------------------------


def validate(schema: Schema, value: Any, location: str) -> tuple[Any, list[Issue]]:
    """Check ``value``; returns it normalised (``2.0`` where an integer is due becomes
    ``2``) and the issues found, each ``{location, message, fix?}`` as Unkey reports them."""
    issues: list[Issue] = []
    return _check(schema, value, location, issues), issues


def _check(schema: Schema, value: Any, location: str, issues: list[Issue]) -> Any:
    kinds = schema.get("type")
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        kind = next((name for name in names if _is(name, value)), None)
        if kind is None:
            issues.append(_issue(location, f"must be {_a(names)}", f"send {_a(names)}"))
            return value
        if kind == "integer" and isinstance(value, float):
            value = int(value)
        if "enum" in schema and value not in schema["enum"]:
            allowed = ", ".join(repr(item) for item in schema["enum"] if item is not None)
            issues.append(_issue(location, f"must be one of {allowed}"))
            return value
        checker = _CHECKERS.get(kind)
        if checker is not None:
            return checker(schema, value, location, issues)
    return value


def _check_string(schema: Schema, value: str, location: str, issues: list[Issue]) -> str:
    low, high = schema.get("minLength"), schema.get("maxLength")
    if low is not None and len(value) < low:
        issues.append(_issue(location, f"must be at least {low} characters long"))
    elif high is not None and len(value) > high:
        issues.append(_issue(location, f"must be at most {high} characters long"))
    pattern = schema.get("pattern")
    if pattern is not None and _compiled(pattern).search(value) is None:
        issues.append(_issue(location, f"must match the pattern {pattern}"))
    return value


_INT64 = (-(2**63), 2**63 - 1)


def _check_number(schema: Schema, value: int, location: str, issues: list[Issue]) -> int:
    low, high = schema.get("minimum"), schema.get("maximum")
    if schema.get("format") == "int64":
        low = _INT64[0] if low is None else low
        high = _INT64[1] if high is None else high
    if low is not None and value < low:
        issues.append(_issue(location, f"must be {low} or more"))
    elif high is not None and value > high:
        issues.append(_issue(location, f"must be {high} or less"))
    return value


def _check_array(schema: Schema, value: list[Any], location: str, issues: list[Issue]) -> list[Any]:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if low is not None and len(value) < low:
        issues.append(_issue(location, f"must have at least {low} items"))
    elif high is not None and len(value) > high:
        issues.append(_issue(location, f"must have at most {high} items"))
    items = schema.get("items")
    if items is None:
        return value
    return [_check(items, item, f"{location}[{index}]", issues) for index, item in enumerate(value)]


def _check_object(schema: Schema, value: dict[str, Any], location: str,
                  issues: list[Issue]) -> dict[str, Any]:
    properties: dict[str, Schema] = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            issues.append(_issue(f"{location}.{name}", "is required"))
    extra = schema.get("additionalProperties", True)
    out: dict[str, Any] = {}
    for name, item in value.items():
        if name in properties:
            out[name] = _check(properties[name], item, f"{location}.{name}", issues)
        elif extra is False:
            issues.append(_issue(f"{location}.{name}", "is not a known field",
                                 f"remove it; the fields are {', '.join(properties) or 'none'}"))
        else:
            out[name] = item if extra is True else _check(extra, item, f"{location}.{name}", issues)
    return out


_CHECKERS: dict[str, Any] = {
    "string": _check_string,
    "integer": _check_number,
    "number": _check_number,
    "array": _check_array,
    "object": _check_object,
}


def _is(kind: str, value: Any) -> bool:
    if kind == "integer":
        if isinstance(value, float):
            return value.is_integer()
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _PYTHON_TYPES[kind])


_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "boolean": bool, "object": dict, "array": list, "null": type(None),
}


def _a(names: list[str]) -> str:
    words = {"integer": "an integer", "object": "an object", "array": "an array",
             "string": "a string", "boolean": "a boolean", "number": "a number", "null": "null"}
    return " or ".join(words.get(name, name) for name in names)


def _issue(location: str, message: str, fix: str | None = None) -> Issue:
    issue = {"location": location, "message": message}
    if fix is not None:
        issue["fix"] = fix
    return issue


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    # ECMA-262 "$" matches only at the very end; Python's also before a final newline.
    return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)
