"""``identities.*``: the owners of keys, whose rate limits all their keys share."""

from __future__ import annotations

from typing import Any

from .._errors import NotFoundError
from .._models import Identity
from .._validate import check_ratelimits
from ._errors import at, not_found
from ._ops import Body, Call, Operation, Page
from ._pages import paginate
from ._schema import FREE_OBJECT, array, nullable, obj, string
from ._shapes import (
    EMPTY,
    EXTERNAL_ID,
    IDENTITY,
    RATELIMIT_REQUEST,
    identity_data,
    limit_field,
    ratelimits_from,
)

__all__ = ["OPERATIONS"]

IDENTITY_REF = string(1, 255, description="The identity's id or its externalId.")


def create_identity(call: Call, body: Body) -> dict[str, Any]:
    call.require("identity", "create_identity")
    with at("body.ratelimits"):
        limits = check_ratelimits(ratelimits_from(body.get("ratelimits")))
    identity = call.ks.create_identity(body["externalId"], meta=body.get("meta"), ratelimits=limits)
    return {"identityId": identity.id}


def get_identity(call: Call, body: Body) -> dict[str, Any]:
    call.require("identity", "read_identity")
    return identity_data(_identity(call, body["identity"]))


def list_identities(call: Call, body: Body) -> Page:
    call.require("identity", "read_identity")
    search = (body.get("search") or "").lower()
    found = [i for i in call.ks.list_identities() if search in i.external_id.lower()]
    return paginate(found, lambda i: i.id, cursor=body.get("cursor"), limit=body.get("limit", 100),
                    render=identity_data)


def update_identity(call: Call, body: Body) -> dict[str, Any]:
    call.require("identity", "update_identity")
    found = _identity(call, body["identity"])
    changes: dict[str, Any] = {}
    if "meta" in body:
        changes["meta"] = body["meta"]
    if "ratelimits" in body:
        with at("body.ratelimits"):
            changes["ratelimits"] = check_ratelimits(
                ratelimits_from(body["ratelimits"], keep=found.ratelimits))
    return identity_data(call.ks.update_identity(found.id, **changes))


def delete_identity(call: Call, body: Body) -> dict[str, Any]:
    call.require("identity", "delete_identity")
    call.ks.delete_identity(_identity(call, body["identity"]).id)
    return {}


def _identity(call: Call, identity: str) -> Identity:
    try:
        return call.ks.get_identity(identity)
    except NotFoundError:
        raise not_found("identity", f"There is no identity {identity!r}.") from None


OPERATIONS = (
    Operation("identities.createIdentity", create_identity, obj({
        "externalId": EXTERNAL_ID, "meta": FREE_OBJECT,
        "ratelimits": array(RATELIMIT_REQUEST, high=50),
    }, required=["externalId"], strict=False), obj({"identityId": string()}, required=["identityId"]),
              "Create an identity", kind="identity", statuses=(409,)),
    Operation("identities.getIdentity", get_identity, obj({"identity": IDENTITY_REF},
                                                          required=["identity"]),
              IDENTITY, "An identity by id or externalId", kind="identity", statuses=(404,)),
    Operation("identities.listIdentities", list_identities, obj({
        "limit": limit_field(), "cursor": string(1, 1024), "search": string(1, 255),
    }), array(IDENTITY, high=100), "Identities, a page at a time", kind="identity", paginated=True),
    Operation("identities.updateIdentity", update_identity, obj({
        "identity": IDENTITY_REF, "meta": nullable(FREE_OBJECT),
        "ratelimits": array(RATELIMIT_REQUEST, high=50),
    }, required=["identity"]), IDENTITY, "Change an identity's meta or rate limits",
              kind="identity", statuses=(404,)),
    Operation("identities.deleteIdentity", delete_identity, obj({"identity": IDENTITY_REF},
                                                                required=["identity"]),
              EMPTY, "Delete an identity (its keys stay, unowned)", kind="identity", statuses=(404,)),
)
