"""Durable per-clip results: one SQLite database (WAL mode) per run directory.

Each clip's row is committed in its own transaction as soon as the clip finishes, with
``synchronous=FULL``, so a run killed at any moment (SIGKILL included) keeps every finished clip and
never holds a partial row. A re-run opens the same store, skips the finished clips and computes only
the rest; the run's settings are kept in a ``meta`` table and a re-run with different settings is
refused rather than silently mixing results.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

STORE_NAME = "store.sqlite"


class StoreMismatchError(ValueError):
    """The run directory holds results made with other settings."""


@dataclass(frozen=True)
class ClipRecord:
    """One stored clip: its id, its measurements (column -> raw value) and its error text (or None)."""

    clip_id: str
    values: dict[str, Any]
    error: str | None


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
        meta: the run's settings (metrics, suite, protocol, ...). On an existing store they must equal
            the stored ones, else :class:`StoreMismatchError` names the differing keys.
    """

    def __init__(self, run_dir: str | Path, meta: Mapping[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / STORE_NAME
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS clips (clip_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, "
            "values_json TEXT NOT NULL, error TEXT)"
        )
        if meta is not None:
            self._check_or_write_meta(meta)

    # -- settings ---------------------------------------------------------------------------
    def _check_or_write_meta(self, meta: Mapping[str, Any]) -> None:
        stored = self.meta()
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
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    # -- rows -------------------------------------------------------------------------------
    def put(self, clip_id: str, values: Mapping[str, Any], error: str | None = None) -> None:
        """Store one finished clip durably (replaces an earlier row of the same clip)."""
        with self._transaction():
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM clips").fetchone()[0]
            self._db.execute(
                "INSERT OR REPLACE INTO clips (clip_id, seq, values_json, error) VALUES (?, ?, ?, ?)",
                (clip_id, seq, _encode(values), error),
            )

    def finished_ids(self, include_failed: bool = True) -> set[str]:
        """Ids of stored clips (optionally without the failed ones, so that they are retried)."""
        query = "SELECT clip_id FROM clips" + ("" if include_failed else " WHERE error IS NULL")
        return {row[0] for row in self._db.execute(query)}

    def records(self) -> Iterator[ClipRecord]:
        """All stored clips, sorted by clip id (a deterministic order, whatever the finishing order)."""
        for clip_id, values_json, error in self._db.execute(
            "SELECT clip_id, values_json, error FROM clips ORDER BY clip_id"
        ):
            yield ClipRecord(clip_id, _decode(values_json), error)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM clips").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def _roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))
