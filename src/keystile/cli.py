"""The ``keystile`` command line: manage APIs and keys, verify, serve, run the demo.

Every command takes ``--store URL`` (default ``KEYSTILE_STORE`` or
``sqlite:///./keystile.db``) and ``--json`` for output that scripts can rely on.
Exit status: 0 on success (for ``keys verify``: the key is valid), 1 when a
verified key is not valid, 2 on an error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._errors import ConfigurationError, KeystileError, ValidationError
from ._logs import safe_url
from ._manage import UNSET, Keystile
from ._models import Credits, RatelimitConfig, Refill
from ._vault import MASTER_KEY_ENV, parse_master_key, read_master_key_file

__all__ = ["main"]

Handler = Callable[[Keystile, argparse.Namespace], tuple[Any, int]]
NEW_MASTER_KEY_ENV = "KEYSTILE_NEW_MASTER_KEY"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["bench"]:  # every later argument belongs to the harness
        return _bench(arguments[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(store=args.store, host=args.host, port=args.port, check=args.check)
    if args.command == "serve":
        return _serve(args)
    try:
        with Keystile(args.store) as ks:
            handler: Handler = args.handler
            payload, status = handler(ks, args)
    except KeystileError as exc:
        _print_error(exc, args.json)
        return 2
    _print(payload, args.json)
    return status


def _bench(argv: list[str]) -> int:
    try:
        harness = importlib.import_module("benchmarks.cli")
    except ImportError as exc:
        print(f"keystile: error: the benchmark harness needs the bench extra: pip install"
              f" 'keystile[bench]' (in a checkout: pip install -e '.[bench]'); {exc}",
              file=sys.stderr)
        return 2
    return int(harness.main(argv))


def _serve(args: argparse.Namespace) -> int:
    """Run the Unkey-compatible server until interrupted."""
    try:
        import uvicorn

        from .server import RootKeys, build_app
    except ImportError as exc:
        print(f"keystile: error: serve needs the server extra: pip install 'keystile[server]'; {exc}",
              file=sys.stderr)
        return 2
    try:
        ks = Keystile(args.store)
    except KeystileError as exc:
        _print_error(exc, args.json)
        return 2
    try:
        app = build_app(ks, metrics=args.metrics)
        roots: RootKeys = app.state.root_keys
        if not roots.list():
            print("keystile serve: no root key yet, so every request gets 401; create one with\n"
                  "  keystile rootkeys create --permission 'api.*.create_key' --permission "
                  "'api.*.verify_key' ...", file=sys.stderr)
    except KeystileError as exc:
        ks.close()
        _print_error(exc, args.json)
        return 2
    print(f"keystile serve: http://{args.host}:{args.port} (store: {safe_url(ks.store.url)}; the API "
          f"is described at /openapi.json{'; metrics at /metrics' if args.metrics else ''})",
          file=sys.stderr, flush=True)
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again with the
    # handler it found: this one, so that the store is closed (leases returned, SQLite
    # checkpointed) instead of the process dying of the signal.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on")
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        ks.close()
    return 0


class _Terminated(Exception):
    pass


def _terminated(signum: int, frame: Any) -> None:
    raise _Terminated


def _print(payload: Any, as_json: bool) -> None:
    if isinstance(payload, str):
        print(payload)
    elif as_json:
        print(json.dumps(payload, sort_keys=True))
    elif isinstance(payload, dict):
        for name, value in payload.items():
            shown = json.dumps(value) if isinstance(value, (dict, list)) else value
            print(f"{name}: {shown}")
    elif isinstance(payload, list):
        for item in payload:
            print(json.dumps(item, sort_keys=True))


def _print_error(exc: KeystileError, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error": {"type": type(exc).__name__, "message": str(exc)}}))
    else:
        print(f"keystile: error: {exc}", file=sys.stderr)


# -- argument types --------------------------------------------------------------------


def ratelimit_spec(text: str) -> RatelimitConfig:
    """``name:limit:duration_ms`` (applied on every verify) or ``…:named`` (only when named)."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("auto", "named")):
        raise argparse.ArgumentTypeError("expected name:limit:duration_ms[:named]")
    try:
        return RatelimitConfig(parts[0], int(parts[1]), int(parts[2]),
                               auto_apply=len(parts) == 3 or parts[3] == "auto")
    except ValueError:
        raise argparse.ArgumentTypeError("limit and duration_ms must be integers") from None


