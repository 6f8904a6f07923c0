"""Recoverable keys: the vault on every store, its master and data keys, the CLI and the server.

Raw store documents and bytes are read straight from the store (the SQLite file, the
Redis values) to check what is kept, and what is never kept in clear.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from test_server import Server

from keystile import (
    AsyncKeystile,
    Code,
    ConfigurationError,
    Keystile,
    MemoryStore,
    NotFoundError,
    Store,
    ValidationError,
    VaultError,
)
from keystile._vault import unwrap_data_key
from keystile.cli import main
from keystile.server import build_app
from keystile.stores._base import KINDS

if TYPE_CHECKING:
    from conftest import Clock

MASTER_RAW = bytes(range(1, 33))
MASTER = base64.b64encode(MASTER_RAW).decode()
NEW_MASTER = base64.b64encode(b"n" * 32).decode()
OTHER_MASTER = base64.b64encode(b"o" * 32).decode()
ENV_NAMES = ("KEYSTILE_MASTER_KEY", "KEYSTILE_MASTER_KEY_FILE", "KEYSTILE_NEW_MASTER_KEY")

Opener = Callable[..., Keystile]


@pytest.fixture(autouse=True)
def no_master_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def open_ks(store_url: str, clock: Clock) -> Iterator[Opener]:
    """Opens Keystile objects on one store (memory: one shared MemoryStore), each with the
    master key it is given (default MASTER; ``None``: none)."""
    shared: Store | str = MemoryStore() if store_url.startswith("memory:") else store_url
    opened: list[Keystile] = []

    def open_(master_key: str | None = MASTER, **options: Any) -> Keystile:
        keystile = Keystile(shared, now=clock, master_key=master_key, **options)
        opened.append(keystile)
        return keystile

    yield open_
    for keystile in opened:
        keystile.close()


@pytest.fixture
def vks(open_ks: Opener) -> Keystile:
    return open_ks()


@pytest.fixture
def api_id(vks: Keystile) -> str:
    return vks.create_api("payments", prefix="sk_live", store_encrypted_keys=True).id


def raw_documents(ks: Keystile, kind: str) -> list[dict[str, Any]]:
    return ks.store.scan_all(kind)


def raw_store_bytes(ks: Keystile, store_url: str) -> bytes:
    """Everything the store holds, as bytes: the SQLite files (WAL included), every Redis
    value under the store's prefix, or every document of the memory store."""
    if store_url.startswith("sqlite:"):
        path = Path(store_url[len("sqlite:///"):])
        return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))
    if store_url.startswith("redis"):
        client = ks.store.client  # type: ignore[attr-defined]
        chunks: list[bytes] = []
        for name in client.scan_iter(match=ks.store.prefix + "*"):  # type: ignore[attr-defined]
            kind = client.type(name)
            if kind == b"string":
                chunks.append(client.get(name))
            elif kind == b"hash":
                chunks += [part for item in client.hgetall(name).items() for part in item]
            elif kind == b"zset":
                chunks += client.zrange(name, 0, -1)
            else:
                raise AssertionError(f"unexpected Redis type {kind!r} at {name!r}")
        return b"\n".join(chunks)
    return json.dumps({kind: ks.store.scan_all(kind) for kind in KINDS}).encode()


# -- round trip and what is stored -------------------------------------------------------------------


def test_if_a_key_of_an_api_storing_encrypted_keys_is_recovered_then_its_plaintext_comes_back(
    vks: Keystile, api_id: str,
) -> None:
    created = vks.create_key(api_id, credits=5)

    recovered = vks.recover_key(created.key_id)

    assert recovered == created.key
    assert vks.verify(recovered).code is Code.VALID
    assert [doc["id"] for doc in raw_documents(vks, "encrypted_key")] == [created.key_id]


def test_if_the_api_does_not_store_encrypted_keys_then_the_store_keeps_no_ciphertext(
    vks: Keystile,
) -> None:
    plain_api = vks.create_api("plain", prefix="sk_plain").id
    created = vks.create_key(plain_api)

    with pytest.raises(NotFoundError, match="not recoverable"):
        vks.recover_key(created.key_id)
    assert raw_documents(vks, "encrypted_key") == [] and raw_documents(vks, "vault") == []


