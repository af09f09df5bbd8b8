"""The buffer's two DuckDB files: what they hold, and opening them (connection, identity, migrations).

The buffer file (`buffer.path`) holds
- `telemetry`: one row per sample (columnar appends from Arrow batches);
- `streams`: last seq of telemetry; `cursors`: one row per (sink, stream), the highest seq
  the sink has acknowledged; `meta`: the buffer's identity.
Its records file (`<buffer.path>.records`, attached as `linetap_records`) holds
- `units`, `events`: one row per record, with the hash chain; `streams`: their last seq and hash;
  `open_units`: the `unit_started` events whose unit record is not written yet (a row is added
  and removed in the transactions of that event and that record), read at the next start.
A `streams` row is updated in the same transaction as its append, so seq never repeats, even
after retention deleted every row.

Why two files: DuckDB checkpoints a database when its WAL is large, and while it does (200-300 ms
for the telemetry of a busy line, every few seconds) no other commit to that database finishes.
Events and unit records live in their own database, so a non-conformance is never held back
by a telemetry checkpoint.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import duckdb
import structlog

from linetap.buffers.errors import BufferCorrupt, BufferError, _first_line, _is_damage
from linetap.buffers.integrity import GENESIS
from linetap.buffers.records import StoredRecord
from linetap.drivers.samples import now_us

SCHEMA_VERSION = "3"  # 2: events and units in the records file; 3: telemetry.vtype
# Versions this linetap opens and brings up to SCHEMA_VERSION (in one transaction, at open).
_MIGRATIONS = {
    # a version-2 row was written out as a float whatever its type: VType.FLOAT64 keeps its messages
    # byte for byte what they were (a re-send after the upgrade has the same content)
    "2": ["ALTER TABLE telemetry ADD COLUMN vtype UTINYINT DEFAULT 0"],
}
# Both files are attached under fixed names, so no SQL identifier is ever built from a file name
# (a buffer called `demo-buffer.duckdb`, `select.duckdb` or `line 3 – A/1.duckdb` is just a path).
BUFFER_DB = "linetap_buffer"  # the buffer file's name inside the connection
RECORDS_DB = "linetap_records"  # the records file's name inside the connection
_SEARCH_PATH = f"SET search_path = '{BUFFER_DB},{RECORDS_DB}'"  # unqualified names find both files
DEFAULT_MEMORY_LIMIT = 16 * 2**20  # bytes; config: buffer.memory_limit
RECORD_STREAMS = ("events", "units")
STREAMS = ("events", "units", "telemetry")  # forwarding priority, highest first

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS streams (stream VARCHAR PRIMARY KEY, last_seq BIGINT NOT NULL, last_hash VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (sink VARCHAR NOT NULL, stream VARCHAR NOT NULL, seq BIGINT NOT NULL,
                                    updated_at BIGINT NOT NULL, PRIMARY KEY (sink, stream));
CREATE TABLE IF NOT EXISTS telemetry (seq BIGINT NOT NULL, device VARCHAR, tag VARCHAR, num DOUBLE, text VARCHAR,
                                      quality UTINYINT, reason VARCHAR, source_ts BIGINT, agent_ts BIGINT,
                                      vtype UTINYINT DEFAULT 0);
"""
_RECORDS_DDL = f"""
CREATE TABLE IF NOT EXISTS {RECORDS_DB}.meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS {RECORDS_DB}.streams (stream VARCHAR PRIMARY KEY, last_seq BIGINT NOT NULL,
                                                 last_hash VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS {RECORDS_DB}.units (seq BIGINT NOT NULL, id VARCHAR NOT NULL, recorded_at BIGINT NOT NULL,
                                  body VARCHAR NOT NULL, prev_hash VARCHAR NOT NULL, hash VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS {RECORDS_DB}.events (seq BIGINT NOT NULL, id VARCHAR NOT NULL, recorded_at BIGINT NOT NULL,
                                   body VARCHAR NOT NULL, prev_hash VARCHAR NOT NULL, hash VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS {RECORDS_DB}.open_units (station VARCHAR NOT NULL, started_at BIGINT NOT NULL,
                                       seq BIGINT NOT NULL, body VARCHAR NOT NULL);
"""
# DuckDB 2: a result not fetched to the end blocks the connection; every query here uses fetchall().
log = structlog.get_logger("linetap.buffer")


def records_path(path: Path) -> Path:
    """The records file beside a buffer file."""
    return path.with_name(path.name + ".records")


