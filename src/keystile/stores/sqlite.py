"""``sqlite:///path.db``: the embedded default, stdlib ``sqlite3`` in WAL mode.

One connection per thread and process. Every state change is one ``BEGIN
IMMEDIATE`` transaction, so credits and rate limits stay exact across threads and
across processes sharing the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from .._analytics import Event, EventFilter
from .._errors import ConfigurationError, ConflictError, StoreError, StoreUnavailableError
from .._forks import on_fork
from ._base import KINDS, Doc, State, Store

__all__ = ["SQLiteStore"]

R = TypeVar("R")

# Table or index name -> the statement creating it.
_SCHEMA = {
    "docs": "CREATE TABLE IF NOT EXISTS docs (kind TEXT NOT NULL, id TEXT NOT NULL,"
            " doc TEXT NOT NULL, PRIMARY KEY (kind, id)) WITHOUT ROWID",
    "state": "CREATE TABLE IF NOT EXISTS state (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID",
}
for _kind, (_uniques, _groups) in KINDS.items():
    _SCHEMA.update(
        (f"u_{_kind}_{_f}", f"CREATE UNIQUE INDEX IF NOT EXISTS u_{_kind}_{_f}"
                            f" ON docs(json_extract(doc, '$.{_f}')) WHERE kind = '{_kind}'")
        for _f in _uniques
    )
    _SCHEMA.update(
        (f"g_{_kind}_{_f}", f"CREATE INDEX IF NOT EXISTS g_{_kind}_{_f}"
                            f" ON docs(json_extract(doc, '$.{_f}'), id) WHERE kind = '{_kind}'")
        for _f in _groups
    )

# Analytics: one row per verification, written in batches off the request path.
_SCHEMA.update({
    "events": "CREATE TABLE IF NOT EXISTS events (time INTEGER NOT NULL, code TEXT NOT NULL,"
              " key_id TEXT, keyspace_id TEXT, api_id TEXT, identity_id TEXT, external_id TEXT,"
              " tags TEXT, spent INTEGER NOT NULL, instance TEXT, region TEXT, count INTEGER NOT NULL)",
    "events_time": "CREATE INDEX IF NOT EXISTS events_time ON events(time)",
    "events_key": "CREATE INDEX IF NOT EXISTS events_key ON events(key_id, time)",
    "events_api": "CREATE INDEX IF NOT EXISTS events_api ON events(api_id, time)",
    "events_identity": "CREATE INDEX IF NOT EXISTS events_identity ON events(identity_id, time)",
})
_EVENT_COLUMNS = ("time, code, key_id, keyspace_id, api_id, identity_id, external_id, tags, spent,"
                  " instance, region, count")


def _path_from_url(url: str) -> str:
    if not url.startswith("sqlite://"):
        raise ConfigurationError(f"not a SQLite URL: {url!r}")
    path = url[len("sqlite://"):]
    if path.startswith("/"):
        path = path[1:]  # sqlite:///keys.db -> keys.db, sqlite:////abs/keys.db -> /abs/keys.db
    if not path:
        raise ConfigurationError("a SQLite URL needs a path, e.g. sqlite:///keystile.db")
    if path == ":memory:" or path.startswith("file:"):
        raise ConfigurationError("use memory:// for an in-process store; sqlite:// needs a file path")
    return path


_WRITERS: dict[str, threading.Lock] = {}
_WRITERS_LOCK = threading.Lock()


def _writer_lock(path: str) -> threading.Lock:
    """One lock per file in this process, shared by every store object of the file."""
    with _WRITERS_LOCK:
        return _WRITERS.setdefault(path, threading.Lock())


def _forget_writers() -> None:
    # A child forked while a thread held a lock would wait for it forever: start afresh.
    global _WRITERS_LOCK
    _WRITERS_LOCK = threading.Lock()
    _WRITERS.clear()


os.register_at_fork(after_in_child=_forget_writers)


class SQLiteStore(Store):
    """A SQLite file shared by the threads and processes of one machine."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        super().__init__(url)
        self.path = os.path.abspath(_path_from_url(url))
        # One spelling per file, so every object of this file shares invalidations.
        self.url = f"sqlite:///{self.path}"
        self.timeout = timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        on_fork(self)
        self._closed = False
        self._opened = False
        with self._errors():
            self._connect()  # fail at construction on a bad path, and create the schema
        self._opened = True

    # -- connections ----------------------------------------------------------------

    def _after_fork(self) -> None:
        self._connections_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailableError(f"the store {self.url} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            return self._open()
        except ConfigurationError as exc:
            if not self._opened:
                raise  # at construction: the configuration is wrong
            # Later (a new thread's connection): the file went away under us.
            raise StoreUnavailableError(str(exc)) from exc

    def _open(self) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ConfigurationError(f"the directory of {self.path!r} does not exist")
        if os.path.isdir(self.path):
            raise ConfigurationError(f"{self.path!r} is a directory, not a database file")
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal" and self.path != ":memory:":
            raise ConfigurationError(f"{self.path!r} cannot use WAL mode")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Reads through a shared memory map instead of copies in each connection's
        # page cache: a cache miss stays flat as the file grows to millions of keys.
        conn.execute("PRAGMA mmap_size = 1073741824")
        self._create_schema(conn)
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        # Every name, not just one: a file made by an older keystile gets the indexes added since.
        marks = ",".join("?" * len(_SCHEMA))
        found = conn.execute(f"SELECT count(*) FROM sqlite_master WHERE name IN ({marks})",
                             list(_SCHEMA)).fetchone()[0]
        if found == len(_SCHEMA):
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.values():
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"a unique field clashes: {exc}") from exc
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"SQLite store {self.path!r}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path!r}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # Threads of one process take turns here rather than in SQLite's busy handler,
        # which sleeps in steps of milliseconds: under concurrent writes that sleeping,
        # not the work, made the tail. Other processes still meet at BEGIN IMMEDIATE.
        writer = _writer_lock(self.path)
        if not writer.acquire(timeout=self.timeout):
            raise StoreUnavailableError(f"SQLite store {self.path!r}: writers queued beyond the timeout")
        try:
            with self._errors():
                conn = self._connect()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    # Also when COMMIT itself failed: else the connection stays in the
                    # transaction, holding the file's write lock for good.
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        finally:
            writer.release()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._errors():
            return self._connect().execute(sql, params).fetchall()

    def close(self) -> None:
        """Close the connections of every thread (of this process) that used the store."""
        self._closed = True
        with self._connections_lock:
            connections, self._connections = self._connections, []
        if getattr(self._local, "pid", None) not in (None, os.getpid()):
            return  # inherited through fork: the parent's connections are not ours to close
        for conn in connections:
            conn.close()
        self._local.conn = None

    # -- analytics events -----------------------------------------------------------------

    def write_events(self, events: Sequence[Event]) -> None:
        rows = [(e.time, e.code, e.key_id, e.keyspace_id, e.api_id, e.identity_id, e.external_id,
                 json.dumps(e.tags) if e.tags else None, e.spent, e.instance, e.region, e.count)
                for e in events]
        with self._transaction() as conn:
            conn.executemany(f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                             rows)

    def read_events(self, since: int, until: int, where: EventFilter) -> list[Event]:
        sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE time >= ? AND time < ?"
        params: list[Any] = [since, until]
        for column, value in (("api_id", where.api_id), ("keyspace_id", where.keyspace_id),
                              ("key_id", where.key_id)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        if where.identity is not None:
            sql += " AND (identity_id = ? OR external_id = ?)"
            params += [where.identity, where.identity]
        if where.codes:
            sql += f" AND code IN ({','.join('?' * len(where.codes))})"
            params += where.codes
        events = (Event(row[0], row[1], row[2], row[3], row[4], row[5], row[6],
                        tuple(json.loads(row[7])) if row[7] else (), row[8], row[9], row[10], row[11])
                  for row in self._query(sql, params))
        return [event for event in events if where.matches(event)]

    def trim_events(self, before: int) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM events WHERE time < ?", (before,))

    # -- documents --------------------------------------------------------------------

    def get(self, kind: str, id: str) -> Doc | None:
        rows = self._query("SELECT doc FROM docs WHERE kind = ? AND id = ?", (kind, id))
        return json.loads(rows[0][0]) if rows else None

    def find(self, kind: str, field: str, value: str) -> Doc | None:
        if field not in KINDS[kind][0]:
            raise ValueError(f"{field!r} is not a unique field of {kind!r}")
        rows = self._query(
            f"SELECT doc FROM docs WHERE kind = '{kind}' AND json_extract(doc, '$.{field}') = ?",
            (value,),
        )
        return json.loads(rows[0][0]) if rows else None

    def scan(
        self, kind: str, *, where: tuple[str, str] | None = None, after: str | None = None,
        limit: int = 100,
    ) -> list[Doc]:
        sql = f"SELECT doc FROM docs WHERE kind = '{kind}' AND id > ?"
        params: list[Any] = [after or ""]
        if where is not None:
            if where[0] not in KINDS[kind][1]:
                raise ValueError(f"{where[0]!r} is not a grouping field of {kind!r}")
            sql += f" AND json_extract(doc, '$.{where[0]}') = ?"
            params.append(where[1])
        rows = self._query(sql + " ORDER BY id LIMIT ?", [*params, limit])
        return [json.loads(row[0]) for row in rows]

    def insert(self, kind: str, doc: Doc) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO docs (kind, id, doc) VALUES (?, ?, ?)",
                         (kind, doc["id"], json.dumps(doc)))

    def replace(self, kind: str, doc: Doc) -> None:
        with self._transaction() as conn:
            self._upsert(conn, kind, doc)

    def modify(self, kind: str, id: str, fn: Callable[[Doc | None], Doc]) -> Doc:
        with self._transaction() as conn:
            row = conn.execute("SELECT doc FROM docs WHERE kind = ? AND id = ?", (kind, id)).fetchone()
            doc = fn(json.loads(row[0]) if row else None)
            self._upsert(conn, kind, doc)
            return doc

    @staticmethod
    def _upsert(conn: sqlite3.Connection, kind: str, doc: Doc) -> None:
        # An upsert, not INSERT OR REPLACE: that would delete the row a unique clash is with.
        conn.execute("INSERT INTO docs (kind, id, doc) VALUES (?, ?, ?)"
                     " ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc",
                     (kind, doc["id"], json.dumps(doc)))

    def delete(self, kind: str, id: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM docs WHERE kind = ? AND id = ?", (kind, id))

    # -- states -------------------------------------------------------------------------

    def transact(
        self, keys: Sequence[str],
        fn: Callable[[Mapping[str, State | None]], tuple[dict[str, State | None], R]],
    ) -> R:
        with self._transaction() as conn:
            writes, value = fn(self._read_states(conn, keys))
            for key, state in writes.items():
                if state is None:
                    conn.execute("DELETE FROM state WHERE k = ?", (key,))
                else:
                    conn.execute("INSERT OR REPLACE INTO state (k, v) VALUES (?, ?)",
                                 (key, json.dumps(state)))
            return value

    def read_states(self, keys: Sequence[str]) -> dict[str, State | None]:
        with self._errors():
            return self._read_states(self._connect(), keys)

    @staticmethod
    def _read_states(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, State | None]:
        states: dict[str, State | None] = dict.fromkeys(keys)
        if keys:
            marks = ",".join("?" * len(keys))
            for k, v in conn.execute(f"SELECT k, v FROM state WHERE k IN ({marks})", list(keys)):
                states[k] = json.loads(v)
        return states
