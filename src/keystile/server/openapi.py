"""The OpenAPI 3.1 document of the server, built from the operations' own schemas.

The request schemas here are the ones the server validates with, so the document
cannot drift from what the server accepts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import __version__
from ._ops import Operation
from ._schema import Schema, array, integer, obj, string

__all__ = ["openapi_document"]

META = obj({"requestId": string(description="Quote it when reporting a problem.")},
           required=["requestId"])
PAGINATION = obj({"cursor": string(1, 1024), "hasMore": {"type": "boolean"}}, required=["hasMore"])
_BASE_ERROR_FIELDS: dict[str, Schema] = {
    "title": string(), "detail": string(), "status": integer(), "type": string(),
}
BASE_ERROR = obj(_BASE_ERROR_FIELDS, required=["title", "detail", "status", "type"])
BAD_REQUEST_ERROR = obj({
    **_BASE_ERROR_FIELDS,
    "errors": array(obj({"location": string(), "message": string(), "fix": string()},
                        required=["location", "message"])),
}, required=["title", "detail", "status", "type", "errors"])

_ERRORS = {
    400: "Invalid request: a field (errors[].location), the Authorization header, or a permission query",
    401: "The root key is unknown, expired or deleted",
    403: "The root key lacks the permission, or is disabled",
    404: "What the request names does not exist",
    409: "It exists already",
    412: ("A precondition failed: delete protection, an unknown rate limit name, recoverable keys"
          " (the API does not store encrypted keys, or the master key is missing or wrong), a store"
          " that keeps no analytics"),
    422: "The query needs more than the server allows: too many events in its time range",
    500: "Unexpected error (no details are given away)",
    503: "The store cannot answer right now",
}


def _error_response(status: int) -> dict[str, Any]:
    error = BAD_REQUEST_ERROR if status == 400 else BASE_ERROR
    schema = obj({"meta": META, "error": error}, required=["meta", "error"])
    return {"description": _ERRORS[status], "content": {"application/json": {"schema": schema}}}


def _success(operation: Operation) -> dict[str, Any]:
    fields: dict[str, Schema] = {"meta": META, "data": operation.response}
    required = ["meta", "data"]
    if operation.paginated:
        fields["pagination"] = PAGINATION
        required.append("pagination")
    schema = obj(fields, required=required)
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


def _operation(operation: Operation) -> dict[str, Any]:
    statuses = sorted({400, 401, 403, 500, 503, *operation.statuses})
    return {
        "operationId": operation.name,
        "tags": [operation.tag],
        "summary": operation.summary,
        "security": [{"rootKey": []}],
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": operation.request}}},
        "responses": {"200": _success(operation),
                      **{str(status): _error_response(status) for status in statuses}},
    }


def openapi_document(operations: Iterable[Operation]) -> dict[str, Any]:
    """The document served at ``/openapi.json``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "keystile",
            "version": __version__,
            "description": (
                "The subset of Unkey's v2 API that keystile serves, on any keystile store. "
                "Every operation is a POST with a JSON body, authorised by a root key "
                "('Authorization: Bearer ks-root_…', made with `keystile rootkeys create`)."),
        },
        "paths": {operation.path: {"post": _operation(operation)} for operation in operations},
        "components": {"securitySchemes": {"rootKey": {
            "type": "http", "scheme": "bearer",
            "description": "A root key; its permissions decide what it may do."}}},
    }
