"""``permissions.*``: permissions and roles (named sets of permissions)."""

from __future__ import annotations

from typing import Any

from .._errors import NotFoundError
from .._models import Permission, Role
from ._errors import at, not_found
from ._keys import permission_slugs, require_permissions_exist
from ._ops import Body, Call, Operation, Page
from ._pages import paginate
from ._schema import array, obj, string
from ._shapes import EMPTY, PERMISSION, PERMISSION_SLUG, ROLE, limit_field, role_data

__all__ = ["OPERATIONS"]

ROLE_NAME = string(1, 128, pattern=r"^[a-zA-Z0-9_:\-\.\*/]+$", description=(
    "keystile role names are slugs: letters, digits and . _ - * : /"))


def create_permission(call: Call, body: Body) -> dict[str, Any]:
    call.require("rbac", "create_permission")
    with at("body.slug"):
        permission = call.ks.create_permission(body["slug"], name=body["name"],
                                               description=body.get("description"))
    return {"permissionId": permission.id}


def get_permission(call: Call, body: Body) -> dict[str, Any]:
    call.require("rbac", "read_permission")
    return _permission(call, body["permission"]).to_dict()


def list_permissions(call: Call, body: Body) -> Page:
    call.require("rbac", "read_permission")
    search = (body.get("search") or "").lower()
    found = [p for p in call.ks.list_permissions()
             if search in p.slug.lower() or search in p.name.lower()]
    return paginate(found, lambda p: p.id, cursor=body.get("cursor"), limit=body.get("limit", 100),
                    render=Permission.to_dict)


def delete_permission(call: Call, body: Body) -> dict[str, Any]:
    call.require("rbac", "delete_permission")
    call.ks.delete_permission(_permission(call, body["permission"]).slug)
    return {}


def _permission(call: Call, permission: str) -> Permission:
    try:
        return call.ks.get_permission(permission)
    except NotFoundError:
        raise not_found("permission", f"There is no permission {permission!r}.") from None


def create_role(call: Call, body: Body) -> dict[str, Any]:
    call.require("rbac", "create_role")
    slugs = permission_slugs(call, body.get("permissions") or (), "body.permissions")
    if slugs:
        call.require("rbac", "add_permission_to_role")
        require_permissions_exist(call, slugs)
    with at("body.name"):
        role = call.ks.create_role(body["name"], permissions=slugs,
                                   description=body.get("description"))
    return {"roleId": role.id}


def get_role(call: Call, body: Body) -> dict[str, Any]:
    call.require("rbac", "read_role")
    return role_data(call.ks, _role(call, body["role"]))


def list_roles(call: Call, body: Body) -> Page:
    call.require("rbac", "read_role")
    search = (body.get("search") or "").lower()
    found = [role for role in call.ks.list_roles() if search in role.name.lower()]
    return paginate(found, lambda role: role.id, cursor=body.get("cursor"),
                    limit=body.get("limit", 100), render=lambda role: role_data(call.ks, role))


def delete_role(call: Call, body: Body) -> dict[str, Any]:
    call.require("rbac", "delete_role")
    call.ks.delete_role(_role(call, body["role"]).name)
    return {}


def _role(call: Call, role: str) -> Role:
    try:
        return call.ks.get_role(role)
    except NotFoundError:
        raise not_found("role", f"There is no role {role!r}.") from None


def _list_request() -> dict[str, Any]:
    return obj({"limit": limit_field(), "cursor": string(1, 1024), "search": string(1, 255)})


OPERATIONS = (
    Operation("permissions.createPermission", create_permission, obj({
        "name": string(1, 512), "slug": PERMISSION_SLUG, "description": string(0, 512),
    }, required=["name", "slug"]), obj({"permissionId": string()}, required=["permissionId"]),
              "Create a permission", kind="permission", statuses=(409,)),
    Operation("permissions.getPermission", get_permission,
              obj({"permission": string(1, 512)}, required=["permission"]), PERMISSION,
              "A permission by slug or id", kind="permission", statuses=(404,)),
    Operation("permissions.listPermissions", list_permissions, _list_request(),
              array(PERMISSION, high=100), "Permissions, a page at a time", kind="permission",
              paginated=True),
    Operation("permissions.deletePermission", delete_permission,
              obj({"permission": string(1, 512)}, required=["permission"]), EMPTY,
              "Delete a permission (also from every role and key)", kind="permission",
              statuses=(404,)),
    Operation("permissions.createRole", create_role, obj({
        "name": ROLE_NAME, "description": string(0, 512),
        "permissions": array(PERMISSION_SLUG, high=1000),
    }, required=["name"]), obj({"roleId": string()}, required=["roleId"]),
              "Create a role", kind="role", statuses=(409,)),
    Operation("permissions.getRole", get_role, obj({"role": string(1, 512)}, required=["role"]),
              ROLE, "A role by name or id", kind="role", statuses=(404,)),
    Operation("permissions.listRoles", list_roles, _list_request(), array(ROLE, high=100),
              "Roles, a page at a time", kind="role", paginated=True),
    Operation("permissions.deleteRole", delete_role, obj({"role": string(1, 512)}, required=["role"]),
              EMPTY, "Delete a role (also from every key)", kind="role", statuses=(404,)),
)