class BufferFiles:
    """The buffer's two files, opened: checked, brought up to SCHEMA_VERSION, the head of each
    stream read. `DuckDBBuffer` adds appending, reading, cursors and housekeeping."""

    def __init__(self, path: str | Path, agent_id: str, *, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        self.path = Path(path)
        self.agent_id = agent_id
        self.records_path = records_path(self.path)
        _check_place(self.path)
        existed = self.path.exists() and self.path.stat().st_size > 0
        # Bounded cache: DuckDB's default (80% of RAM) keeps every block it wrote, so the agent
        # would grow with the file. One thread: batches are small, the other core is the agent's.
        # What the bounded cache spills goes beside the buffer, not into the caller's working folder.
        # All three are set when the connection is made, before the ATTACH: replaying the WAL a
        # kill -9 left behind already spills, and DuckDB refuses to switch the temp directory once
        # it has been used ("Cannot switch temporary directory", found by the 10-minute soak).
        try:
            self._con = duckdb.connect(":memory:", config={
                "memory_limit": f"{int(memory_limit)}B", "threads": 1,
                "temp_directory": str(self.path.with_name(self.path.name + ".tmp"))})
        except duckdb.Error as exc:
            raise BufferError(f"cannot open buffer {self.path}: {_first_line(exc)}") from None
        try:
            self._attach(self.path, BUFFER_DB, "")
            self._con.execute(f"USE {BUFFER_DB}")
            self._con.execute(_DDL)
            initialized = self._con.execute("SELECT count(*) FROM meta").fetchall()[0][0] > 0
        except duckdb.Error as exc:
            self._con.close()
            raise self._open_error(exc) from None
        except BufferError:
            self._con.close()
            raise
        if initialized and not (self.records_path.exists() and self.records_path.stat().st_size > 0):
            self._con.close()
            raise BufferCorrupt(f"buffer {self.path} has no records file {self.records_path} beside it: restore it "
                                "(events and unit records are kept there), or move the buffer away to start a new one")
        try:
            # small blocks: the records file holds little, and 256 KiB blocks would cost ~2 MiB
            self._attach(self.records_path, RECORDS_DB, " (BLOCK_SIZE 16384)")
            self._con.execute(_RECORDS_DDL)
            # identities last: a first start cut off before both files exist simply begins again
            self._check_identity(existed)
            self._check_records_identity()
            self._con.execute(_SEARCH_PATH)
            self._records = self._con.cursor()  # the records thread's connection (same database instance)
            self._records.execute(f"USE {BUFFER_DB}")
            self._records.execute(_SEARCH_PATH)
            self._records_lock = threading.RLock()  # reentrant: a failed records commit reattaches under it
            self._detached: set[str] = set()  # databases DuckDB invalidated, not yet reattached
            # Reattaching needs a connection whose current database is not the invalidated one (such a
            # connection runs nothing) and that no other thread is using: its own, made here, under the lock.
            self._admin = self._con.cursor()
            self._handed_out = 0  # highest telemetry seq read_telemetry returned since open
            self._held: dict[str, list[StoredRecord]] = {s: [] for s in RECORD_STREAMS}  # see append_records
            self._last: dict[str, tuple[int, str]] = {}
            for table, streams in ((f"{BUFFER_DB}.streams", ("telemetry",)), (f"{RECORDS_DB}.streams", RECORD_STREAMS)):
                heads = {s: (q, h) for s, q, h in
                         self._con.execute(f"SELECT stream, last_seq, last_hash FROM {table}").fetchall()}
                for stream in streams:
                    if stream not in heads:  # a row per stream from the start: commits only UPDATE it
                        heads[stream] = (0, GENESIS)
                        self._con.execute(f"INSERT INTO {table} VALUES (?, 0, ?)", [stream, GENESIS])
                    self._last[stream] = heads[stream]
            self._finish_gaps()
            self._after_gaps()
        except duckdb.Error as exc:
            self._con.close()
            raise self._open_error(exc) from None
        except BufferError:
            self._con.close()
            raise

    def _attach(self, path: Path, name: str, options: str) -> None:
        quoted = str(path).replace("'", "''")
        try:
            self._con.execute(f"ATTACH '{quoted}' AS {name}{options}")
        except duckdb.Error as exc:
            text = str(exc).lower()
            if "could not set lock" in text or "conflicting lock" in text or "already attached" in text:
                holder = str(exc).partition("Conflicting lock is held in ")[2].partition(". See")[0]
                raise BufferError(f"buffer {path} is in use by another process{f' ({holder})' if holder else ''}: "
                                  "is the agent already running? Stop it first (`export` and `replay` need the "
                                  "agent stopped), or give this agent its own buffer.path") from None
            raise

    def reattach_pending(self) -> bool:
        return bool(self._detached)

    def reattach_invalidated(self, exc: BaseException) -> bool:
        """DuckDB invalidates a database whose checkpoint failed (it could not pin a block within
        `memory_limit`, or the disk refused it): every later statement on it fails until it is
        detached and attached again, which replays its WAL, so nothing committed is lost. Does that
        for the database `exc` names (and any an earlier attempt left detached); False if there is
        nothing to reattach. Called from either thread, under the records lock."""
        text = str(exc)
        if "has been invalidated" in text:
            self._detached.add(RECORDS_DB if f'"{RECORDS_DB}"' in text else BUFFER_DB)
        elif not self._detached:
            return False
        with self._records_lock:  # no records commit while its database is away
            for name in sorted(self._detached):
                path, options = (self.records_path, " (BLOCK_SIZE 16384)") if name == RECORDS_DB else (self.path, "")
                try:
                    self._admin.execute(f"DETACH DATABASE IF EXISTS {name}")
                    quoted = str(path).replace("'", "''")
                    self._admin.execute(f"ATTACH '{quoted}' AS {name}{options}")
                except duckdb.Error as again:  # e.g. the disk still refuses: the next failed write tries again
                    log.warning("buffer database invalidated by DuckDB, reattaching it failed", path=str(path),
                                error=_first_line(exc), reattach_error=_first_line(again))
                    return True
                self._detached.discard(name)
                log.warning("buffer database reattached after DuckDB invalidated it (its WAL replayed: nothing "
                            "committed is lost)", path=str(path), error=_first_line(exc))
        return True

    def _open_error(self, exc: duckdb.Error) -> BufferError:
        """Damage (the file's bytes are wrong) keeps copies aside; anything else is named as it is."""
        if _is_damage(exc):
            return self._corrupt(exc)
        log.debug("buffer open failed", path=str(self.path), exc_info=exc)
        if isinstance(exc, duckdb.CatalogException | duckdb.BinderException | duckdb.ConstraintException):
            return BufferError(f"buffer {self.path} is a DuckDB database, but not a linetap buffer "
                               f"({_first_line(exc)}): point buffer.path at another file, or move this one away")
        return BufferError(f"cannot open buffer {self.path}: {_first_line(exc)}. Nothing was changed or copied; "
                           "check the path and its folder, or run with logging.level: debug for the details")

    def _corrupt(self, exc: Exception) -> BufferCorrupt:
        # Never start an empty buffer over real data: keep the damaged files for recovery.
        kept = keep_copies(self.path)
        moved = f"; a copy is kept as {' and '.join(map(str, kept))}" if kept else ""
        return BufferCorrupt(
            f"buffer {self.path} is damaged: {_first_line(exc)}{moved}. The agent will not start over a damaged "
            "buffer: restore it from a copy, or move it away to start a new one (its unsent records would be lost)."
        )

    def check(self) -> None:
        """Read every unit record and event, and the telemetry's seq and time columns, once: DuckDB
        verifies each block's checksum as it reads it. Damage raises BufferCorrupt (copies kept)."""
        try:
            for stream in RECORD_STREAMS:
                self._con.execute(f"SELECT count(*), sum(length(body)), sum(length(id) + length(prev_hash) + "
                                  f"length(hash)), sum(seq), sum(recorded_at) FROM {RECORDS_DB}.{stream}").fetchall()
            self._con.execute(f"SELECT * FROM {RECORDS_DB}.open_units").fetchall()
            self._con.execute("SELECT count(*), sum(seq), sum(agent_ts) FROM telemetry").fetchall()
        except duckdb.Error as exc:
            if _is_damage(exc):
                raise self._corrupt(exc) from None
            raise

    def _check_identity(self, existed: bool) -> None:
        rows = dict(self._con.execute("SELECT key, value FROM meta").fetchall())
        if not rows:
            if existed and self._con.execute("SELECT count(*) FROM streams").fetchall()[0][0]:
                raise BufferCorrupt(f"buffer {self.path} has data but no identity")
            self._con.execute(
                "INSERT INTO meta VALUES ('schema_version', ?), ('agent_id', ?), ('created_at', ?)",
                [SCHEMA_VERSION, self.agent_id, str(now_us())],
            )
            return
        version = rows.get("schema_version")
        if version in _MIGRATIONS and rows.get("agent_id") == self.agent_id:
            self._migrate(version)
            version = SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise BufferError(f"buffer {self.path} has schema version {rows.get('schema_version')}, "
                              f"this linetap writes version {SCHEMA_VERSION}: let the linetap that wrote it "
                              "deliver it (or `linetap export` it), then move it away")
        if rows.get("agent_id") != self.agent_id:
            raise BufferError(
                f"buffer {self.path} belongs to agent {rows.get('agent_id')!r}, not {self.agent_id!r}: "
                "record ids would mix. Point buffer.path elsewhere or keep the agent id."
            )

    def _migrate(self, version: str) -> None:
        self._con.execute("BEGIN TRANSACTION")
        try:
            for statement in _MIGRATIONS[version]:
                self._con.execute(statement)
            self._con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [SCHEMA_VERSION])
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        log.info("buffer upgraded", path=str(self.path), schema_from=version, schema_to=SCHEMA_VERSION)

    def _check_records_identity(self) -> None:
        """The records file belongs to this buffer file (the same `created_at`)."""
        created = self._con.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchall()[0][0]
        rows = dict(self._con.execute(f"SELECT key, value FROM {RECORDS_DB}.meta").fetchall())
        if not rows:
            if self._con.execute(f"SELECT count(*) FROM {RECORDS_DB}.streams").fetchall()[0][0]:
                raise BufferCorrupt(f"records file {self.records_path} has data but no identity")
            self._con.execute(f"INSERT INTO {RECORDS_DB}.meta VALUES ('buffer_created_at', ?), ('agent_id', ?)",
                              [created, self.agent_id])
            return
        if rows.get("buffer_created_at") != created or rows.get("agent_id") != self.agent_id:
            raise BufferError(f"records file {self.records_path} belongs to another buffer than {self.path}: "
                              "keep the two files of one buffer together")

    def _finish_gaps(self) -> None:
        """A size-cap drop commits its gap event first, then deletes: finish a delete a crash cut off."""
        ranges = self._con.execute(
            f"""SELECT json_extract(body, '$.seq_first')::BIGINT, json_extract(body, '$.seq_last')::BIGINT
                FROM {RECORDS_DB}.events WHERE body LIKE '%"kind":"gap"%'
                AND coalesce(json_extract_string(body, '$.cause'), 'size_cap') = 'size_cap'""").fetchall()
        for first, last in ranges:
            self._con.execute("DELETE FROM telemetry WHERE seq BETWEEN ? AND ?", [first, last]).fetchall()

    def _after_gaps(self) -> None:
        """Seqs a gap event names are never given to new rows (a drop on a full disk reserves
        them in memory; the gap event may have been committed while the telemetry head was not)."""
        end = self._con.execute(
            f"""SELECT max(json_extract(body, '$.seq_last')::BIGINT) FROM {RECORDS_DB}.events
                WHERE body LIKE '%"kind":"gap"%'""").fetchall()[0][0]
        if end is not None and end > self._last["telemetry"][0]:
            self._last["telemetry"] = (end, GENESIS)


