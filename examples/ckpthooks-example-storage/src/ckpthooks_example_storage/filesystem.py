"""``sqlblob://``: an fsspec filesystem whose files are rows of a SQLite database.

Every file is one row of the table ``blobs(path, data, mtime)``; folders are implicit, as on an
object store (a folder exists while a file below it does). The database file is the storage
option ``database`` (or the environment variable ``CKPTHOOKS_SQLBLOB_DATABASE``)::

    fsspec.filesystem("sqlblob", database="/data/runs.sqlite")
    Checkpointer("sqlblob://runs/demo", storage_options={"database": "/data/runs.sqlite"})

A file written through :meth:`SQLBlobFileSystem.open` is committed in one transaction when it is
closed: a reader sees the old content or the new one, never a mix, and a write that is discarded
(an aborted upload) leaves nothing. Each thread uses its own connection; the database runs in WAL
mode, so readers do not wait for a writer.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
import threading
import time
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

__all__ = ["DATABASE_VARIABLE", "SQLBlobFileSystem"]

#: The environment variable naming the database when no ``database`` option is given.
DATABASE_VARIABLE = "CKPTHOOKS_SQLBLOB_DATABASE"

_SCHEMA = "CREATE TABLE IF NOT EXISTS blobs (path TEXT PRIMARY KEY, data BLOB NOT NULL, mtime REAL NOT NULL)"


class SQLBlobFileSystem(AbstractFileSystem):  # type: ignore[misc]  # fsspec has no type hints
    """Files as blobs in a SQLite table (see the module docstring)."""

    protocol = "sqlblob"
    root_marker = ""

    def __init__(self, database: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        chosen = database if database is not None else os.environ.get(DATABASE_VARIABLE)
        if not chosen:
            raise ValueError(
                "sqlblob:// needs a database file: pass storage_options={'database': PATH} or set "
                + DATABASE_VARIABLE
            )
        self.database = os.path.abspath(os.fspath(chosen))
        self._local = threading.local()
        with self._connection() as db:
            db.execute(_SCHEMA)

    # ------------------------------------------------------------------ the database
    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.database, timeout=60.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed row survives a power failure
            self._local.db = db
        return db

    def _row(self, path: str) -> tuple[int, float] | None:
        found = self._connection().execute("SELECT length(data), mtime FROM blobs WHERE path = ?", (path,)).fetchone()
        return None if found is None else (int(found[0]), float(found[1]))

    def _below(self, path: str) -> list[tuple[str, int, float]]:
        prefix = f"{path}/" if path else ""
        rows = self._connection().execute(
            "SELECT path, length(data), mtime FROM blobs WHERE substr(path, 1, ?) = ? ORDER BY path",
            (len(prefix), prefix),
        )
        return [(str(p), int(size), float(mtime)) for p, size, mtime in rows]

    def write_blob(self, path: str, data: bytes) -> None:
        """Store ``data`` as the file ``path``, replacing it, in one transaction."""
        with self._connection() as db:
            db.execute("INSERT OR REPLACE INTO blobs (path, data, mtime) VALUES (?, ?, ?)", (path, data, time.time()))

    # ------------------------------------------------------------------ fsspec's interface
    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text = str(path)
        if text.startswith("sqlblob://"):
            text = text[len("sqlblob://") :]
        return text.strip("/")

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        row = self._row(path)
        if row is not None:
            return {"name": path, "size": row[0], "type": "file", "mtime": row[1]}
        if path == "" or self._below(path):
            return {"name": path, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        row = self._row(path)
        entries: list[dict[str, Any]] = []
        if row is not None:
            entries.append({"name": path, "size": row[0], "type": "file", "mtime": row[1]})
        else:
            below = self._below(path)
            if not below and path != "":
                raise FileNotFoundError(path)
            start = len(path) + 1 if path else 0
            folders: set[str] = set()
            for name, size, mtime in below:
                rest = name[start:]
                if "/" in rest:
                    folders.add(rest.split("/", 1)[0])
                else:
                    entries.append({"name": name, "size": size, "type": "file", "mtime": mtime})
            for folder in sorted(folders):
                entries.append({"name": f"{path}/{folder}" if path else folder, "size": 0, "type": "directory"})
            entries.sort(key=lambda entry: str(entry["name"]))
        return entries if detail else [entry["name"] for entry in entries]

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        found = self._connection().execute("SELECT data FROM blobs WHERE path = ?", (path,)).fetchone()
        if found is None:
            raise FileNotFoundError(path)
        data = bytes(found[0])
        return data[start:end]

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if mode == "create" and self._row(path) is not None:
            raise FileExistsError(path)
        self.write_blob(path, bytes(value))

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        source, target = self._strip_protocol(path1), self._strip_protocol(path2)
        with self._connection() as db:
            copied = db.execute(
                "INSERT OR REPLACE INTO blobs (path, data, mtime) SELECT ?, data, ? FROM blobs WHERE path = ?",
                (target, time.time(), source),
            ).rowcount
        if not copied:
            raise FileNotFoundError(source)

    def rm_file(self, path: str) -> None:
        path = self._strip_protocol(path)
        with self._connection() as db:
            if not db.execute("DELETE FROM blobs WHERE path = ?", (path,)).rowcount:
                raise FileNotFoundError(path)

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        for one in path if isinstance(path, list) else [path]:
            stripped = self._strip_protocol(one)
            with self._connection() as db:
                removed = db.execute("DELETE FROM blobs WHERE path = ?", (stripped,)).rowcount
                if recursive:
                    prefix = f"{stripped}/" if stripped else ""
                    removed += db.execute(
                        "DELETE FROM blobs WHERE substr(path, 1, ?) = ?", (len(prefix), prefix)
                    ).rowcount
            if not removed:
                raise FileNotFoundError(stripped)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Folders are implicit: nothing to create."""

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Folders are implicit: nothing to create."""

    def modified(self, path: str) -> datetime.datetime:
        info = self.info(path)
        if info["type"] != "file":
            raise IsADirectoryError(path)
        return datetime.datetime.fromtimestamp(info["mtime"], tz=datetime.timezone.utc)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: Any = "default",
        autocommit: bool = True,
        cache_options: Any = None,
        **kwargs: Any,
    ) -> SQLBlobFile:
        path = self._strip_protocol(path)
        if "r" in mode and self._row(path) is None:
            raise FileNotFoundError(path)
        return SQLBlobFile(self, path, mode, block_size=block_size, autocommit=autocommit, cache_options=cache_options)


class SQLBlobFile(AbstractBufferedFile):  # type: ignore[misc]
    """A file of :class:`SQLBlobFileSystem`: reads fetch byte ranges, writes are committed in one
    transaction at close (and never when the file is discarded)."""

    fs: SQLBlobFileSystem

    def _fetch_range(self, start: int, end: int) -> bytes:
        found = (
            self.fs._connection()
            .execute("SELECT substr(data, ?, ?) FROM blobs WHERE path = ?", (start + 1, end - start, self.path))
            .fetchone()
        )
        if found is None:
            raise FileNotFoundError(self.path)
        return bytes(found[0])

    def _initiate_upload(self) -> None:
        self._parts: list[bytes] = []

    def _upload_chunk(self, final: bool = False) -> bool:
        self._parts.append(self.buffer.getvalue())
        if final:
            self.fs.write_blob(self.path, b"".join(self._parts))
            self._parts = []
        return True

    def discard(self) -> None:
        self._parts = []
        super().discard()
