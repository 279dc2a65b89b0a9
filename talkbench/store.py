"""Durable per-clip results: one SQLite database (WAL mode) per run directory.

Each clip's row is committed in its own transaction as soon as the clip finishes, with
``synchronous=FULL``, so a run killed at any moment (SIGKILL included) keeps every finished clip and
never holds a partial row. A re-run opens the same store, skips the finished clips and computes only
the rest; the run's settings are kept in a ``meta`` table and a re-run with different settings is
refused rather than silently mixing results. A store that holds no clip yet (a run that stopped before
its first clip, e.g. on a missing checkpoint) takes the new settings instead.

A clip's per-clip feature arrays (the statistics of set-level metrics such as a Fréchet distance) are
stored in the same transaction as its row (table ``features``: one float/int array per clip and name, as
raw bytes with dtype and shape), so a killed run never holds a row without its features or the reverse,
and a merge copies them with the rows.

Each row also keeps the signature of the inputs it was computed from (file sizes and modification
times, a hash of the transcript): the runner recomputes a clip whose inputs changed since.

One process per run directory: the store takes an exclusive lock (``RUN_DIR/.talkbench.lock``, released
by the operating system when the process ends, SIGKILL included); a second process is refused with
:class:`RunDirBusyError` naming the holder.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from filelock import FileLock, Timeout

logger = logging.getLogger(__name__)

STORE_NAME = "store.sqlite"
LOCK_NAME = ".talkbench.lock"
LOCK_OWNER_NAME = ".talkbench.lock.owner"


class StoreMismatchError(ValueError):
    """The run directory holds results made with other settings."""


class RunDirError(ValueError):
    """The run directory cannot be used (not a folder, not writable, its store unreadable)."""


class RunDirBusyError(RunDirError):
    """Another process holds the run directory's lock."""


@dataclass(frozen=True)
class ClipRecord:
    """One stored clip.

    Attributes:
        clip_id: the clip's id in its suite.
        values: its measurements (column -> raw value); the columns of an observer that failed are absent.
        error: the error text (``observer: message; ...``) or None.
        inputs: the signature of the inputs the row was computed from (see the module docstring), or {}.
    """

    clip_id: str
    values: dict[str, Any]
    error: str | None
    inputs: dict[str, Any] = field(default_factory=dict, compare=False)


def _encode(values: Mapping[str, Any]) -> str:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return {"__float__": repr(value)}
        if hasattr(value, "item") and callable(value.item):  # numpy scalar
            return clean(value.item())
        return value

    return json.dumps({k: clean(v) for k, v in values.items()}, sort_keys=True)


def _decode(text: str) -> dict[str, Any]:
    def hook(obj: dict[str, Any]) -> Any:
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        return obj

    return json.loads(text, object_hook=hook)


