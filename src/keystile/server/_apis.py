"""``apis.*``: create, read, list the keys of, and delete APIs."""

from __future__ import annotations

from typing import Any

from ._errors import at
from ._keys import live_api, with_plaintext
from ._ops import Body, Call, Operation, Page
from ._schema import array, boolean, obj, string
from ._shapes import EMPTY, EXTERNAL_ID, KEY_DATA, key_data, limit_field

__all__ = ["OPERATIONS"]

API_ID = string(8, 255, pattern="^[a-zA-Z0-9_]+$")


def create_api(call: Call, body: Body) -> dict[str, Any]:
    call.require("api", "create_api")
    with at("body.name"):
        api = call.ks.create_api(body["name"])
    return {"apiId": api.id}


def get_api(call: Call, body: Body) -> dict[str, Any]:
    call.require("api", "read_api", body["apiId"])
    live_api(call, body["apiId"])
    api = call.ks.get_api(body["apiId"])
    return {"id": api.id, "name": api.name}


def delete_api(call: Call, body: Body) -> dict[str, Any]:
    call.require("api", "delete_api", body["apiId"])
    live_api(call, body["apiId"])
    call.ks.delete_api(body["apiId"])
    return {}


def list_keys(call: Call, body: Body) -> Page:
    api_id = body["apiId"]
    call.require("api", "read_api", api_id)
    call.require("api", "read_key", api_id)
    if body.get("decrypt"):
        call.require("api", "decrypt_key", api_id)
    live_api(call, api_id)
    page = call.ks.list_keys(api_id, limit=body.get("limit", 100), cursor=body.get("cursor"),
                             external_id=body.get("externalId"))
    items = [key_data(info) for info in page.keys]
    if body.get("decrypt"):
        items = [with_plaintext(call, item) for item in items]
    return Page(items, page.cursor)


OPERATIONS = (
    Operation("apis.createApi", create_api, obj({"name": string(3, 256)}, required=["name"]),
              obj({"apiId": string()}, required=["apiId"]),
              "Create an API (keystile picks its key prefix until its first key chooses one)"),
    Operation("apis.getApi", get_api, obj({"apiId": API_ID}, required=["apiId"]),
              obj({"id": string(), "name": string()}, required=["id", "name"]),
              "An API by id", kind="api", statuses=(404,)),
    Operation("apis.listKeys", list_keys, obj({
        "apiId": API_ID, "limit": limit_field(), "cursor": string(1, 1024),
        "externalId": EXTERNAL_ID, "decrypt": boolean(), "revalidateKeysCache": boolean(),
    }, required=["apiId"]), array(KEY_DATA, high=100),
              "The keys of an API, a page at a time (with decrypt: recoverable keys' plaintexts)",
              kind="api", statuses=(404, 412), paginated=True),
    Operation("apis.deleteApi", delete_api, obj({"apiId": API_ID}, required=["apiId"]), EMPTY,
              "Delete an API; its keys verify as NOT_FOUND from then on", kind="api",
              statuses=(404, 412)),
)
