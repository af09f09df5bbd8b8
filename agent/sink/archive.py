"""`linetap archive`: the sink's records before a date as Parquet files per stream and month, plus a
`manifest.json` (rows, seq ranges and chain heads per agent, SHA-256 of each file); and the check of
such a folder (`linetap verify DIR`). This is how records outlive the line PC and the database for
the retention period: the files need nothing of linetap to be read, and the manifest proves them.

Archiving copies; it deletes nothing from the database.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from linetap.agent.sink.db import Target, from_us, to_us
from linetap.agent.sink.store import record_envelope
from linetap.buffers.verify import verify_lines

ARCHIVE_FORMAT = "linetap.archive/1"
MANIFEST = "manifest.json"
PAGE = 100_000  # rows per query and per Parquet row group: bounded memory for any month

_TS = pa.timestamp("us", tz="UTC")
COLUMNS: dict[str, list[tuple[str, pa.DataType]]] = {
    "units": [("agent", pa.string()), ("seq", pa.int64()), ("id", pa.string()), ("serial", pa.string()),
              ("station", pa.string()), ("device", pa.string()), ("operator", pa.string()), ("lot", pa.string()),
              ("started_at", _TS), ("ended_at", _TS), ("cycle_time", pa.float64()), ("verdict", pa.string()),
              ("config_version", pa.string()), ("recorded_at", pa.int64()), ("body", pa.string()),
              ("prev_hash", pa.string()), ("hash", pa.string()), ("received_at", _TS)],
    "events": [("agent", pa.string()), ("seq", pa.int64()), ("id", pa.string()), ("kind", pa.string()),
               ("serial", pa.string()), ("station", pa.string()), ("ts", _TS), ("recorded_at", pa.int64()),
               ("body", pa.string()), ("prev_hash", pa.string()), ("hash", pa.string()), ("received_at", _TS)],
    "telemetry": [("agent", pa.string()), ("seq", pa.int64()), ("device", pa.string()), ("station", pa.string()),
                  ("tag", pa.string()), ("value", pa.string()), ("quality", pa.string()), ("reason", pa.string()),
                  ("source_ts", _TS), ("agent_ts", _TS)],
}
# the time a row is archived by: when the agent recorded it (records) or read it (telemetry)
_TIME = {"units": "recorded_at", "events": "recorded_at", "telemetry": "agent_ts"}
RECORD_STREAMS = ("events", "units")


class ArchiveError(RuntimeError):
    """The output folder cannot be used (exit 3)."""


def _month_starts(first: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
    start = datetime(first.year, first.month, 1, tzinfo=UTC)
    while start < end:
        nxt = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
        yield start, min(nxt, end)
        start = nxt


def _bound(stream: str, t: datetime) -> Any:
    return to_us(t) if _TIME[stream] == "recorded_at" else t


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class _AgentPart:
    rows: int = 0
    seq_first: int | None = None
    seq_last: int | None = None
    first_prev_hash: str | None = None
    last_hash: str | None = None

    def add(self, table: pa.Table, records: bool) -> None:
        seqs = table.column("seq").to_pylist()
        self.rows += len(seqs)
        self.seq_first = seqs[0] if self.seq_first is None else self.seq_first
        self.seq_last = seqs[-1]
        if records:
            self.first_prev_hash = self.first_prev_hash or table.column("prev_hash")[0].as_py()
            self.last_hash = table.column("hash")[-1].as_py()


def _pages(target: Target, stream: str, lo: Any, hi: Any) -> Iterator[pa.Table]:
    """The rows of [lo, hi) in (agent, seq) order, PAGE at a time (keyset pagination)."""
    names = [n for n, _ in COLUMNS[stream]]
    schema = pa.schema(COLUMNS[stream])
    time_col = _TIME[stream]
    after: tuple[str, int] = ("", -1)
    while True:
        rows = target.execute(
            f"SELECT {', '.join(names)} FROM {stream} WHERE {time_col} >= ? AND {time_col} < ? "
            "AND (agent > ? OR (agent = ? AND seq > ?)) ORDER BY agent, seq LIMIT ?",
            (lo, hi, after[0], after[0], after[1], PAGE))
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        yield pa.table([pa.array(col, type=t) for col, (_, t) in zip(columns, COLUMNS[stream], strict=True)],
                       schema=schema)
        after = (rows[-1][0], rows[-1][1])
        if len(rows) < PAGE:
            return


def archive(target: Target, before: datetime, out: Path, where: str) -> dict[str, Any]:
    """Write every stream's rows older than `before` to `out`; returns the manifest (also written)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ArchiveError(f"cannot create {out}: {err.strerror or err}") from None
    if (out / MANIFEST).exists():
        raise ArchiveError(f"{out} already holds an archive ({MANIFEST}): give an empty or new folder")
    files = []
    for stream in ("units", "events", "telemetry"):
        time_col = _TIME[stream]
        (first,) = target.execute(f"SELECT min({time_col}) FROM {stream} WHERE {time_col} < ?",
                                  (_bound(stream, before),))[0]
        if first is None:
            continue
        first_dt = from_us(first) if time_col == "recorded_at" else first
        for lo, hi in _month_starts(first_dt, before):
            name = f"{stream}-{lo:%Y-%m}.parquet"
            path = out / name
            agents: dict[str, _AgentPart] = {}
            writer = None
            try:
                for table in _pages(target, stream, _bound(stream, lo), _bound(stream, hi)):
                    if writer is None:
                        writer = pq.ParquetWriter(path, table.schema, compression="zstd")
                    writer.write_table(table)
                    for agent in table.column("agent").unique().to_pylist():
                        part = table.filter(pc.equal(table.column("agent"), agent))
                        agents.setdefault(agent, _AgentPart()).add(part, stream in RECORD_STREAMS)
            except OSError as err:
                raise ArchiveError(f"cannot write {path}: {err.strerror or err}") from None
            finally:
                if writer is not None:
                    writer.close()
            if writer is None:
                continue
            files.append({"file": name, "stream": stream, "month": f"{lo:%Y-%m}",
                          "rows": sum(a.rows for a in agents.values()), "sha256": _sha256(path),
                          "agents": {a: {k: v for k, v in vars(p).items() if v is not None}
                                     for a, p in sorted(agents.items())}})
    manifest = {"format": ARCHIVE_FORMAT, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "before": before.isoformat(), "source": where, "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass
class ArchiveReport:
    findings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # stream -> rows checked

    @property
    def ok(self) -> bool:
        return not self.findings


def verify_archive(folder: Path) -> ArchiveReport:
    """Every file as the manifest says (SHA-256, rows, seq ranges, chain heads), and every unit record
    and event chain intact and without holes across the months, per agent."""
    report = ArchiveReport()
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("format") != ARCHIVE_FORMAT:
        report.findings.append(f"{MANIFEST}: format {manifest.get('format')!r}, expected {ARCHIVE_FORMAT}")
        return report
    lines: list[tuple[str, bytes]] = []
    for entry in sorted(manifest["files"], key=lambda e: (e["stream"], e["month"])):
        path = folder / entry["file"]
        if not path.exists():
            report.findings.append(f"{entry['file']}: missing")
            continue
        if _sha256(path) != entry["sha256"]:
            report.findings.append(f"{entry['file']}: SHA-256 differs from the manifest (the file was changed)")
            continue
        table = pq.read_table(path)
        if table.num_rows != entry["rows"]:
            report.findings.append(f"{entry['file']}: {table.num_rows} rows, the manifest says {entry['rows']}")
        stream = entry["stream"]
        report.counts[stream] = report.counts.get(stream, 0) + table.num_rows
        for agent, expected in entry["agents"].items():
            part = _AgentPart()
            rows = table.filter(pc.equal(table.column("agent"), agent))
            if rows.num_rows:
                part.add(rows, stream in RECORD_STREAMS)
            got = {k: v for k, v in vars(part).items() if v is not None}
            if got != expected:
                report.findings.append(f"{entry['file']}: {agent}: {got} differs from the manifest's {expected}")
        if stream in RECORD_STREAMS:
            cols = table.select(["agent", "seq", "id", "recorded_at", "body", "prev_hash", "hash"]).to_pylist()
            for r in cols:
                env = record_envelope(r["agent"], stream, r["seq"],
                                      (r["id"], r["recorded_at"], r["body"], r["prev_hash"], r["hash"]))
                lines.append((f"{entry['file']}:{r['agent']}/{stream}/{r['seq']}", orjson.dumps(env)))
    chains = verify_lines(lines)
    report.findings.extend(str(f) for f in chains.findings)
    return report


def render(report: ArchiveReport) -> str:
    lines = [f"{stream}: {n} rows" for stream, n in sorted(report.counts.items())]
    lines.extend(report.findings)
    lines.append("OK: every file as its manifest says, chains intact" if report.ok
                 else f"FAILED: {len(report.findings)} finding(s)")
    return "\n".join(lines)