def test_if_recoverable_is_asked_of_an_api_without_encrypted_keys_then_validation_error(
    vks: Keystile,
) -> None:
    plain_api = vks.create_api("plain", prefix="sk_plain").id

    with pytest.raises(ValidationError, match="store_encrypted_keys=True"):
        vks.create_key(plain_api, recoverable=True)
    assert vks.list_keys(plain_api).keys == [] and raw_documents(vks, "vault") == []


def test_if_recoverable_is_false_then_a_key_of_an_api_storing_encrypted_keys_is_not_sealed(
    vks: Keystile, api_id: str,
) -> None:
    created = vks.create_key(api_id, recoverable=False)

    with pytest.raises(NotFoundError):
        vks.recover_key(created.key_id)
    assert raw_documents(vks, "encrypted_key") == []


def test_if_keys_are_recoverable_then_no_plaintext_or_key_material_is_in_the_store_in_clear(
    vks: Keystile, api_id: str, store_url: str,
) -> None:
    keys = [vks.create_key(api_id).key for _ in range(3)]
    vks.rotate_data_key()
    keys.append(vks.create_key(api_id).key)
    ring = raw_documents(vks, "vault")[0]
    data_keys = [unwrap_data_key(MASTER_RAW, int(v), entry) for v, entry in ring["data_keys"].items()]

    stored = raw_store_bytes(vks, store_url)

    assert len(data_keys) == 2 and len(stored) > 1000
    for key in keys:
        assert key.encode() not in stored and key.split("_")[-1].encode() not in stored
    for secret in (MASTER_RAW, MASTER.encode(), *data_keys,
                   *(base64.b64encode(k) for k in data_keys)):
        assert secret not in stored


# -- tampering and wrong keys -------------------------------------------------------------------------


def test_if_the_ciphertext_is_changed_in_the_store_then_recovery_raises_vault_error(
    vks: Keystile, api_id: str,
) -> None:
    created = vks.create_key(api_id)
    sealed = vks.store.get("encrypted_key", created.key_id)
    assert sealed is not None
    raw = bytearray(base64.b64decode(sealed["ciphertext"]))
    raw[0] ^= 1
    vks.store.replace("encrypted_key", {**sealed, "ciphertext": base64.b64encode(raw).decode()})

    with pytest.raises(VaultError, match=f"encrypted copy of key {created.key_id} does not open"):
        vks.recover_key(created.key_id)


def test_if_a_ciphertext_is_moved_to_another_key_then_it_does_not_open(
    vks: Keystile, api_id: str,
) -> None:
    first, second = vks.create_key(api_id), vks.create_key(api_id)
    sealed = vks.store.get("encrypted_key", first.key_id)
    assert sealed is not None
    vks.store.replace("encrypted_key", {**sealed, "id": second.key_id})

    with pytest.raises(VaultError):  # the key id is the associated data
        vks.recover_key(second.key_id)
    assert vks.recover_key(first.key_id) == first.key


def test_if_the_master_key_is_wrong_then_recovery_and_sealing_raise_vault_error(
    vks: Keystile, api_id: str, open_ks: Opener,
) -> None:
    created = vks.create_key(api_id)
    wrong = open_ks(OTHER_MASTER)

    with pytest.raises(VaultError, match="KEYSTILE_MASTER_KEY") as caught:
        wrong.recover_key(created.key_id)
    with pytest.raises(VaultError):
        wrong.create_key(api_id)
    with pytest.raises(VaultError):
        wrong.rotate_data_key()

    assert OTHER_MASTER not in str(caught.value) and created.key not in str(caught.value)
    assert [k.id for k in vks.list_keys(api_id).keys] == [created.key_id]  # nothing half-made
    assert len(raw_documents(vks, "vault")[0]["data_keys"]) == 1


# -- without a master key -----------------------------------------------------------------------------