class ResultStore:
    """Per-clip rows of one run, kept in ``RUN_DIR/store.sqlite``.

    Args:
        run_dir: the run directory (created if missing).
        meta: the run's settings (metrics, suite, protocol, ...). On an existing store that holds clips they
            must equal the stored ones, else :class:`StoreMismatchError` names the differing keys.
    Raises:
        RunDirError: ``run_dir`` is a file, or the store cannot be created or read (permissions, disk).
        RunDirBusyError: another process uses this run directory.
    """

    def __init__(self, run_dir: str | Path, meta: Mapping[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirError(f"{self.run_dir}: the run directory (--out) is a file; give a folder path.")
        self.path = self.run_dir / STORE_NAME
        self._db: sqlite3.Connection | None = None
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirError(f"{self.run_dir}: cannot create the run directory ({err.strerror}); "
                              "choose another --out.") from None
        self._lock = _acquire(self.run_dir)
        try:
            with self._guard():
                self._db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS clips (clip_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, "
                    "values_json TEXT NOT NULL, error TEXT, inputs_json TEXT)"
                )
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS features (clip_id TEXT NOT NULL, name TEXT NOT NULL, dtype TEXT NOT "
                    "NULL, shape TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (clip_id, name))"
                )
                columns = {row[1] for row in self._db.execute("PRAGMA table_info(clips)")}
                if "inputs_json" not in columns:  # a store written before input signatures were kept
                    self._db.execute("ALTER TABLE clips ADD COLUMN inputs_json TEXT")
            if meta is not None:
                self._check_or_write_meta(meta)
        except BaseException:
            self.close()
            raise

    def _guard(self) -> "_SqliteGuard":
        return _SqliteGuard(self.path)

    # -- settings ---------------------------------------------------------------------------
    def _check_or_write_meta(self, meta: Mapping[str, Any]) -> None:
        stored = self.meta()
        if stored and len(self) == 0:
            logger.info("%s holds no clip yet: it takes this run's settings", self.run_dir)
            with self._transaction():
                self._db.execute("DELETE FROM meta")
            stored = {}
        if not stored:
            with self._transaction():
                for key, value in meta.items():
                    self._db.execute("INSERT INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))
            return
        # Only the settings given now are compared: keys added later (e.g. `observers`) are checked by their writers.
        differing = sorted(k for k in meta if stored.get(k) != _roundtrip(meta[k]))
        if differing:
            details = "; ".join(f"{k}: stored {stored.get(k)!r}, now {meta.get(k)!r}" for k in differing)
            raise StoreMismatchError(
                f"{self.path}: this run directory holds results made with other settings ({details}). "
                "Use another --out directory, or delete this one to start again."
            )

    def set_meta(self, key: str, value: Any) -> None:
        """Add or replace one setting (e.g. the checkpoints' sha256 prefixes, known once observers are built)."""
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))

    def meta(self) -> dict[str, Any]:
        """The run's settings as stored."""
        with self._guard():
            return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    # -- rows -------------------------------------------------------------------------------
    def put(self, clip_id: str, values: Mapping[str, Any], error: str | None = None,
            inputs: Mapping[str, Any] | None = None, features: Mapping[str, np.ndarray] | None = None) -> None:
        """Store one finished clip durably, in one transaction (replaces an earlier row of the same clip).

        Args:
            clip_id: the clip's id.
            values: its measurements.
            error: its error text, or None.
            inputs: the signature of its inputs (see the module docstring).
            features: its per-clip feature arrays (numeric, any shape), by name.
        """
        with self._transaction():
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM clips").fetchone()[0]
            self._db.execute(
                "INSERT OR REPLACE INTO clips (clip_id, seq, values_json, error, inputs_json) VALUES (?, ?, ?, ?, ?)",
                (clip_id, seq, _encode(values), error, json.dumps(dict(inputs or {}), sort_keys=True)),
            )
            self._db.execute("DELETE FROM features WHERE clip_id = ?", (clip_id,))
            for name, array in sorted((features or {}).items()):
                array = np.ascontiguousarray(array)
                if array.dtype.kind not in "biuf":
                    raise ValueError(f"feature {name!r} of clip {clip_id}: numeric arrays only, got {array.dtype}")
                self._db.execute("INSERT INTO features VALUES (?, ?, ?, ?, ?)",
                                 (clip_id, name, array.dtype.str, json.dumps(list(array.shape)), array.tobytes()))

    def features(self, names: Iterable[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
        """Stored feature arrays by clip id and name (only ``names`` when given), in clip-id order."""
        query = "SELECT clip_id, name, dtype, shape, data FROM features"
        params: tuple[str, ...] = ()
        if names is not None:
            names = tuple(names)
            query += " WHERE name IN (" + ",".join("?" * len(names)) + ")"
            params = names
        out: dict[str, dict[str, np.ndarray]] = {}
        with self._guard():
            rows = self._db.execute(query + " ORDER BY clip_id, name", params).fetchall()
        for clip_id, name, dtype, shape, data in rows:
            kind = np.dtype(dtype)
            if kind.kind not in "biuf":
                raise RunDirError(f"{self.path}: feature {name!r} of clip {clip_id} has dtype {dtype}; the store is "
                                  "damaged. Delete the run directory and run again.")
            out.setdefault(clip_id, {})[name] = np.frombuffer(data, dtype=kind).reshape(json.loads(shape))
        return out

    def finished_ids(self, include_failed: bool = True) -> set[str]:
        """Ids of stored clips (optionally without the failed ones, so that they are retried)."""
        query = "SELECT clip_id FROM clips" + ("" if include_failed else " WHERE error IS NULL")
        with self._guard():
            return {row[0] for row in self._db.execute(query)}

    def inputs(self) -> dict[str, dict[str, Any]]:
        """The stored input signature of every clip (clip id -> signature; {} for rows stored without one)."""
        with self._guard():
            return {clip_id: json.loads(text) if text else {}
                    for clip_id, text in self._db.execute("SELECT clip_id, inputs_json FROM clips")}

    def records(self) -> Iterator[ClipRecord]:
        """All stored clips, sorted by clip id (a deterministic order, whatever the finishing order)."""
        with self._guard():
            rows = self._db.execute(
                "SELECT clip_id, values_json, error, inputs_json FROM clips ORDER BY clip_id").fetchall()
        for clip_id, values_json, error, inputs_json in rows:
            yield ClipRecord(clip_id, _decode(values_json), error, json.loads(inputs_json) if inputs_json else {})

    def __len__(self) -> int:
        with self._guard():
            return int(self._db.execute("SELECT COUNT(*) FROM clips").fetchone()[0])

    def close(self) -> None:
        """Close the database and release the run directory's lock."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db, self.path)


class _SqliteGuard:
    """Turn SQLite errors (disk full, read-only folder, a damaged file) into :class:`RunDirError` naming the store."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None and isinstance(exc, sqlite3.Error):
            raise RunDirError(f"{self._path}: the run's result store cannot be used ({exc}). Check free disk space "
                              "and write permission of the run directory, or choose another --out.") from exc
        return False


def _acquire(run_dir: Path) -> FileLock:
    """Take the run directory's exclusive lock, or raise :class:`RunDirBusyError` naming its holder."""
    lock = FileLock(str(run_dir / LOCK_NAME), timeout=0)
    owner = run_dir / LOCK_OWNER_NAME
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = owner.read_text(encoding="utf-8").strip()
        except OSError:
            holder = "another process"
        raise RunDirBusyError(f"{run_dir}: this run directory is in use by {holder}. Wait for that run to finish, "
                              "or use another --out.") from None
    except OSError as err:
        raise RunDirError(f"{run_dir}: cannot lock the run directory ({err.strerror}); check its permissions, "
                          "or choose another --out.") from None
    try:
        owner.write_text(f"pid {os.getpid()} on {socket.gethostname()} since "
                         f"{_dt.datetime.now().isoformat(timespec='seconds')}\n", encoding="utf-8")
    except OSError:  # a read-only run directory can still be read; the lock itself is held
        pass
    return lock


class _Transaction:
    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._guard = _SqliteGuard(path)

    def __enter__(self) -> None:
        with self._guard:
            self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        with self._guard:
            if exc_type is None:
                self._db.execute("COMMIT")
                return False
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        return self._guard.__exit__(exc_type, exc, tb)


def _roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))
