"""The store contract: one body per behaviour, run on every store; then SQLite and URLs."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from keystile import (
    ConfigurationError,
    ConflictError,
    Keystile,
    MemoryStore,
    SQLiteStore,
    Store,
    StoreError,
    StoreUnavailableError,
    open_store,
)
from keystile.stores import DEFAULT_STORE_URL, default_store_url

State = dict[str, Any]


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def role(id: str, name: str | None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": id, **extra}
    if name is not None:
        doc["name"] = name
    return doc


# -- documents ------------------------------------------------------------------------


def test_if_a_document_is_inserted_then_get_and_find_return_it(store: Store) -> None:
    doc = {"id": "key_1", "hash": "h1", "api_id": "api_1", "meta": {"plan": "pro", "n": [1, 2]}}
    store.insert("key", doc)

    assert store.get("key", "key_1") == doc
    assert store.find("key", "hash", "h1") == doc


def test_if_nothing_has_the_id_or_value_then_get_and_find_return_none(store: Store) -> None:
    store.insert("key", {"id": "key_1", "hash": "h1"})

    assert store.get("key", "key_2") is None
    assert store.find("key", "hash", "h2") is None


def test_if_the_same_id_is_used_in_two_kinds_then_they_are_separate_documents(store: Store) -> None:
    store.insert("role", {"id": "x1", "name": "admin"})
    store.insert("permission", {"id": "x1", "slug": "admin"})

    assert store.get("role", "x1") == {"id": "x1", "name": "admin"}
    assert store.get("permission", "x1") == {"id": "x1", "slug": "admin"}
    assert [d["id"] for d in store.scan("role")] == ["x1"]


def test_if_a_returned_document_is_changed_then_the_stored_one_is_not(store: Store) -> None:
    store.insert("key", {"id": "key_1", "hash": "h1", "roles": ["a"]})

    got = store.get("key", "key_1")
    assert got is not None
    got["roles"].append("b")
    got["hash"] = "changed"
    scanned = store.scan("key")
    scanned[0]["roles"].append("c")

    assert store.get("key", "key_1") == {"id": "key_1", "hash": "h1", "roles": ["a"]}


def test_if_an_inserted_document_is_changed_afterwards_then_the_stored_one_is_not(store: Store) -> None:
    doc = {"id": "key_1", "hash": "h1", "roles": ["a"]}
    store.insert("key", doc)
    doc["roles"].append("b")

    assert store.get("key", "key_1") == {"id": "key_1", "hash": "h1", "roles": ["a"]}


def test_if_documents_are_scanned_then_they_come_in_id_order_a_page_at_a_time(store: Store) -> None:
    for i in (4, 0, 6, 2, 5, 1, 3):
        store.insert("role", role(f"role_{i}", f"r{i}"))

    first = store.scan("role", limit=3)
    second = store.scan("role", after=first[-1]["id"], limit=3)
    third = store.scan("role", after=second[-1]["id"], limit=3)
    fourth = store.scan("role", after=third[-1]["id"], limit=3)

    assert [d["id"] for d in first] == ["role_0", "role_1", "role_2"]
    assert [d["id"] for d in second] == ["role_3", "role_4", "role_5"]
    assert [d["id"] for d in third] == ["role_6"]
    assert fourth == []
    assert [d["id"] for d in store.scan_all("role")] == [f"role_{i}" for i in range(7)]


def test_if_scan_filters_by_a_grouping_field_then_only_that_group_is_listed(store: Store) -> None:
    for i in range(8):
        store.insert("key", {"id": f"key_{i}", "hash": f"h{i}", "api_id": f"api_{i % 2}"})

    page = store.scan("key", where=("api_id", "api_1"), limit=2)
    rest = store.scan("key", where=("api_id", "api_1"), after=page[-1]["id"], limit=10)

    assert [d["id"] for d in page] == ["key_1", "key_3"]
    assert [d["id"] for d in rest] == ["key_5", "key_7"]
    assert store.scan("key", where=("api_id", "api_9")) == []


def test_if_an_insert_clashes_on_a_unique_field_then_conflict_error_and_nothing_changes(
    store: Store,
) -> None:
    store.insert("keyspace", {"id": "ks_1", "prefix": "sk_live", "api_id": "api_1"})

    with pytest.raises(ConflictError):
        store.insert("keyspace", {"id": "ks_2", "prefix": "sk_live", "api_id": "api_2"})

    assert store.get("keyspace", "ks_2") is None
    assert store.find("keyspace", "prefix", "sk_live") == {
        "id": "ks_1", "prefix": "sk_live", "api_id": "api_1"}


def test_if_an_insert_reuses_an_id_then_conflict_error_and_the_first_document_stays(
    store: Store,
) -> None:
    store.insert("role", role("role_1", "reader"))

    with pytest.raises(ConflictError):
        store.insert("role", role("role_1", "writer"))

    assert store.get("role", "role_1") == role("role_1", "reader")
    assert store.find("role", "name", "writer") is None


def test_if_a_replacement_clashes_on_a_unique_field_then_conflict_error_and_both_documents_stay(
    store: Store,
) -> None:
    store.insert("role", role("role_1", "reader"))
    store.insert("role", role("role_2", "writer"))

    with pytest.raises(ConflictError):
        store.replace("role", role("role_2", "reader"))

    assert store.get("role", "role_1") == role("role_1", "reader")
    assert store.get("role", "role_2") == role("role_2", "writer")
    assert store.find("role", "name", "writer") == role("role_2", "writer")


def test_if_a_replacement_changes_a_unique_value_then_the_old_value_is_free(store: Store) -> None:
    store.insert("role", role("role_1", "reader"))

    store.replace("role", role("role_1", "viewer", description="renamed"))
    store.insert("role", role("role_2", "reader"))

    assert store.find("role", "name", "viewer") == role("role_1", "viewer", description="renamed")
    assert store.find("role", "name", "reader") == role("role_2", "reader")


def test_if_replace_names_a_new_id_then_the_document_is_created(store: Store) -> None:
    store.replace("role", role("role_1", "reader"))

    assert store.find("role", "name", "reader") == role("role_1", "reader")


def test_if_a_unique_field_is_absent_then_many_documents_may_lack_it(store: Store) -> None:
    # A deleted keyspace drops its prefix so the prefix can be reused.
    store.insert("keyspace", {"id": "ks_1", "api_id": "a", "deleted_prefix": "sk"})
    store.insert("keyspace", {"id": "ks_2", "api_id": "b", "deleted_prefix": "sk"})
    store.insert("keyspace", {"id": "ks_3", "api_id": "c", "prefix": "sk"})

    assert [d["id"] for d in store.scan("keyspace")] == ["ks_1", "ks_2", "ks_3"]
    assert store.find("keyspace", "prefix", "sk") == {"id": "ks_3", "api_id": "c", "prefix": "sk"}


def test_if_a_document_is_deleted_then_it_is_gone_and_its_unique_value_is_free(store: Store) -> None:
    store.insert("identity", {"id": "id_1", "external_id": "acme"})

    store.delete("identity", "id_1")

    assert store.get("identity", "id_1") is None
    assert store.find("identity", "external_id", "acme") is None
    store.insert("identity", {"id": "id_2", "external_id": "acme"})
    assert store.find("identity", "external_id", "acme") == {"id": "id_2", "external_id": "acme"}


def test_if_a_missing_document_is_deleted_then_nothing_happens(store: Store) -> None:
    store.insert("role", role("role_1", "reader"))

    store.delete("role", "role_2")

    assert [d["id"] for d in store.scan("role")] == ["role_1"]


# -- states --------------------------------------------------------------------------


def test_if_no_state_was_written_then_read_states_gives_none_for_each_key(store: Store) -> None:
    assert store.read_states(["a", "b"]) == {"a": None, "b": None}
    assert store.read_states([]) == {}


def test_if_transact_writes_states_then_read_states_and_the_next_transact_see_them(
    store: Store,
) -> None:
    value = store.transact(["a", "b"], lambda states: ({"a": {"n": 1}, "b": {"n": 2}}, "done"))
    seen: list[Mapping[str, State | None]] = []

    def look(states: Mapping[str, State | None]) -> tuple[dict[str, State | None], None]:
        seen.append(dict(states))
        return {}, None

    store.transact(["a", "b", "c"], look)

    assert value == "done"
    assert store.read_states(["a", "b", "c"]) == {"a": {"n": 1}, "b": {"n": 2}, "c": None}
    assert seen == [{"a": {"n": 1}, "b": {"n": 2}, "c": None}]


def test_if_transact_writes_none_then_the_state_is_deleted(store: Store) -> None:
    store.transact(["a", "b"], lambda _: ({"a": {"n": 1}, "b": {"n": 2}}, None))

    store.transact(["a"], lambda _: ({"a": None}, None))

    assert store.read_states(["a", "b"]) == {"a": None, "b": {"n": 2}}


def test_if_the_transaction_function_raises_then_no_state_changes(store: Store) -> None:
    store.transact(["a", "b"], lambda _: ({"a": {"n": 1}, "b": {"n": 2}}, None))

    def broken(states: Mapping[str, State | None]) -> tuple[dict[str, State | None], None]:
        states["a"]["n"] = 100  # type: ignore[index]  # even changed in place, then fails
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.transact(["a", "b"], broken)

    assert store.read_states(["a", "b"]) == {"a": {"n": 1}, "b": {"n": 2}}
    # and the store still works afterwards
    store.transact(["a"], lambda s: ({"a": {"n": s["a"]["n"] + 1}}, None))  # type: ignore[index]
    assert store.read_states(["a"]) == {"a": {"n": 2}}


def test_if_a_read_or_written_state_is_changed_afterwards_then_the_store_is_not(
    store: Store,
) -> None:
    written = {"n": 1}
    store.transact(["a"], lambda _: ({"a": written}, None))
    written["n"] = 50
    read = store.read_states(["a"])
    read["a"]["n"] = 99  # type: ignore[index]

    assert store.read_states(["a"]) == {"a": {"n": 1}}


def test_if_many_threads_increment_one_state_then_no_increment_is_lost(store: Store) -> None:
    def increment(states: Mapping[str, State | None]) -> tuple[dict[str, State | None], None]:
        current = states["counter"] or {"n": 0}
        return {"counter": {"n": current["n"] + 1}}, None

    def worker() -> None:
        for _ in range(25):
            store.transact(["counter"], increment)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert store.read_states(["counter"]) == {"counter": {"n": 200}}


# -- SQLite specifics ---------------------------------------------------------------------


def sqlite_path(url: str) -> str:
    return url[len("sqlite:///"):]


def test_if_a_sqlite_store_is_opened_then_the_file_is_in_wal_mode(sqlite_url: str) -> None:
    store = SQLiteStore(sqlite_url)
    store.insert("role", role("role_1", "reader"))

    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    store.close()

    assert mode == "wal"


def test_if_a_sqlite_file_lacks_an_index_added_since_then_opening_it_adds_the_index(
    sqlite_url: str,
) -> None:
    SQLiteStore(sqlite_url).close()
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        conn.execute("DROP INDEX g_key_states_of")  # as a file made before the index existed
    conn.close()

    store = SQLiteStore(sqlite_url)
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'g_key_states_of'").fetchone()
    conn.close()
    store.close()

    assert found is not None


def test_if_two_sqlite_stores_open_one_file_then_each_sees_the_others_writes(sqlite_url: str) -> None:
    first, second = SQLiteStore(sqlite_url), SQLiteStore(sqlite_url)

    first.insert("role", role("role_1", "reader"))
    second.transact(["a"], lambda _: ({"a": {"n": 7}}, None))

    assert second.find("role", "name", "reader") == role("role_1", "reader")
    assert first.read_states(["a"]) == {"a": {"n": 7}}
    first.close()
    second.close()


def test_if_the_directory_of_a_sqlite_path_does_not_exist_then_configuration_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        SQLiteStore(f"sqlite:///{tmp_path / 'missing' / 'keys.db'}")


def test_if_a_sqlite_path_is_a_directory_then_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="directory"):
        SQLiteStore(f"sqlite:///{tmp_path}")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlitex:///keys.db", "memory://"])
def test_if_a_sqlite_url_has_no_path_or_another_scheme_then_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteStore(url)


def test_if_a_sqlite_store_is_closed_then_every_call_raises_store_unavailable(sqlite_url: str) -> None:
    store = SQLiteStore(sqlite_url)
    store.insert("role", role("role_1", "reader"))

    store.close()

    with pytest.raises(StoreUnavailableError, match="closed"):
        store.get("role", "role_1")
    with pytest.raises(StoreUnavailableError):
        store.insert("role", role("role_2", "writer"))
    with pytest.raises(StoreUnavailableError):
        store.transact(["a"], lambda _: ({"a": {"n": 1}}, None))
    with pytest.raises(StoreUnavailableError):
        store.read_states(["a"])


def test_if_a_closed_sqlite_store_is_used_from_another_thread_then_store_unavailable(
    sqlite_url: str,
) -> None:
    store = SQLiteStore(sqlite_url)
    store.close()
    errors: list[BaseException] = []

    def use() -> None:
        try:
            store.get("role", "role_1")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()

    assert len(errors) == 1 and isinstance(errors[0], StoreUnavailableError)


def test_if_another_connection_holds_the_write_lock_beyond_the_timeout_then_store_unavailable(
    sqlite_url: str,
) -> None:
    store = SQLiteStore(sqlite_url, timeout=0.05)
    store.insert("role", role("role_1", "reader"))
    store.transact(["a"], lambda _: ({"a": {"n": 1}}, None))
    holder = sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailableError, match="locked"):
            store.insert("role", role("role_2", "writer"))
        with pytest.raises(StoreUnavailableError, match="locked"):
            store.transact(["a"], lambda _: ({"a": {"n": 2}}, None))
        # WAL: readers are not blocked by a writer
        assert store.find("role", "name", "reader") == role("role_1", "reader")
        assert store.read_states(["a"]) == {"a": {"n": 1}}
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    store.insert("role", role("role_2", "writer"))
    assert store.read_states(["a"]) == {"a": {"n": 1}}
    assert store.find("role", "name", "writer") == role("role_2", "writer")
    store.close()


def test_if_a_unique_clash_happens_in_sqlite_then_the_error_is_conflict_not_unavailable(
    sqlite_url: str,
) -> None:
    store = SQLiteStore(sqlite_url)
    store.insert("identity", {"id": "id_1", "external_id": "acme"})

    with pytest.raises(ConflictError) as caught:
        store.insert("identity", {"id": "id_2", "external_id": "acme"})

    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    store.close()


# -- URLs and the environment ----------------------------------------------------------------


def test_if_the_url_is_memory_then_open_store_gives_a_memory_store() -> None:
    store = open_store("memory://")

    assert isinstance(store, MemoryStore)
    assert store.url == "memory://"
    assert open_store("memory://") is not store


def test_if_the_url_is_sqlite_with_an_absolute_path_then_that_file_is_used(tmp_path: Path) -> None:
    path = tmp_path / "abs.db"

    store = open_store(f"sqlite:///{path}")

    assert isinstance(store, SQLiteStore)
    assert store.path == str(path)
    assert path.exists()
    store.close()


def test_if_the_url_is_sqlite_with_a_relative_path_then_it_is_relative_to_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)

    store = open_store("sqlite:///rel.db")

    assert isinstance(store, SQLiteStore)
    assert store.path == str(tmp_path / "rel.db")
    assert store.url == f"sqlite:///{tmp_path / 'rel.db'}"
    assert (tmp_path / "rel.db").exists()
    store.close()


def test_if_the_scheme_is_unknown_then_configuration_error_names_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown store scheme 'mongodb'.*memory://.*sqlite://"):
        open_store("mongodb://localhost/keys")


@pytest.mark.parametrize("url", ["keys.db", "sqlite:/keys.db", "memory"])
def test_if_the_url_has_no_scheme_separator_then_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape("sqlite:///keys.db")):
        open_store(url)


def test_if_keystile_store_is_set_then_it_is_read_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYSTILE_STORE", "memory://")
    assert isinstance(open_store(), MemoryStore)

    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("KEYSTILE_STORE", url)
    store = open_store()

    assert default_store_url() == url
    assert isinstance(store, SQLiteStore) and store.path == str(tmp_path / "env.db")
    store.close()


def test_if_keystile_store_is_set_then_a_keystile_without_a_store_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("KEYSTILE_STORE", url)

    with Keystile() as ks:
        ks.create_api("env", prefix="env")
        assert ks.store.url == url
    with Keystile(url) as again:
        assert [api.name for api in again.list_apis()] == ["env"]


def test_if_keystile_store_is_unset_or_empty_then_the_default_sqlite_file_in_the_cwd_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KEYSTILE_STORE", raising=False)
    assert default_store_url() == DEFAULT_STORE_URL == "sqlite:///./keystile.db"

    monkeypatch.setenv("KEYSTILE_STORE", "")
    store = open_store()

    assert isinstance(store, SQLiteStore)
    assert (tmp_path / "keystile.db").exists()
    store.close()


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite:///file:x?mode=memory"])
def test_if_sqlite_url_names_no_file_then_configuration_error_points_to_memory(url: str) -> None:
    with pytest.raises(ConfigurationError, match="memory://"):
        open_store(url)


def test_if_sqlite_store_closed_then_connections_of_every_thread_are_closed(sqlite_url: str) -> None:
    import sqlite3
    import threading

    store = open_store(sqlite_url)
    assert isinstance(store, SQLiteStore)
    thread = threading.Thread(target=store.read_states, args=(["x"],))
    thread.start()
    thread.join()
    connections = list(store._connections)
    assert len(connections) == 2
    store.close()
    for conn in connections:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")


def test_if_a_sqlite_commit_fails_then_the_transaction_is_rolled_back_and_the_file_stays_writable(
    sqlite_url: str,
) -> None:
    store = SQLiteStore(sqlite_url, timeout=0.5)
    failing = [True]

    def deny_one_commit(action: int, arg1: str | None, *_: Any) -> int:
        # A COMMIT that fails, as one does on a full disk or an I/O error.
        if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT" and failing[0]:
            failing[0] = False
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    store._connect().set_authorizer(deny_one_commit)
    with pytest.raises(StoreError):
        store.transact(["a"], lambda states: ({"a": {"n": 1}}, None))

    store.transact(["a"], lambda states: ({"a": {"n": 2}}, None))  # this thread writes again
    other = SQLiteStore(sqlite_url, timeout=0.5)  # and the write lock was released
    other.transact(["b"], lambda states: ({"b": {"n": 1}}, None))
    assert other.read_states(["a", "b"]) == {"a": {"n": 2}, "b": {"n": 1}}
    other.close()
    store.close()


def test_if_the_sqlite_directory_vanishes_after_construction_then_a_new_thread_gets_unavailable(
    tmp_path: Path,
) -> None:
    import shutil
    import threading

    from keystile import StoreUnavailableError

    directory = tmp_path / "data"
    directory.mkdir()
    store = open_store(f"sqlite:///{directory / 'keys.db'}")
    shutil.rmtree(directory)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            store.get("key", "key_x")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert isinstance(errors[0], StoreUnavailableError)
    store.close()


def test_if_a_document_is_modified_then_fn_sees_the_stored_one_and_its_answer_is_written(
    store: Store,
) -> None:
    store.insert("role", {"id": "role_1", "name": "reader", "permissions": ["a"]})
    seen: list[Any] = []

    def add_b(doc: Any) -> Any:
        seen.append(doc)
        return {**doc, "permissions": [*doc["permissions"], "b"]}

    written = store.modify("role", "role_1", add_b)
    assert seen == [{"id": "role_1", "name": "reader", "permissions": ["a"]}]
    assert written["permissions"] == ["a", "b"]
    assert store.get("role", "role_1") == written


def test_if_modify_fn_raises_or_clashes_then_nothing_is_written(store: Store) -> None:
    from keystile import ConflictError

    store.insert("role", {"id": "role_1", "name": "reader"})
    store.insert("role", {"id": "role_2", "name": "writer"})

    def fail(doc: Any) -> Any:
        raise LookupError("no")

    with pytest.raises(LookupError):
        store.modify("role", "role_1", fail)
    with pytest.raises(ConflictError):
        store.modify("role", "role_1", lambda doc: {**doc, "name": "writer"})
    assert store.get("role", "role_1") == {"id": "role_1", "name": "reader"}
    assert store.modify("role", "role_9", lambda doc: {"id": "role_9", "name": str(doc)}) == {
        "id": "role_9", "name": "None"}
