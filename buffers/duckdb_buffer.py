"""The local store-and-forward buffer: append-only logs per stream in two DuckDB files.

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

A DuckDB connection is not thread-safe. `DuckDBBuffer` uses one connection for telemetry,
cursors and housekeeping (one thread), and a cursor of it for records, always under
`_records_lock`. `AsyncBuffer` runs telemetry work on one thread and record appends and reads
on another, so neither waits for the other.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import structlog

from linetap.buffers.integrity import GENESIS, record_hash
from linetap.buffers.records import Event, StoredRecord
from linetap.drivers.samples import TELEMETRY_SCHEMA, now_us

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
_TELEMETRY_COLUMNS = ", ".join(f.name for f in TELEMETRY_SCHEMA)
_RECORD_COLUMNS = ["seq", "id", "recorded_at", "body", "prev_hash", "hash"]


class BufferError(Exception):
    """The buffer cannot be used; the message says what to do."""


class BufferCorrupt(BufferError):
    """The file exists but cannot be opened as a linetap buffer."""


class BufferDamaged(BufferCorrupt):
    """DuckDB found damage while the agent ran (a block that fails its checksum, a torn page):
    the agent stops in order, keeps what it holds in memory and copies of the files."""


class BufferWriteFailed(BufferError):
    """A commit failed for a reason outside the data (disk full, read-only or vanished folder):
    nothing of it was written, the buffer is still usable, the same write can be tried again.
    `cause` is one of disk_full, read_only, permission_denied, folder_missing, write_failed."""

    def __init__(self, message: str, cause: str, records: tuple[list[StoredRecord], list[StoredRecord]] = ([], [])):
        super().__init__(message)
        self.cause = cause
        self.records = records  # append_records: what was chained and is held in memory (events, units)


@dataclass(frozen=True, slots=True)
class AppendResult:
    telemetry: tuple[int, int] | None  # first and last seq assigned, or None
    events: list[StoredRecord]
    units: list[StoredRecord]


@dataclass
class CapResult:
    purged: int = 0  # delivered rows deleted early
    gaps: list[Event] = field(default_factory=list)  # telemetry dropped, as written to `events`
    over_cap: bool = False  # only unit records and events left, still over the cap


@dataclass(frozen=True, slots=True)
class StreamStats:
    stream: str
    last_seq: int
    cursor: int
    pending: int  # rows after the cursor
    oldest_pending_at: int | None  # microseconds since epoch (agent time of the oldest unsent row)


def records_path(path: Path) -> Path:
    """The records file beside a buffer file."""
    return path.with_name(path.name + ".records")


class DuckDBBuffer:
    """The buffer's two files. Record methods (`append_records`, `read_records`) may run on a
    second thread; everything else on the thread that created it."""

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
            self._records_lock = threading.Lock()
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

    # -- appending ------------------------------------------------------------------------

    def append(
        self,
        telemetry: pa.Table | None = None,
        events: Sequence[Event] = (),
        units: Sequence[dict[str, Any]] = (),
    ) -> AppendResult:
        """The records (one transaction), then the telemetry (another); durable when this returns."""
        stored_events, stored_units = self.append_records(events, units) if events or units else ([], [])
        span = self.append_telemetry(telemetry) if telemetry is not None else None
        return AppendResult(span, stored_events, stored_units)

    def append_telemetry(self, telemetry: pa.Table) -> tuple[int, int] | None:
        """Samples in one transaction; the (first, last) seq they got."""
        if not telemetry.num_rows:
            return None
        con = self._con
        first = self._last["telemetry"][0] + 1
        last = first + telemetry.num_rows - 1
        seq = pa.array(np.arange(first, last + 1, dtype=np.int64))
        batch = telemetry.select([f.name for f in TELEMETRY_SCHEMA]).add_column(0, "seq", seq)
        try:
            con.execute("BEGIN")  # inside the try: see _commit_held
            _insert_arrow(con, "telemetry", batch)
            # a plain UPDATE of the row made at open: an upsert costs ~5 ms of CPU per commit
            con.execute("UPDATE streams SET last_seq = ? WHERE stream = 'telemetry'", [last])
            con.execute("COMMIT")
        except BaseException as exc:
            _rollback(con)
            raise self._write_failure(exc, self.path) from exc
        self._last["telemetry"] = (last, GENESIS)
        return first, last

    def skip_telemetry(self, count: int) -> tuple[int, int]:
        """Reserve `count` telemetry seqs that will never hold a row (samples the agent had to drop,
        named by a gap event with this range). Stored with the next telemetry commit; and at open
        the last seq is never below the end of a gap event, so a committed gap's seqs are never reused."""
        first = self._last["telemetry"][0] + 1
        last = first + count - 1
        self._last["telemetry"] = (last, GENESIS)
        return first, last

    def _write_failure(self, exc: BaseException, path: Path) -> BaseException:
        """A failed commit as BufferWriteFailed when the cause is the file system; anything else as it is."""
        if not isinstance(exc, duckdb.Error):
            return exc
        text = str(exc)
        cause = next((cause for marker, cause in _WRITE_FAILURES if marker in text), None)
        if cause is None:
            if not isinstance(exc, duckdb.IOException | duckdb.TransactionException) or _is_damage(exc):
                return exc
            cause = "write_failed"
        return BufferWriteFailed(f"cannot write buffer {path}: {_first_line(exc)}", cause)

    def append_records(self, events: Sequence[Event] = (), units: Sequence[dict[str, Any]] = ()
                       ) -> tuple[list[StoredRecord], list[StoredRecord]]:
        """Events and unit records in one transaction of the records file, each linked into its
        stream's hash chain. Returns what was stored: (events, units).

        The records get their seq, id and hash before the commit. If the commit fails for a reason
        outside the data (BufferWriteFailed: a full disk), they are held in memory with those
        values, readable through `read_records`, and committed first by the next call (an empty
        call just retries): unit records and events are never dropped."""
        with self._records_lock:
            recorded_at = now_us()
            stored: dict[str, list[StoredRecord]] = {"events": [], "units": []}
            for stream, items in (("events", [e.body() for e in events]), ("units", list(units))):
                seq_no, prev = self._last[stream]
                for body in items:
                    seq_no += 1
                    rid = f"{self.agent_id}/{stream}/{seq_no}"
                    h = record_hash(prev, id=rid, stream=stream, seq=seq_no, recorded_at=recorded_at, body=body)
                    stored[stream].append(StoredRecord(stream, seq_no, rid, recorded_at, body, prev, h))
                    prev = h
                self._last[stream] = (seq_no, prev)
                self._held[stream].extend(stored[stream])
            if any(self._held.values()):
                try:
                    self._commit_held()
                except BufferWriteFailed as exc:
                    exc.records = (stored["events"], stored["units"])
                    raise
            return stored["events"], stored["units"]

    def _commit_held(self) -> None:
        con = self._records
        try:
            # inside the try: after a commit the disk refused, the transaction may still be aborted;
            # BEGIN then fails, is rolled back below and retried later, never kills the writer
            con.execute("BEGIN")
            for stream in RECORD_STREAMS:
                held = self._held[stream]
                if not held:
                    continue
                rows = [(r.seq, r.id, r.recorded_at, orjson.dumps(r.body).decode(), r.prev_hash, r.hash) for r in held]
                _insert_arrow(con, f"{RECORDS_DB}.{stream}", pa.table(list(zip(*rows, strict=True)), names=_RECORD_COLUMNS))
                con.execute(f"UPDATE {RECORDS_DB}.streams SET last_seq = ?, last_hash = ? WHERE stream = ?",
                            [held[-1].seq, held[-1].hash, stream])
            _track_open_units(con, self._held["events"], self._held["units"])
            con.execute("COMMIT")
        except BaseException as exc:
            _rollback(con)
            raise self._write_failure(exc, self.records_path) from exc
        for stream in RECORD_STREAMS:
            self._held[stream].clear()

    def held_records(self) -> int:
        """Events and unit records chained but not yet committed (the disk refused them)."""
        return sum(len(h) for h in self._held.values())

    # -- reading --------------------------------------------------------------------------

    def last_seq(self, stream: str) -> int:
        return self._last[stream][0]

    def last_hash(self, stream: str) -> str:
        return self._last[stream][1]

    def read_telemetry(self, after_seq: int, limit: int, align: int = 1) -> pa.Table:
        """Rows with seq > after_seq, in seq order: `seq` plus the TELEMETRY_SCHEMA columns.

        Seqs are contiguous except where the size cap or retention deleted rows, so the read is a
        bounded range (an unbounded `seq > x ORDER BY seq LIMIT n` sorts the whole backlog: 175 ms
        per 20k rows with 5M rows ahead, against ~5 ms). Fewer rows than `limit` may come back
        where rows were deleted; an empty range skips to the next seq that exists.

        The range ends on a multiple of `align` (the telemetry batch: a message bucket ends
        there) or at the last row that exists, never elsewhere, so a read never cuts a message
        that the rows alone would not cut (`payload.message_spans`). With `limit` < `align` it
        still ends on the next multiple, so it always makes progress."""
        query = f"SELECT seq, {_TELEMETRY_COLUMNS} FROM telemetry WHERE seq > ? AND seq <= ? ORDER BY seq"

        def end_of(after: int) -> int:
            end = (after + limit) // align * align
            return end if end > after else (after // align + 1) * align

        end = end_of(after_seq)
        table = self._con.sql(query, params=[after_seq, end]).to_arrow_table()
        if table.num_rows == 0 and end < self._last["telemetry"][0]:
            nxt = self._con.execute("SELECT min(seq) FROM telemetry WHERE seq > ?", [after_seq]).fetchall()[0][0]
            if nxt is not None:
                table = self._con.sql(query, params=[nxt - 1, end_of(nxt - 1)]).to_arrow_table()
        if table.num_rows:
            self._handed_out = max(self._handed_out, table.column("seq")[-1].as_py())
        return table

    def open_units(self) -> list[dict[str, Any]]:
        """Bodies of the `unit_started` events that have no unit record yet, oldest first."""
        with self._records_lock:
            rows = self._records.execute(f"SELECT body FROM {RECORDS_DB}.open_units ORDER BY seq").fetchall()
        return [orjson.loads(b) for (b,) in rows]

    def last_reading(self, device: str, tail: int = 200_000) -> int | None:
        """When the newest committed sample of `device` among the last `tail` was taken (source time
        when the device gives one, else agent time), us since the epoch; None if none there."""
        return self._con.execute(
            "SELECT max(coalesce(source_ts, agent_ts)) FROM telemetry WHERE seq > ? AND device = ?",
            [self._last["telemetry"][0] - tail, device]).fetchall()[0][0]

    def read_records(self, stream: str, after_seq: int, limit: int) -> list[StoredRecord]:
        _check_record_stream(stream)
        with self._records_lock:
            rows = self._records.execute(
                f"SELECT seq, id, recorded_at, body, prev_hash, hash FROM {RECORDS_DB}.{stream} "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                [after_seq, limit],
            ).fetchall()
            held = [r for r in self._held[stream] if r.seq > after_seq]  # newer than every committed row
        stored = [StoredRecord(stream, s, i, r, orjson.loads(b), p, h) for s, i, r, b, p, h in rows]
        return stored + held[:limit - len(stored)]

    def export_query(self, stream: str, from_seq: int | None = None, to_seq: int | None = None,
                     since_us: int | None = None, until_us: int | None = None) -> tuple[str, list[Any]]:
        """SQL (and parameters) selecting a range of a stream in seq order, for export."""
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r} (expected one of {', '.join(STREAMS)})")
        ts_col = "agent_ts" if stream == "telemetry" else "recorded_at"
        where, params = ["TRUE"], []
        for cond, value in (("seq >= ?", from_seq), ("seq <= ?", to_seq), (f"{ts_col} >= ?", since_us),
                            (f"{ts_col} < ?", until_us)):
            if value is not None:
                where.append(cond)
                params.append(value)
        return f"SELECT * FROM {stream} WHERE {' AND '.join(where)} ORDER BY seq", params

    def write_file(self, query: str, params: list[Any], path: Path, fmt: str) -> int:
        """Write a query's rows as csv or parquet; returns the row count."""
        rel = self._con.sql(query, params=params)
        if fmt == "csv":
            rel.write_csv(str(path))
        elif fmt == "parquet":
            rel.write_parquet(str(path))
        else:
            raise ValueError(f"unknown format {fmt!r}")
        return self._con.sql(f"SELECT count(*) FROM ({query})", params=params).fetchall()[0][0]

    def query_arrow(self, query: str, params: list[Any]) -> pa.Table:
        return self._con.sql(query, params=params).to_arrow_table()

    # -- cursors --------------------------------------------------------------------------

    def cursor(self, sink: str, stream: str) -> int:
        rows = self._con.execute("SELECT seq FROM cursors WHERE sink = ? AND stream = ?", [sink, stream]).fetchall()
        return rows[0][0] if rows else 0

    def ack(self, sink: str, stream: str, seq: int) -> None:
        """Acknowledge everything up to `seq` for this sink. The cursor never moves back."""
        if seq > self._last[stream][0]:
            raise ValueError(f"cannot acknowledge {stream} seq {seq}: the last seq is {self._last[stream][0]}")
        held = self._held.get(stream)
        if held:  # a record published from memory is acknowledged in the file only once it is committed
            seq = min(seq, held[0].seq - 1)
        ts = now_us()
        try:
            updated = self._con.execute(
                "UPDATE cursors SET seq = greatest(seq, ?), updated_at = ? WHERE sink = ? AND stream = ?",
                [seq, ts, sink, stream],
            ).fetchall()[0][0]
            if not updated:  # the first ack of this sink and stream (an upsert costs 3x the CPU)
                self._con.execute("INSERT INTO cursors VALUES (?, ?, ?, ?)", [sink, stream, seq, ts])
        except duckdb.Error as exc:
            raise self._write_failure(exc, self.path) from exc

    # -- housekeeping ---------------------------------------------------------------------

    def stats(self, sink: str = "mqtt") -> list[StreamStats]:
        out = []
        for stream in STREAMS:
            cur = self.cursor(sink, stream)
            ts_col = "agent_ts" if stream == "telemetry" else "recorded_at"
            pending, oldest = self._con.execute(
                f"SELECT count(*), min({ts_col}) FROM {stream} WHERE seq > ?", [cur]
            ).fetchall()[0]
            out.append(StreamStats(stream, self._last[stream][0], cur, pending, oldest))
        return out

    def gaps(self) -> tuple[int, int]:
        """(gap events, telemetry samples they say were dropped), over the events still kept."""
        n, dropped = self._con.execute(
            """SELECT count(*), coalesce(sum(json_extract(body, '$.count')::BIGINT), 0) FROM events
               WHERE body LIKE '%"kind":"gap"%'""").fetchall()[0]
        return n, dropped

    def purge_delivered(self, sink: str, older_than_us: int) -> dict[str, int]:
        """Delete rows the sink acknowledged that are older than the retention limit, in bulk."""
        try:
            return self._purge_delivered(sink, older_than_us)
        except duckdb.Error as exc:
            raise self._write_failure(exc, self.path) from exc

    def _purge_delivered(self, sink: str, older_than_us: int) -> dict[str, int]:
        deleted = {}
        for stream in STREAMS:
            cur = self.cursor(sink, stream)
            if stream == "telemetry":
                n = self._con.execute("DELETE FROM telemetry WHERE seq <= ? AND agent_ts < ?",
                                      [cur, older_than_us]).fetchall()[0][0]
            else:
                with self._records_lock:  # every write to the records file goes through its connection
                    n = self._records.execute(f"DELETE FROM {RECORDS_DB}.{stream} WHERE seq <= ? AND recorded_at < ?",
                                              [cur, older_than_us]).fetchall()[0][0]
            deleted[stream] = n
        return deleted

    def used_bytes(self) -> int:
        """Bytes the data occupies in both files: used blocks plus the WALs (a file never shrinks)."""
        used = sum(row[2] * row[4] for row in self._con.execute("PRAGMA database_size").fetchall())
        for path in (self.path, self.records_path):
            wal = path.with_name(path.name + ".wal")
            used += wal.stat().st_size if wal.exists() else 0
        return used

    def enforce_cap(self, max_bytes: int, sink: str, chunk: int = 50_000) -> CapResult:
        """Keep the buffer under `max_bytes`: first delivered rows go, then the oldest unsent
        telemetry, each drop recorded as a `gap` event in the same transaction. Unit records and
        events are never dropped: if they alone exceed the cap, `over_cap` stays true."""
        if self.used_bytes() <= max_bytes:
            return CapResult()
        try:
            return self._enforce_cap(max_bytes, sink, chunk)
        except duckdb.Error as exc:
            raise self._write_failure(exc, self.path) from exc

    def _enforce_cap(self, max_bytes: int, sink: str, chunk: int) -> CapResult:
        result = CapResult()
        result.purged = sum(self._purge_delivered(sink, older_than_us=2**62).values())
        self._checkpoint()
        while self.used_bytes() > max_bytes:
            pending = self._con.execute("SELECT count(*) FROM telemetry WHERE seq > ?",
                                        [self._droppable_after(sink)]).fetchall()[0][0]
            if pending == 0:
                result.over_cap = True
                break
            n = min(pending, max(chunk, pending // 10))
            gap = self._drop_oldest_telemetry_with_gap(sink, n, max_bytes)
            result.gaps.append(gap)
            self._checkpoint()
        return result

    def _droppable_after(self, sink: str) -> int:
        """The size cap drops only telemetry after this seq: neither what the sink acknowledged
        nor what a reader (the forwarder) already took and may be sending right now."""
        return max(self.cursor(sink, "telemetry"), self._handed_out)

    def _drop_oldest_telemetry_with_gap(self, sink: str, n: int, max_bytes: int) -> Event:
        """Delete the n oldest unsent samples. Their gap event is committed first (the two files
        cannot share a transaction); a crash in between leaves the delete to `_finish_gaps`."""
        cur = self._droppable_after(sink)
        first, last, count, ts0, ts1 = self._con.execute(
            "SELECT min(seq), max(seq), count(*), min(agent_ts), max(agent_ts) FROM "
            "(SELECT seq, agent_ts FROM telemetry WHERE seq > ? ORDER BY seq LIMIT ?)", [cur, n]).fetchall()[0]
        gap = Event("gap", now_us(), data={
            "stream": "telemetry", "seq_first": first, "seq_last": last, "count": count,
            "ts_first": ts0, "ts_last": ts1, "cause": "size_cap",
            "reason": f"buffer size cap ({max_bytes} bytes) reached: oldest unsent telemetry dropped"})
        self.append_records([gap])
        self._con.execute("DELETE FROM telemetry WHERE seq BETWEEN ? AND ?", [first, last]).fetchall()
        return gap

    def _checkpoint(self) -> None:
        self._con.execute("CHECKPOINT").fetchall()
        with self._records_lock:
            self._records.execute(f"CHECKPOINT {RECORDS_DB}").fetchall()

    def file_size(self) -> int:
        size = 0
        for path in (self.path, self.records_path):
            wal = path.with_name(path.name + ".wal")
            size += path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        return size

    def close(self) -> None:
        try:
            self._checkpoint()
        except duckdb.Error:
            pass  # the WALs still hold everything committed
        self._records.close()
        self._con.close()


# DuckDB's words for a file whose bytes are wrong (a torn write, a scribbled block, not a
# database at all). Every other error at open is the environment's or ours, never damage.
_DAMAGE_MARKERS = ("corrupt", "checksum", "not a valid duckdb", "replaying wal", "replay wal", "wal file",
                   "could not read enough bytes", "truncated", "serializ", "invalid block", "magic")


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


# The file system's words (strerror) for a write it refused, and the alarm each one raises.
_WRITE_FAILURES = (("No space left", "disk_full"), ("Disk quota exceeded", "disk_full"),
                   ("Read-only file system", "read_only"), ("Permission denied", "permission_denied"),
                   ("No such file", "folder_missing"))


def _is_damage(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in _DAMAGE_MARKERS)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


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


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Undo a failed transaction without hiding why it failed: a COMMIT that failed (e.g. ENOSPC
    while writing the WAL) has already ended the transaction, and ROLLBACK then raises."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass


def _insert_arrow(con: duckdb.DuckDBPyConnection, table_name: str, batch: pa.Table) -> None:
    con.register("_linetap_batch", batch)
    try:
        con.execute(f"INSERT INTO {table_name} SELECT * FROM _linetap_batch")
    finally:
        con.unregister("_linetap_batch")


def _track_open_units(con, events: list[StoredRecord], units: list[StoredRecord]) -> None:
    """In the append's transaction: a `unit_started` event opens a unit, its unit record closes it."""
    for rec in events:
        if rec.body.get("kind") == "unit_started":
            con.execute(f"INSERT INTO {RECORDS_DB}.open_units VALUES (?, ?, ?, ?)",
                        [rec.body["station"], rec.body["started_at"], rec.seq, orjson.dumps(rec.body).decode()])
    for rec in units:
        if rec.body.get("station") is not None and rec.body.get("started_at") is not None:
            con.execute(f"DELETE FROM {RECORDS_DB}.open_units WHERE station = ? AND started_at = ?",
                        [rec.body["station"], rec.body["started_at"]]).fetchall()


def _check_record_stream(stream: str) -> None:
    if stream not in RECORD_STREAMS:
        raise ValueError(f"unknown record stream {stream!r} (expected one of {RECORD_STREAMS})")


class AsyncBuffer:
    """The buffer for asyncio code: telemetry and housekeeping run on one thread, record appends
    and reads on another, so an event never waits for a telemetry insert or checkpoint."""

    def __init__(self, executor: ThreadPoolExecutor, buffer: DuckDBBuffer) -> None:
        self._executor = executor
        self._records_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="linetap-records")
        self._buffer = buffer
        self.path = buffer.path
        self.agent_id = buffer.agent_id

    @classmethod
    async def open(cls, path: str | Path, agent_id: str, *, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> AsyncBuffer:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="linetap-buffer")
        loop = asyncio.get_running_loop()
        try:
            buffer = await loop.run_in_executor(
                executor, functools.partial(DuckDBBuffer, path, agent_id, memory_limit=memory_limit))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, buffer)

    async def _call(self, fn, *args):
        return await self._run(self._executor, fn, *args)

    async def _call_records(self, fn, *args):
        return await self._run(self._records_executor, fn, *args)

    async def _run(self, executor: ThreadPoolExecutor, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except duckdb.Error as exc:
            if _is_damage(exc):  # at any time, not only at open: the agent must stop in order
                raise BufferDamaged(f"buffer {self.path} is damaged: {_first_line(exc)}") from None
            # A read spills to `<buffer>.tmp` beside the buffer: on a full disk a read fails the way a
            # commit does, and is an operating state like it (found by the soak: a records read on a
            # full disk killed the forwarder)
            text = str(exc)
            cause = next((cause for marker, cause in _WRITE_FAILURES if marker in text), None)
            if cause is not None and isinstance(exc, duckdb.IOException):
                raise BufferWriteFailed(f"cannot use buffer {self.path}: {_first_line(exc)}", cause) from None
            raise

    async def append(self, telemetry: pa.Table | None = None, events: Sequence[Event] = (),
                     units: Sequence[dict[str, Any]] = ()) -> AppendResult:
        stored_events, stored_units = [], []
        if events or units:
            stored_events, stored_units = await self._call_records(self._buffer.append_records, events, units)
        span = await self._call(self._buffer.append_telemetry, telemetry) if telemetry is not None else None
        return AppendResult(span, stored_events, stored_units)

    async def skip_telemetry(self, count: int) -> tuple[int, int]:
        return await self._call(self._buffer.skip_telemetry, count)

    async def retry_records(self) -> None:
        """Commit the events and unit records a failed commit left held in memory."""
        await self._call_records(self._buffer.append_records)

    def held_records(self) -> int:
        return self._buffer.held_records()

    def held(self) -> list[StoredRecord]:
        """The chained records a failed commit left in memory (for a sidecar file)."""
        return [r for stream in RECORD_STREAMS for r in self._buffer._held[stream]]

    async def read_telemetry(self, after_seq: int, limit: int, align: int = 1) -> pa.Table:
        return await self._call(self._buffer.read_telemetry, after_seq, limit, align)

    async def open_units(self) -> list[dict[str, Any]]:
        return await self._call_records(self._buffer.open_units)

    async def last_reading(self, device: str) -> int | None:
        return await self._call(self._buffer.last_reading, device)

    async def read_records(self, stream: str, after_seq: int, limit: int) -> list[StoredRecord]:
        return await self._call_records(self._buffer.read_records, stream, after_seq, limit)

    async def cursor(self, sink: str, stream: str) -> int:
        return await self._call(self._buffer.cursor, sink, stream)

    async def ack(self, sink: str, stream: str, seq: int) -> None:
        await self._call(self._buffer.ack, sink, stream, seq)

    async def last_seq(self, stream: str) -> int:
        # Read without a thread hop: a plain dict lookup of an int is atomic under the GIL.
        return self._buffer.last_seq(stream)

    async def stats(self, sink: str = "mqtt") -> list[StreamStats]:
        return await self._call(self._buffer.stats, sink)

    async def gaps(self) -> tuple[int, int]:
        return await self._call(self._buffer.gaps)

    async def purge_delivered(self, sink: str, older_than_us: int) -> dict[str, int]:
        return await self._call(self._buffer.purge_delivered, sink, older_than_us)

    async def enforce_cap(self, max_bytes: int, sink: str) -> CapResult:
        return await self._call(self._buffer.enforce_cap, max_bytes, sink)

    async def file_size(self) -> int:
        return await self._call(self._buffer.file_size)

    async def close(self) -> None:
        try:
            await asyncio.to_thread(self._records_executor.shutdown, wait=True)
            await self._call(self._buffer.close)
        finally:
            self._executor.shutdown(wait=True)