def test_if_there_is_no_master_key_then_a_recoverable_key_is_refused_naming_the_variable(
    open_ks: Opener,
) -> None:
    ks = open_ks(None)
    api = ks.create_api("payments", store_encrypted_keys=True)

    with pytest.raises(ConfigurationError, match="KEYSTILE_MASTER_KEY"):
        ks.create_key(api.id, prefix="sk_live")

    assert ks.list_keys(api.id).keys == [] and raw_documents(ks, "vault") == []
    assert ks.get_keyspace(api.keyspace_id).prefix != "sk_live"  # not even the prefix was claimed
    assert ks.create_key(api.id, recoverable=False).key  # a key that is not recoverable is fine


def test_if_there_is_no_master_key_then_recovery_fails_clearly_and_verification_still_works(
    vks: Keystile, api_id: str, open_ks: Opener,
) -> None:
    created = vks.create_key(api_id, permissions=["docs.read"])
    without = open_ks(None)

    with pytest.raises(ConfigurationError, match="KEYSTILE_MASTER_KEY"):
        without.recover_key(created.key_id)
    for kind in ("vault", "encrypted_key"):  # verification never reads the vault
        for doc in raw_documents(vks, kind):
            vks.store.delete(kind, doc["id"])
    result = open_ks(None).verify(created.key, permissions="docs.read")

    assert result.code is Code.VALID and result.key_id == created.key_id


# -- rotation ----------------------------------------------------------------------------------------


def test_if_the_master_key_is_rotated_then_every_key_opens_with_the_new_key_only(
    vks: Keystile, api_id: str, open_ks: Opener,
) -> None:
    before = vks.create_key(api_id)
    sealed_before = raw_documents(vks, "encrypted_key")

    rewrapped = vks.rotate_master_key(NEW_MASTER)
    after = vks.create_key(api_id)

    assert rewrapped == 1
    assert vks.recover_key(before.key_id) == before.key and vks.recover_key(after.key_id) == after.key
    assert open_ks(NEW_MASTER).recover_key(before.key_id) == before.key
    with pytest.raises(VaultError):
        open_ks(MASTER).recover_key(before.key_id)
    assert [d for d in raw_documents(vks, "encrypted_key") if d["id"] == before.key_id] == sealed_before


def test_if_the_old_master_key_is_wrong_then_rotation_changes_nothing(
    vks: Keystile, api_id: str, open_ks: Opener,
) -> None:
    created = vks.create_key(api_id)
    ring = raw_documents(vks, "vault")

    with pytest.raises(VaultError):
        open_ks(OTHER_MASTER).rotate_master_key(NEW_MASTER)
    with pytest.raises(ConfigurationError, match="KEYSTILE_MASTER_KEY"):
        open_ks(None).rotate_master_key(NEW_MASTER)
    with pytest.raises(ConfigurationError, match="new master key"):
        vks.rotate_master_key("too short")

    assert raw_documents(vks, "vault") == ring and vks.recover_key(created.key_id) == created.key


def test_if_the_data_key_is_rotated_then_new_keys_use_the_new_version_and_old_ones_still_open(
    vks: Keystile, api_id: str, open_ks: Opener,
) -> None:
    old = vks.create_key(api_id)

    version = vks.rotate_data_key()
    new = vks.create_key(api_id)
    vks.rotate_master_key(NEW_MASTER)

    versions = {doc["id"]: doc["version"] for doc in raw_documents(vks, "encrypted_key")}
    assert version == 2 and versions == {old.key_id: 1, new.key_id: 2}
    reader = open_ks(NEW_MASTER)
    assert reader.recover_key(old.key_id) == old.key and reader.recover_key(new.key_id) == new.key


def test_if_nothing_was_sealed_yet_then_rotations_start_the_vault_under_the_given_key(
    vks: Keystile, api_id: str, open_ks: Opener,
) -> None:
    rewrapped = vks.rotate_master_key(NEW_MASTER)
    nothing_yet = raw_documents(vks, "vault")
    version = vks.rotate_data_key()
    created = vks.create_key(api_id)

    assert (rewrapped, nothing_yet, version) == (0, [], 1)
    assert open_ks(NEW_MASTER).recover_key(created.key_id) == created.key