def refill_spec(text: str) -> Refill:
    """``daily:AMOUNT`` or ``monthly:AMOUNT[:DAY]``."""
    parts = text.split(":")
    try:
        if parts[0] == "daily" and len(parts) == 2:
            return Refill("daily", int(parts[1]))
        if parts[0] == "monthly" and len(parts) in (2, 3):
            return Refill("monthly", int(parts[1]), int(parts[2]) if len(parts) == 3 else None)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError("expected daily:AMOUNT or monthly:AMOUNT[:DAY]")


def expires_spec(text: str) -> int:
    """Unix milliseconds, or an ISO 8601 time (UTC when it has no offset)."""
    if text.isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected ISO 8601 (2027-01-31T00:00Z) or Unix ms") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")


def duration_spec(text: str) -> int:
    """Milliseconds from ``0`` or amounts with units: ``500ms``, ``90s``, ``30m``, ``24h``,
    ``7d``, ``1h30m``. A bare number other than 0 is refused: seconds or milliseconds?"""
    if text == "0":
        return 0
    parts = _DURATION.findall(text)
    if not parts or "".join(amount + unit for amount, unit in parts) != text:
        raise argparse.ArgumentTypeError("expected 0 or a duration such as 90s, 30m, 24h, 7d, 1h30m")
    return sum(int(amount) * _DURATION_UNITS[unit] for amount, unit in parts)