def keep_copies(path: Path) -> list[Path]:
    """Copies of a damaged buffer's files (both databases and their WALs) beside them, for recovery."""
    stamp = time.strftime('%Y%m%dT%H%M%S')
    kept = []
    files = (path, records_path(path))
    for f in (*files, *(f.with_name(f.name + ".wal") for f in files)):
        if f.exists():
            aside = f.with_name(f"{f.name}.corrupt-{stamp}")
            shutil.copy2(f, aside)
            kept.append(aside)
    return kept


def _check_place(path: Path) -> None:
    """The buffer's folder exists (or can be made) and the path is not a folder: say so plainly."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BufferError(f"cannot create the folder of buffer {path}: {exc.strerror or exc} "
                          f"({exc.filename or path.parent}). Check buffer.path and the folder's permissions") from None
    if not path.parent.is_dir():
        raise BufferError(f"buffer {path}: {path.parent} is not a folder. Check buffer.path") from None
    for p in (path, records_path(path)):
        if p.is_dir():
            raise BufferError(f"buffer {p} is a folder, not a file: point buffer.path at a file name "
                              f"(e.g. {p / 'line.duckdb'})") from None
    for p in (path, records_path(path)):
        if p.exists() and not os.access(p, os.R_OK | os.W_OK):
            raise BufferError(f"buffer {p} is not readable and writable by this user: fix its permissions "
                              "(the agent needs read and write)") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise BufferError(f"the folder {path.parent} of buffer {path.name} is not writable by this user: "
                          "fix its permissions (DuckDB writes its WAL beside the file)") from None