def test_if_two_keystiles_seal_their_first_keys_at_once_then_one_keyring_serves_both(
    vks: Keystile, api_id: str, open_ks: Opener,
) -> None:
    others = [open_ks() for _ in range(4)]
    barrier = threading.Barrier(len(others))
    created: list[Any] = []

    def create(ks: Keystile) -> None:
        barrier.wait()
        created.append(ks.create_key(api_id))

    threads = [threading.Thread(target=create, args=(ks,)) for ks in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(created) == 4 and len(raw_documents(vks, "vault")) == 1
    assert all(vks.recover_key(c.key_id) == c.key for c in created)


# -- reroll and delete -------------------------------------------------------------------------------


def test_if_a_recoverable_key_is_rerolled_then_the_new_key_is_recoverable_too(
    vks: Keystile, api_id: str,
) -> None:
    old = vks.create_key(api_id)
    unsealed = vks.create_key(api_id, recoverable=False)

    new = vks.reroll_key(old.key_id, expiration_ms=0)
    new_unsealed = vks.reroll_key(unsealed.key_id, expiration_ms=0)

    assert vks.recover_key(new.key_id) == new.key and vks.recover_key(old.key_id) == old.key
    with pytest.raises(NotFoundError):
        vks.recover_key(new_unsealed.key_id)


def test_if_a_recoverable_key_is_rerolled_without_the_means_to_seal_then_no_new_key_is_made(
    vks: Keystile, api_id: str, open_ks: Opener,
) -> None:
    old = vks.create_key(api_id, credits=3)

    with pytest.raises(ConfigurationError, match="KEYSTILE_MASTER_KEY"):
        open_ks(None).reroll_key(old.key_id, expiration_ms=0)
    vks.update_api(api_id, store_encrypted_keys=False)
    with pytest.raises(ValidationError, match="does not store encrypted keys"):
        vks.reroll_key(old.key_id, expiration_ms=0)

    assert [k.id for k in vks.list_keys(api_id).keys] == [old.key_id]
    assert vks.verify(old.key).code is Code.VALID  # and the old key was not retired


def test_if_a_recoverable_key_is_deleted_then_it_is_not_found_and_permanent_erases_its_copy(
    vks: Keystile, api_id: str,
) -> None:
    soft, hard = vks.create_key(api_id), vks.create_key(api_id)

    vks.delete_key(soft.key_id)
    vks.delete_key(hard.key_id, permanent=True)

    for key_id in (soft.key_id, hard.key_id):
        with pytest.raises(NotFoundError):
            vks.recover_key(key_id)
    assert [doc["id"] for doc in raw_documents(vks, "encrypted_key")] == [soft.key_id]


# -- the master key's sources --------------------------------------------------------------------------


def test_if_the_master_key_is_in_the_environment_or_a_file_then_keystile_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = f"sqlite:///{tmp_path / 'keys.db'}"
    with Keystile(path, master_key=MASTER_RAW) as ks:  # raw bytes work too
        api = ks.create_api("payments", prefix="sk_live", store_encrypted_keys=True)
        created = ks.create_key(api.id)
    monkeypatch.setenv("KEYSTILE_MASTER_KEY", MASTER)
    with Keystile(path) as ks:
        from_variable = ks.recover_key(created.key_id)
    monkeypatch.delenv("KEYSTILE_MASTER_KEY")
    (tmp_path / "master.key").write_text(MASTER + "\n")
    monkeypatch.setenv("KEYSTILE_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    with Keystile(path) as ks:
        from_file = ks.recover_key(created.key_id)

    assert from_variable == from_file == created.key


@pytest.mark.parametrize(("variables", "message"), [
    ({"KEYSTILE_MASTER_KEY": "c2hvcnQ="}, "KEYSTILE_MASTER_KEY must be the base64 of 32"),
    ({"KEYSTILE_MASTER_KEY": "not base64 at all!!"}, "KEYSTILE_MASTER_KEY must be the base64 of 32"),
    ({"KEYSTILE_MASTER_KEY_FILE": "/nonexistent/master.key"}, "'/nonexistent/master.key' cannot be read"),
    ({"KEYSTILE_MASTER_KEY": MASTER, "KEYSTILE_MASTER_KEY_FILE": "/x"}, "not both"),
])
def test_if_the_master_key_is_malformed_then_configuration_error_at_construction_without_its_value(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str,
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigurationError, match=message) as caught:
        Keystile("memory://")

    assert "c2hvcnQ=" not in str(caught.value) and MASTER not in str(caught.value)


def test_if_a_keystile_with_a_master_key_is_shown_then_the_key_is_not(vks: Keystile) -> None:
    shown = f"{vks!r} {vks.vault!r} {vars(vks)!r}"

    assert MASTER not in shown and repr(MASTER_RAW) not in shown
    assert "master key set" in repr(vks.vault)


async def test_if_the_async_face_recovers_and_rotates_then_it_matches_the_sync_one(
    store_url: str, clock: Clock,
) -> None:
    aks = AsyncKeystile(store_url, now=clock, master_key=MASTER)
    try:
        api = await aks.create_api("async", prefix="sk_async", store_encrypted_keys=True)
        created = await aks.create_key(api.id)
        version = await aks.rotate_data_key()
        rewrapped = await aks.rotate_master_key(NEW_MASTER)

        assert await aks.recover_key(created.key_id) == created.key
        assert (version, rewrapped) == (2, 2)
    finally:
        await aks.close()


# -- the command line ----------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], store: str, *argv: str, status: int = 0) -> Any:
    code = main([*argv, "--store", store, "--json"])
    out = capsys.readouterr().out
    assert code == status, out
    return json.loads(out)


@pytest.fixture
def cli_key(sqlite_url: str, capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A recoverable key made with the CLI under MASTER (the variable is unset after)."""
    monkeypatch.setenv("KEYSTILE_MASTER_KEY", MASTER)
    api = run_cli(capsys, sqlite_url, "apis", "create", "payments", "--prefix", "sk_live",
                  "--store-encrypted-keys")
    created: dict[str, Any] = run_cli(capsys, sqlite_url, "keys", "create", "--api", api["apiId"])
    monkeypatch.delenv("KEYSTILE_MASTER_KEY")
    return created


def test_if_the_cli_recovers_a_key_then_it_prints_the_key_again(
    cli_key: dict[str, Any], sqlite_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYSTILE_MASTER_KEY", MASTER)

    recovered = run_cli(capsys, sqlite_url, "keys", "recover", cli_key["keyId"])

    assert recovered == cli_key


def test_if_the_cli_recovers_without_a_master_key_then_exit_2_naming_the_variable(
    cli_key: dict[str, Any], sqlite_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["keys", "recover", cli_key["keyId"], "--store", sqlite_url])
    captured = capsys.readouterr()

    assert code == 2 and captured.out == ""
    assert captured.err.startswith("keystile: error: recoverable keys need a master key: set"
                                   " KEYSTILE_MASTER_KEY")
    assert "Traceback" not in captured.err and cli_key["key"] not in captured.err


def test_if_the_cli_makes_a_key_recoverable_only_where_the_api_stores_encrypted_keys(
    sqlite_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYSTILE_MASTER_KEY", MASTER)
    api = run_cli(capsys, sqlite_url, "apis", "create", "payments", "--prefix", "sk_live")

    refused = run_cli(capsys, sqlite_url, "keys", "create", "--api", api["apiId"], "--recoverable",
                      status=2)
    updated = run_cli(capsys, sqlite_url, "apis", "update", api["apiId"], "--store-encrypted-keys")
    created = run_cli(capsys, sqlite_url, "keys", "create", "--api", api["apiId"], "--recoverable")
    unsealed = run_cli(capsys, sqlite_url, "keys", "create", "--api", api["apiId"],
                       "--no-recoverable")

    assert refused["error"]["type"] == "ValidationError"
    assert updated["keyspace"]["storeEncryptedKeys"] is True
    assert run_cli(capsys, sqlite_url, "keys", "recover", created["keyId"]) == created
    assert run_cli(capsys, sqlite_url, "keys", "recover", unsealed["keyId"],
                   status=2)["error"]["type"] == "NotFoundError"


def test_if_the_cli_rotates_the_master_key_then_only_the_new_one_recovers(
    cli_key: dict[str, Any], sqlite_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    (tmp_path / "new.key").write_text(NEW_MASTER + "\n")
    monkeypatch.setenv("KEYSTILE_MASTER_KEY", MASTER)

    rotated = run_cli(capsys, sqlite_url, "vault", "rotate", "--new-key-file", str(tmp_path / "new.key"))
    stale = run_cli(capsys, sqlite_url, "keys", "recover", cli_key["keyId"], status=2)
    monkeypatch.setenv("KEYSTILE_MASTER_KEY", NEW_MASTER)
    version = run_cli(capsys, sqlite_url, "vault", "rotate-data-key")
    monkeypatch.setenv("KEYSTILE_NEW_MASTER_KEY", OTHER_MASTER)
    again = run_cli(capsys, sqlite_url, "vault", "rotate")
    monkeypatch.setenv("KEYSTILE_MASTER_KEY", OTHER_MASTER)

    assert rotated == {"rewrappedDataKeys": 1} and again == {"rewrappedDataKeys": 2}
    assert stale["error"]["type"] == "VaultError" and "KEYSTILE_MASTER_KEY" in stale["error"]["message"]
    assert version == {"dataKeyVersion": 2}
    assert run_cli(capsys, sqlite_url, "keys", "recover", cli_key["keyId"]) == cli_key


@pytest.mark.parametrize("new_key", [None, "c2hvcnQ=", "file:missing"])
def test_if_the_cli_rotates_without_a_good_new_key_then_exit_2_and_nothing_changes(
    cli_key: dict[str, Any], sqlite_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, new_key: str | None,
) -> None:
    monkeypatch.setenv("KEYSTILE_MASTER_KEY", MASTER)
    argv = ["vault", "rotate"]
    if new_key == "file:missing":
        argv += ["--new-key-file", str(tmp_path / "missing.key")]
    elif new_key is not None:
        monkeypatch.setenv("KEYSTILE_NEW_MASTER_KEY", new_key)

    refused = run_cli(capsys, sqlite_url, *argv, status=2)

    message = refused["error"]["message"]
    assert refused["error"]["type"] == "ConfigurationError" and "c2hvcnQ=" not in message
    assert "--new-key-file" in message or "KEYSTILE_NEW_MASTER_KEY" in message
    assert run_cli(capsys, sqlite_url, "keys", "recover", cli_key["keyId"]) == cli_key


# -- keystile serve ----------------------------------------------------------------------------------


@asynccontextmanager
async def serving(ks: Keystile) -> AsyncIterator[Server]:
    """keystile serve's app on ``ks``, in process (test_server's helper)."""
    app = build_app(ks)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://keystile.test") as client:
        server = Server(app, ks, client)
        server.document = (await client.get("/openapi.json")).json()
        yield server


@pytest.fixture
async def server(sqlite_url: str, clock: Clock) -> AsyncIterator[Server]:
    with Keystile(sqlite_url, now=clock, master_key=MASTER) as ks:
        async with serving(ks) as running:
            yield running


async def encrypting_api(server: Server) -> str:
    api_id = await server.api()
    server.ks.update_api(api_id, store_encrypted_keys=True)
    return api_id


async def test_if_a_recoverable_key_is_got_with_decrypt_then_its_plaintext_comes_back(
    server: Server,
) -> None:
    api_id = await encrypting_api(server)
    sealed = await server.key(api_id, recoverable=True)
    unsealed = await server.key(api_id, recoverable=False)

    decrypted = await server.ok("keys.getKey", {"keyId": sealed["keyId"], "decrypt": True})
    plain = await server.ok("keys.getKey", {"keyId": sealed["keyId"]})
    other = await server.ok("keys.getKey", {"keyId": unsealed["keyId"], "decrypt": True})
    listed = await server.ok("apis.listKeys", {"apiId": api_id, "decrypt": True})

    assert decrypted["plaintext"] == sealed["key"]
    assert "plaintext" not in plain and "plaintext" not in other  # as Unkey answers
    assert {item["keyId"]: item.get("plaintext") for item in listed} == {
        item["keyId"]: None for item in listed} | {sealed["keyId"]: sealed["key"]}


async def test_if_the_root_key_may_not_encrypt_or_decrypt_then_403(server: Server) -> None:
    api_id = await encrypting_api(server)
    sealed = await server.key(api_id, recoverable=True)
    creator = server.root_key("api.*.create_key", "api.*.read_key", "api.*.read_api")

    create = await server.fail("keys.createKey", {"apiId": api_id, "recoverable": True}, 403,
                               "unkey/authorization/insufficient_permissions", key=creator)
    get = await server.fail("keys.getKey", {"keyId": sealed["keyId"], "decrypt": True}, 403,
                            "unkey/authorization/insufficient_permissions", key=creator)
    await server.fail("apis.listKeys", {"apiId": api_id, "decrypt": True}, 403,
                      "unkey/authorization/insufficient_permissions", key=creator)
    await server.fail("keys.rerollKey", {"keyId": sealed["keyId"], "expiration": 0}, 403,
                      "unkey/authorization/insufficient_permissions", key=creator)

    assert "api.*.encrypt_key" in create["detail"] and "api.*.decrypt_key" in get["detail"]


async def test_if_recoverable_is_asked_of_an_api_without_encrypted_keys_then_412(
    server: Server,
) -> None:
    api_id = await server.api()

    error = await server.fail("keys.createKey", {"apiId": api_id, "recoverable": True}, 412,
                              "unkey/application/precondition_failed")

    assert f"keystile apis update {api_id} --store-encrypted-keys" in error["detail"]
    assert len(server.ks.list_keys(api_id).keys) == 1  # only the key that claimed the prefix


async def test_if_the_server_has_no_master_key_then_recoverable_keys_get_412_and_verify_works(
    sqlite_url: str, clock: Clock,
) -> None:
    with Keystile(sqlite_url, now=clock, master_key=MASTER) as ks:
        async with serving(ks) as server:
            api_id = await encrypting_api(server)
            sealed = await server.key(api_id, recoverable=True)
    with Keystile(sqlite_url, now=clock) as ks:
        async with serving(ks) as server:
            create = await server.fail("keys.createKey", {"apiId": api_id, "recoverable": True},
                                       412, "unkey/application/precondition_failed")
            get = await server.fail("keys.getKey", {"keyId": sealed["keyId"], "decrypt": True},
                                    412, "unkey/application/precondition_failed")
            await server.fail("keys.rerollKey", {"keyId": sealed["keyId"], "expiration": 0}, 412,
                              "unkey/application/precondition_failed")
            verified = await server.verify(sealed["key"])

    assert "KEYSTILE_MASTER_KEY" in create["detail"] and "KEYSTILE_MASTER_KEY" in get["detail"]
    assert verified["code"] == "VALID"


async def test_if_the_vault_does_not_open_then_412_never_500_and_no_key_in_the_log(
    sqlite_url: str, clock: Clock, caplog: pytest.LogCaptureFixture,
) -> None:
    with Keystile(sqlite_url, now=clock, master_key=MASTER) as ks:
        async with serving(ks) as server:
            api_id = await encrypting_api(server)
            sealed = await server.key(api_id, recoverable=True)
    with caplog.at_level(logging.DEBUG), Keystile(sqlite_url, now=clock,
                                                  master_key=OTHER_MASTER) as ks:
        async with serving(ks) as server:
            wrong = await server.fail("keys.getKey", {"keyId": sealed["keyId"], "decrypt": True},
                                      412, "unkey/application/precondition_failed")
            await server.fail("keys.createKey", {"apiId": api_id, "recoverable": True}, 412,
                              "unkey/application/precondition_failed")

    assert "master key does not open" in wrong["detail"]
    assert sealed["key"] not in caplog.text and "Traceback" not in caplog.text


async def test_if_a_recoverable_key_is_rerolled_then_the_new_key_decrypts(server: Server) -> None:
    api_id = await encrypting_api(server)
    old = await server.key(api_id, recoverable=True)

    new = await server.ok("keys.rerollKey", {"keyId": old["keyId"], "expiration": 0})
    got = await server.ok("keys.getKey", {"keyId": new["keyId"], "decrypt": True})

    assert got["plaintext"] == new["key"] != old["key"]
    assert (await server.verify(new["key"]))["code"] == "VALID"