def meta_spec(text: str) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"plan\": \"pro\"}'") from None
    if not isinstance(meta, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return meta


def credits_spec(text: str) -> int | None:
    if text == "unlimited":
        return None
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError("expected a number of credits or 'unlimited'")


# -- handlers ----------------------------------------------------------------------------


def _apis_create(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    api = ks.create_api(a.name, prefix=a.prefix, default_bytes=a.bytes, ip_whitelist=a.ip,
                        delete_protection=a.delete_protection,
                        store_encrypted_keys=a.store_encrypted_keys)
    return {"apiId": api.id, "keyspaceId": api.keyspace_id, "prefix": a.prefix}, 0


def _apis_update(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    changes = {"name": a.name, "delete_protection": a.delete_protection,
               "store_encrypted_keys": a.store_encrypted_keys}
    ks.update_api(a.api_id, **{k: v for k, v in changes.items() if v is not None})
    return _api_view(ks, a.api_id), 0


def _api_view(ks: Keystile, api_id: str) -> dict[str, Any]:
    api = ks.get_api(api_id)
    return {**api.to_dict(), "keyspace": ks.get_keyspace(api.keyspace_id).to_dict()}


def _apis_get(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    return _api_view(ks, a.api_id), 0


def _apis_list(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    return [_api_view(ks, api.id) for api in ks.list_apis()], 0


def _apis_delete(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    ks.delete_api(a.api_id)
    return {"deleted": a.api_id}, 0


def _credits(a: argparse.Namespace) -> Credits | None:
    if a.refill is not None and a.credits is None:
        raise ValidationError("--refill needs --credits")
    return None if a.credits is None else Credits(a.credits, a.refill)


def _keys_create(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    created = ks.create_key(
        a.api, name=a.name, byte_length=a.bytes, external_id=a.external_id, meta=a.meta,
        expires=a.expires, credits=_credits(a), ratelimits=a.ratelimit,
        permissions=a.permission, roles=a.role, enabled=not a.disabled, recoverable=a.recoverable,
    )
    return created.to_dict(), 0


def _keys_recover(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    return {"keyId": a.key_id, "key": ks.recover_key(a.key_id)}, 0


def _read_key(text: str) -> str:
    return sys.stdin.readline().strip() if text == "-" else text


def _keys_verify(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    result = ks.verify(_read_key(a.key), permissions=a.permissions, cost=a.cost,
                       ratelimits=tuple(a.ratelimit), api_id=a.api, ip=a.ip)
    return result.to_dict(), 0 if result.valid else 1


def _keys_get(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    return ks.get_key(a.key_id).to_dict(), 0


def _keys_list(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    page = ks.list_keys(a.api, limit=a.limit, cursor=a.cursor, external_id=a.external_id)
    return {"keys": [k.to_dict() for k in page.keys], "cursor": page.cursor,
            "hasMore": page.has_more}, 0


def _keys_update(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    changes: dict[str, Any] = {
        "name": a.name, "meta": a.meta, "expires": a.expires, "external_id": a.external_id,
        "permissions": a.permission, "roles": a.role, "ratelimits": a.ratelimit,
    }
    given = {k: v for k, v in changes.items() if v is not None}
    if a.no_expiry:
        given["expires"] = None
    if a.enable or a.disable:
        given["enabled"] = bool(a.enable)
    if a.refill is not None and a.credits is UNSET:
        raise ValidationError("--refill needs --credits (the refill replaces the credits)")
    if a.credits is not UNSET:
        given["credits"] = _credits(a)
    return ks.update_key(a.key_id, **given).to_dict(), 0


def _keys_delete(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    ks.delete_key(a.key_id, permanent=a.permanent)
    return {"deleted": a.key_id, "permanent": a.permanent}, 0


def _keys_credits(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    credits = ks.update_credits(a.key_id, a.operation, a.value)
    return {"remaining": credits.remaining if credits else None}, 0


def _keys_reroll(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    created = ks.reroll_key(a.key_id, expiration_ms=a.grace)
    return {**created.to_dict(), "oldKeyExpires": ks.get_key(a.key_id).expires}, 0


def _vault_rotate(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    if a.new_key_file is not None:
        new = read_master_key_file(a.new_key_file, "--new-key-file")
    elif os.environ.get(NEW_MASTER_KEY_ENV):
        new = parse_master_key(os.environ[NEW_MASTER_KEY_ENV], NEW_MASTER_KEY_ENV)
    else:
        raise ConfigurationError(f"give the new master key with --new-key-file PATH or"
                                 f" {NEW_MASTER_KEY_ENV} (the old one comes from {MASTER_KEY_ENV})")
    rewrapped = ks.rotate_master_key(new)
    if not a.json:
        print(f"keystile: the vault is under the new master key now; set {MASTER_KEY_ENV} to it"
              " for every process of this store.", file=sys.stderr)
    return {"rewrappedDataKeys": rewrapped}, 0


def _vault_rotate_data_key(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    return {"dataKeyVersion": ks.rotate_data_key()}, 0


def _identities_create(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    return ks.create_identity(a.external_id, meta=a.meta, ratelimits=a.ratelimit).to_dict(), 0


def _roles_create(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    role = ks.create_role(a.name, permissions=a.permission, description=a.description)
    return role.to_dict(), 0


def _permissions_create(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    return ks.create_permission(a.slug, name=a.name, description=a.description).to_dict(), 0


def moment_spec(text: str) -> int | dt.timedelta:
    """A duration ago (``90s``, ``30m``, ``24h``, ``7d``, ``1h30m``), Unix ms, or ISO 8601."""
    if not text.isdigit():
        try:
            return dt.timedelta(milliseconds=duration_spec(text))
        except argparse.ArgumentTypeError:
            pass
    try:
        return expires_spec(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            "expected a duration ago (30m, 24h, 7d), ISO 8601 (2027-01-31T00:00Z) or Unix ms") from None


def _analytics(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    from ._report import format_report, plot_buckets, report_dict

    now = ks.now()
    since = now - int(a.since.total_seconds() * 1000) if isinstance(a.since, dt.timedelta) else a.since
    until = None if a.until is None else (
        now - int(a.until.total_seconds() * 1000) if isinstance(a.until, dt.timedelta) else a.until)
    where = {"api_id": a.api, "keyspace_id": a.keyspace, "identity": a.identity,
             "tags": a.tag or (), "codes": a.code or ()}
    buckets = ks.verifications(since=since, until=until, by=a.by, key_id=a.key, **where)
    top: list[Any] = []
    if a.top == "keys":
        top = ks.top_keys(since=since, until=until, limit=a.limit, **where)
    elif a.top == "identities":
        where.pop("identity")
        top = ks.top_identities(since=since, until=until, limit=a.limit, **where)
    end = now + 1 if until is None else until
    scope = ", ".join(f"{name} {value}" for name, value in (
        ("api", a.api), ("keyspace", a.keyspace), ("key", a.key), ("identity", a.identity))
        if value) or "all APIs"
    title = f"keystile verifications, {scope}, per {a.by}"
    top_by = "key" if a.top == "keys" else "identity"
    if a.plot:
        plot_buckets(buckets, a.by, title, a.plot)
    if a.json:
        return report_dict(buckets, since, end, a.by, top, top_by), 0
    text = format_report(buckets, a.by, title, top, top_by)
    return text + (f"\nplot written to {a.plot}" if a.plot else ""), 0


def _root_keys(ks: Keystile) -> Any:
    from .server import RootKeys

    return RootKeys(ks)


def _rootkeys_create(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    created = _root_keys(ks).create(a.permission, name=a.name)
    if not a.json:
        print("keystile: the root key is shown this once; only its hash is stored.", file=sys.stderr)
    return created.to_dict(), 0


def _rootkeys_list(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    return _root_keys(ks).list(), 0


def _rootkeys_delete(ks: Keystile, a: argparse.Namespace) -> tuple[Any, int]:
    _root_keys(ks).delete(a.key_id)
    return {"deleted": a.key_id}, 0


# -- the parser ----------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=None,
                        help="store URL (default: $KEYSTILE_STORE or sqlite:///./keystile.db)")
    common.add_argument("--json", action="store_true", help="print JSON")
    return common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keystile", description="API keys: manage and verify.")
    groups = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = [_common()]
    _add_apis(groups.add_parser("apis", help="APIs and their keyspaces").add_subparsers(
        dest="action", metavar="ACTION", required=True), common)
    _add_keys(groups.add_parser("keys", help="issue, verify and manage keys").add_subparsers(
        dest="action", metavar="ACTION", required=True), common)
    _add_vault(groups, common)
    _add_rbac(groups, common)
    demo = groups.add_parser("demo", parents=common,
                             help="run the example app on a fresh SQLite store")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=None)
    demo.add_argument("--check", action="store_true",
                      help="send the demo requests, print the answers, exit 0 if all are right")
    demo.set_defaults(handler=None)
    _add_server(groups, common)
    _add_analytics(groups, common)
    groups.add_parser("bench", add_help=False,
                      help="benchmark keystile against peers (keystile bench --help)")
    return parser


def _add_apis(sub: Any, common: list[argparse.ArgumentParser]) -> None:
    create = sub.add_parser("create", parents=common, help="create an API with a key prefix")
    create.add_argument("name")
    create.add_argument("--prefix", required=True, help="key prefix, e.g. sk_live (<= 8 chars)")
    create.add_argument("--bytes", type=int, default=16, help="random bytes per key (16-32)")
    create.add_argument("--ip", action="append", default=[], help="allowed client CIDR (repeat)")
    create.add_argument("--delete-protection", action="store_true")
    create.add_argument("--store-encrypted-keys", action="store_true",
                        help="keep keys encrypted, so they can be recovered (needs a master key)")
    create.set_defaults(handler=_apis_create)
    update = sub.add_parser("update", parents=common, help="change an API's settings")
    update.add_argument("api_id")
    update.add_argument("--name")
    update.add_argument("--delete-protection", action=argparse.BooleanOptionalAction)
    update.add_argument("--store-encrypted-keys", action=argparse.BooleanOptionalAction,
                        help="new keys are kept encrypted, so they can be recovered")
    update.set_defaults(handler=_apis_update)
    for name, handler in (("get", _apis_get), ("delete", _apis_delete)):
        action = sub.add_parser(name, parents=common)
        action.add_argument("api_id")
        action.set_defaults(handler=handler)
    sub.add_parser("list", parents=common).set_defaults(handler=_apis_list)


def _key_options(parser: argparse.ArgumentParser, *, creating: bool) -> None:
    parser.add_argument("--name")
    parser.add_argument("--external-id", help="the owner; created if new")
    parser.add_argument("--meta", type=meta_spec, help="a JSON object")
    parser.add_argument("--expires", type=expires_spec, help="ISO 8601 or Unix ms")
    parser.add_argument("--credits", type=credits_spec,
                        default=None if creating else UNSET, help="credits (or 'unlimited')")
    parser.add_argument("--refill", type=refill_spec, help="daily:AMOUNT or monthly:AMOUNT[:DAY]")
    parser.add_argument("--ratelimit", type=ratelimit_spec, action="append",
                        default=[] if creating else None, help="name:limit:duration_ms[:named]")
    parser.add_argument("--permission", action="append", default=[] if creating else None)
    parser.add_argument("--role", action="append", default=[] if creating else None)


def _add_keys(sub: Any, common: list[argparse.ArgumentParser]) -> None:
    create = sub.add_parser("create", parents=common, help="issue a key (shown once)")
    create.add_argument("--api", required=True)
    create.add_argument("--bytes", type=int, default=None)
    create.add_argument("--disabled", action="store_true")
    create.add_argument("--recoverable", action=argparse.BooleanOptionalAction,
                        help="keep it encrypted for `keys recover` (default: as its API stores keys)")
    _key_options(create, creating=True)
    create.set_defaults(handler=_keys_create)

    recover = sub.add_parser("recover", parents=common,
                             help="show a recoverable key again (needs $KEYSTILE_MASTER_KEY)")
    recover.add_argument("key_id")
    recover.set_defaults(handler=_keys_recover)

    verify = sub.add_parser("verify", parents=common, help="verify a key ('-' reads stdin)")
    verify.add_argument("key")
    verify.add_argument("--permissions", help="a permission query, e.g. 'read AND write'")
    verify.add_argument("--cost", type=int, default=None)
    verify.add_argument("--ratelimit", action="append", default=[], help="a named limit to apply")
    verify.add_argument("--api", default=None, help="require a key of this API")
    verify.add_argument("--ip", default=None, help="the client IP for whitelists")
    verify.set_defaults(handler=_keys_verify)

    for name, handler in (("get", _keys_get), ("delete", _keys_delete)):
        action = sub.add_parser(name, parents=common)
        action.add_argument("key_id")
        action.set_defaults(handler=handler)
    sub.choices["delete"].add_argument("--permanent", action="store_true")

    listing = sub.add_parser("list", parents=common)
    listing.add_argument("--api", required=True)
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--cursor")
    listing.add_argument("--external-id")
    listing.set_defaults(handler=_keys_list)

    update = sub.add_parser("update", parents=common, help="change a key")
    update.add_argument("key_id")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--enable", action="store_true")
    state.add_argument("--disable", action="store_true")
    update.add_argument("--no-expiry", action="store_true", help="remove the expiry")
    _key_options(update, creating=False)
    update.set_defaults(handler=_keys_update)

    credits = sub.add_parser("credits", parents=common, help="set, increment or decrement credits")
    credits.add_argument("key_id")
    credits.add_argument("operation", choices=["set", "increment", "decrement"])
    credits.add_argument("value", type=credits_spec, nargs="?", default=None)
    credits.set_defaults(handler=_keys_credits)

    reroll = sub.add_parser("reroll", parents=common,
                            help="replace a key with a new one (shown once) of the same settings")
    reroll.add_argument("key_id")
    reroll.add_argument("--grace", type=duration_spec, required=True, metavar="DURATION",
                        help="how long the old key stays valid, sharing credits and rate limits"
                             " with the new one: 0 (rejected at once), 90s, 30m, 24h, 7d")
    reroll.set_defaults(handler=_keys_reroll)


def _add_vault(groups: Any, common: list[argparse.ArgumentParser]) -> None:
    vault = groups.add_parser("vault", help="the master key and data keys of recoverable keys")
    actions = vault.add_subparsers(dest="action", metavar="ACTION", required=True)
    rotate = actions.add_parser(
        "rotate", parents=common, help=f"re-wrap the data keys under a new master key (the old one:"
        f" ${MASTER_KEY_ENV}; the new one: --new-key-file or ${NEW_MASTER_KEY_ENV})")
    rotate.add_argument("--new-key-file", help="a file holding the new master key (base64)")
    rotate.set_defaults(handler=_vault_rotate)
    actions.add_parser("rotate-data-key", parents=common,
                       help="seal new keys under a new data key; older keys stay recoverable"
                       ).set_defaults(handler=_vault_rotate_data_key)


def _add_rbac(groups: Any, common: list[argparse.ArgumentParser]) -> None:
    identities = groups.add_parser("identities", help="owners of keys, with shared limits")
    ident_create = identities.add_subparsers(dest="action", required=True).add_parser(
        "create", parents=common)
    ident_create.add_argument("external_id")
    ident_create.add_argument("--meta", type=meta_spec)
    ident_create.add_argument("--ratelimit", type=ratelimit_spec, action="append", default=[])
    ident_create.set_defaults(handler=_identities_create)

    roles = groups.add_parser("roles", help="named sets of permissions")
    role_create = roles.add_subparsers(dest="action", required=True).add_parser(
        "create", parents=common)
    role_create.add_argument("name")
    role_create.add_argument("--permission", action="append", default=[])
    role_create.add_argument("--description")
    role_create.set_defaults(handler=_roles_create)

    permissions = groups.add_parser("permissions", help="permissions")
    perm_create = permissions.add_subparsers(dest="action", required=True).add_parser(
        "create", parents=common)
    perm_create.add_argument("slug")
    perm_create.add_argument("--name")
    perm_create.add_argument("--description")
    perm_create.set_defaults(handler=_permissions_create)


def _add_analytics(groups: Any, common: list[argparse.ArgumentParser]) -> None:
    report = groups.add_parser(
        "analytics", parents=common,
        help="verifications per minute, hour or day by outcome; top keys or identities",
        description="Count the verifications recorded by the store, per time bucket and "
                    "outcome code, as a table with a sparkline, JSON (--json) or a plot (--plot).")
    report.add_argument("--api", help="only this API's keys")
    report.add_argument("--keyspace", help="only this keyspace's keys")
    report.add_argument("--key", help="only this key (its id)")
    report.add_argument("--identity", help="only keys of this identity (id or external id)")
    report.add_argument("--tag", action="append", help="only verifications with this tag (repeatable)")
    report.add_argument("--code", action="append", help="only this outcome code (repeatable)")
    report.add_argument("--since", type=moment_spec, default=dt.timedelta(hours=24),
                        help="start: 30m, 24h, 7d ago, ISO 8601 or Unix ms (default 24h)")
    report.add_argument("--until", type=moment_spec, default=None, help="end (default: now)")
    report.add_argument("--by", choices=["minute", "hour", "day"], default="hour")
    report.add_argument("--top", choices=["keys", "identities"], default=None,
                        help="also rank keys (with credits left) or identities by verifications")
    report.add_argument("--limit", type=int, default=10, help="entries of --top (default 10)")
    report.add_argument("--plot", metavar="FILE.png",
                        help="draw the buckets stacked by outcome (needs matplotlib)")
    report.set_defaults(handler=_analytics)


def _add_server(groups: Any, common: list[argparse.ArgumentParser]) -> None:
    serve = groups.add_parser("serve", parents=common,
                              help="serve Unkey's v2 API on the store (for unkey-py and other clients)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8787)
    serve.add_argument("--metrics", action="store_true",
                       help="also serve Prometheus metrics at GET /metrics, without a root key "
                            "(needs keystile[prometheus])")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(handler=None)

    rootkeys = groups.add_parser("rootkeys", help="the keys that may call keystile serve")
    actions = rootkeys.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", parents=common, help="issue a root key (shown once)")
    create.add_argument("--permission", action="append", required=True,
                        help="e.g. api.*.verify_key, api.<apiId>.create_key, rbac.*.create_role,"
                             " identity.*.read_identity, ratelimit.*.limit (repeat)")
    create.add_argument("--name")
    create.set_defaults(handler=_rootkeys_create)
    actions.add_parser("list", parents=common, help="root keys (never the keys themselves)"
                       ).set_defaults(handler=_rootkeys_list)
    delete = actions.add_parser("delete", parents=common, help="revoke a root key")
    delete.add_argument("key_id")
    delete.set_defaults(handler=_rootkeys_delete)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
