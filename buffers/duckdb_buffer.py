"""The local store-and-forward buffer: append-only logs per stream in two DuckDB files
(what each file holds, and why two: `schema`).

A DuckDB connection is not thread-safe. `DuckDBBuffer` uses one connection for telemetry,
cursors and housekeeping (one thread), and a cursor of it for records, always under
`_records_lock`. `AsyncBuffer` runs telemetry work on one thread and record appends and reads
on another, so neither waits for the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa

from linetap.buffers.errors import _WRITE_FAILURES, BufferWriteFailed, _first_line, _is_damage
from linetap.buffers.integrity import GENESIS, record_hash
from linetap.buffers.records import Event, StoredRecord
from linetap.buffers.schema import BUFFER_DB, RECORD_STREAMS, RECORDS_DB, STREAMS, BufferFiles
from linetap.drivers.samples import TELEMETRY_SCHEMA, VType, now_us

# DuckDB 2: a result not fetched to the end blocks the connection; every query here uses fetchall().
_TELEMETRY_COLUMNS = ", ".join(f.name for f in TELEMETRY_SCHEMA)
_RECORD_COLUMNS = ["seq", "id", "recorded_at", "body", "prev_hash", "hash"]


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


class DuckDBBuffer(BufferFiles):
    """The buffer's two files. Record methods (`append_records`, `read_records`) may run on a
    second thread; everything else on the thread that created it."""

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
            failure = self._write_failure(exc, self.path)
            if not (isinstance(failure, BufferWriteFailed) and self._landed(con, BUFFER_DB, "telemetry", last)):
                raise failure from exc
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
        """A failed commit as BufferWriteFailed when the cause is the file system or a checkpoint
        that invalidated the database (reattached here, so the same write can be tried again);
        anything else as it is."""
        if not isinstance(exc, duckdb.Error):
            return exc
        text = str(exc)
        if not _is_damage(exc) and self.reattach_invalidated(exc):
            return BufferWriteFailed(f"cannot write buffer {path}: {_first_line(exc)}", "write_failed")
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

    @staticmethod
    def _landed(con: duckdb.DuckDBPyConnection, database: str, stream: str, seq: int) -> bool:
        """After a reattach: whether the commit that reported failure made it into the WAL anyway
        (its stream head says `seq`), so it is not written twice. `con`: the calling thread's own."""
        try:
            return con.execute(f"SELECT last_seq FROM {database}.streams WHERE stream = ?",
                               [stream]).fetchall() == [(seq,)]
        except duckdb.Error:
            return False

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
            failure = self._write_failure(exc, self.records_path)
            landed = isinstance(failure, BufferWriteFailed) and all(
                self._landed(con, RECORDS_DB, stream, held[-1].seq) for stream in RECORD_STREAMS if (held := self._held[stream]))
            if not landed:
                raise failure from exc
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
        columns = "*"
        if stream == "telemetry":
            # a float32 is stored widened exactly; an export shows the float32's shortest decimal
            # (1.743, not 1.7430000305175781), the value the device holds, as the JSON messages do
            columns = (f"* REPLACE (CASE WHEN vtype = {int(VType.FLOAT32)} THEN "
                       "CAST(CAST(CAST(num AS FLOAT) AS VARCHAR) AS DOUBLE) ELSE num END AS num)")
        return f"SELECT {columns} FROM {stream} WHERE {' AND '.join(where)} ORDER BY seq", params

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
        try:
            if self.used_bytes() <= max_bytes:
                return CapResult()
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
        self._admin.close()
        self._records.close()
        self._con.close()


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
