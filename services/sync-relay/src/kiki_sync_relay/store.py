"""The sessions' documents on disk: SQLite (WAL) under the state directory, one writer thread.

Each session is a snapshot plus an append-only log of the updates since. Appends are group
committed: the thread takes every append waiting when it wakes, writes them in one transaction
(``synchronous=FULL``: the WAL is synced at each commit) and only then resolves their futures,
so the relay sends an update on once it is durable. Every other job (loading a session,
compaction, a barrier) runs on the same thread in the order it was asked, so a job sees every
append asked before it.

Compaction replaces a session's snapshot and removes the log up to the newest update it
covers, in one transaction: a crash leaves either the old snapshot and log or the new.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from libkiki.errors import Unavailable

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS updates_by_session ON updates (session, seq);
CREATE TABLE IF NOT EXISTS snapshots (
    session TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
"""


@dataclass(slots=True)
class _Append:
    session: str
    data: bytes
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Job:
    run: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


_STOP = object()


class Store:
    """Open with :meth:`start` (in a running loop), close with :meth:`stop`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[_Append | _Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0
        self.appended = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="sync-relay-store", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        if self._thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    # -- the loop's side ----------------------------------------------------------------------

    def append(self, session: str, data: bytes) -> asyncio.Future[None]:
        """Log ``data``; the future is done once it is durable."""
        if self._loop is None or self._thread is None:
            raise Unavailable("the session store is closed")
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.put(_Append(session, data, future))
        return future

    def _job(self, run: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        if self._loop is None or self._thread is None:
            raise Unavailable("the session store is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Job(run, future))
        return future

    async def load(self, session: str) -> list[bytes]:
        """The session's snapshot (if any) and then its logged updates, oldest first."""

        def run(conn: sqlite3.Connection) -> list[bytes]:
            rows = conn.execute("SELECT data FROM snapshots WHERE session = ?", (session,))
            found = [bytes(r[0]) for r in rows]
            rows = conn.execute(
                "SELECT data FROM updates WHERE session = ? ORDER BY seq", (session,)
            )
            found.extend(bytes(r[0]) for r in rows)
            return found

        return await self._job(run)

    def compact(self, session: str, snapshot: bytes) -> asyncio.Future[None]:
        """Store ``snapshot`` in place of the session's log. Asked (not awaited) at once, so it
        runs after exactly the appends asked before it: ``snapshot`` must be the document after
        those, every one of them, and no other."""

        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO snapshots (session, data) VALUES (?, ?)",
                    (session, snapshot),
                )
                conn.execute("DELETE FROM updates WHERE session = ?", (session,))

        return self._job(run)

    async def sessions(self) -> dict[str, int]:
        """Every stored session and the bytes it takes (snapshot and log)."""

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            sizes: dict[str, int] = {}
            for table in ("snapshots", "updates"):
                for name, size in conn.execute(
                    f"SELECT session, SUM(LENGTH(data)) FROM {table} GROUP BY session"
                ):
                    sizes[name] = sizes.get(name, 0) + int(size)
            return sizes

        return await self._job(run)

    async def barrier(self) -> None:
        """Done once every append asked before it is durable."""
        await self._job(lambda conn: None)

    # -- the thread's side --------------------------------------------------------------------

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                batch: list[_Append] = []
                while isinstance(item, _Append):
                    batch.append(item)
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        item = None
                        break
                if batch:
                    self._commit(conn, batch)
                if isinstance(item, _Job):
                    self._do(conn, item)
                elif item is _STOP:
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Append]) -> None:
        error: BaseException | None = None
        try:
            with _transaction(conn):
                conn.executemany(
                    "INSERT INTO updates (session, data) VALUES (?, ?)",
                    [(a.session, a.data) for a in batch],
                )
        except sqlite3.Error as exc:
            error = Unavailable(f"the session store failed to write: {exc}")
        self.commits += 1
        self.appended += len(batch)
        self._resolve([(a.future, None, error) for a in batch])

    def _do(self, conn: sqlite3.Connection, job: _Job) -> None:
        try:
            result, error = job.run(conn), None
        except sqlite3.Error as exc:
            result, error = None, Unavailable(f"the session store failed: {exc}")
        self._resolve([(job.future, result, error)])

    def _resolve(self, done: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
        def settle() -> None:
            for future, result, error in done:
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed first: nobody waits
            self._loop.call_soon_threadsafe(settle)


class _transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")
