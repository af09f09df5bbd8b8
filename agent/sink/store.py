"""From MQTT payloads to rows: dispatch on the envelope's `schema`, insert once per (agent, seq).

Records already held are skipped (ON CONFLICT DO NOTHING); one whose content differs from the
row held is written to `sink_problems` (`duplicate_differs`, the first delivery is kept). Each
new unit record or event is checked against its neighbours with linetap's own verifier
(`linetap.buffers.verify.verify_lines`) as soon as the predecessor (or successor) is held:
out-of-order arrival across shared-subscription workers is expected, so a link is checked when
the second of its two records lands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from linetap.agent.sink.db import Target, from_us
from linetap.buffers.verify import verify_lines

__all__ = ["Parsed", "Store", "parse_payload", "record_envelope"]

RECORD_COLUMNS = ("id", "recorded_at", "body", "prev_hash", "hash")
TELEMETRY_COLUMNS = ("agent", "seq", "device", "station", "tag", "value", "quality", "reason", "source_ts",
                     "agent_ts")


@dataclass
class Parsed:
    kind: str  # telemetry | units | events | status | control (a replay request) | foreign
    doc: dict[str, Any] | None = None
    reason: str = ""


def parse_payload(payload: bytes) -> Parsed:
    """What a payload is: a linetap record (by its `schema`), the agent's status, or something else."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return Parsed("foreign", reason="not JSON")
    if not isinstance(doc, dict) or not isinstance(doc.get("schema"), str):
        return Parsed("foreign", reason="no linetap `schema` field")
    schema = doc["schema"]
    family = schema.split("/", 1)[0]
    kind = {"linetap.telemetry": "telemetry", "linetap.unit": "units", "linetap.event": "events",
            "linetap.status": "status", "linetap.replay_request": "control"}.get(family)
    if kind is None:
        return Parsed("foreign", reason=f"unknown schema {schema!r}")
    if kind in ("status", "control"):
        return Parsed(kind, doc)
    try:
        if not isinstance(doc["agent"], str) or not isinstance(doc["seq"], int) or doc["seq"] < 1:
            raise ValueError("agent/seq")
        if kind == "telemetry":
            s = doc["samples"]
            n = doc["count"]
            if any(len(s[k]) != n for k in ("tag", "value", "quality", "reason", "source_ts", "agent_ts")):
                raise ValueError("sample arrays of unequal length")
            if not (isinstance(doc["device"], str) and all(isinstance(x, str) for x in s["tag"])
                    and all(isinstance(x, str) for x in s["quality"])
                    and all(x is None or isinstance(x, str) for x in s["reason"])
                    and all(type(x) is int for x in s["agent_ts"])
                    and all(x is None or type(x) is int for x in s["source_ts"])):
                raise ValueError("device, tag, quality, reason or timestamp types")
        else:
            for k in ("id", "recorded_at", "prev_hash", "hash"):
                doc[k]  # noqa: B018 - presence check
            if not isinstance(doc["body"], dict):
                raise ValueError("body")
    except (KeyError, TypeError, ValueError) as exc:
        return Parsed("foreign", reason=f"{schema} payload without a valid {exc}")
    return Parsed(kind, doc)


def record_envelope(agent: str, stream: str, seq: int, row: tuple) -> dict[str, Any]:
    """A stored unit record/event (RECORD_COLUMNS, body as text) as the envelope `verify_lines` reads."""
    rid, recorded_at, body, prev_hash, hash_ = row
    return {"agent": agent, "stream": stream, "seq": seq, "id": rid, "recorded_at": recorded_at,
            "body": orjson.loads(body) if isinstance(body, str) else body, "prev_hash": prev_hash, "hash": hash_}


def chain_findings(agent: str, stream: str, records: dict[int, dict[str, Any]], check: list[int],
                   links_only: set[int] = frozenset()) -> list[tuple[int, str]]:
    """(seq, detail) of each broken chain finding about the records `check`, verified together
    with the records around them (`records`: seq -> envelope). For seqs in `links_only` only the
    link to the predecessor counts (their content was checked when they landed)."""
    label = {seq: f"{stream}/{seq}" for seq in records}
    lines = [(label[seq], orjson.dumps(records[seq])) for seq in sorted(records)]
    report = verify_lines(lines)
    wanted = {label[seq]: seq for seq in check if seq in label}
    out = []
    for f in report.findings:
        seq = wanted.get(f.where)
        if seq is None or f.kind != "broken_chain":
            continue
        if seq in links_only and "prev_hash" not in f.detail:
            continue
        out.append((seq, f.detail))
    return out


@dataclass
class StoreResult:
    inserted: dict[str, int] = field(default_factory=lambda: {"telemetry": 0, "units": 0, "events": 0})
    duplicates: int = 0
    problems: list[tuple[str, str, int, str, str]] = field(default_factory=list)
    touched: set[tuple[str, str]] = field(default_factory=set)


class Store:
    """Writes parsed payloads into a migrated `Target`, one transaction per call."""

    def __init__(self, target: Target) -> None:
        self.t = target

    def store(self, docs: list[Parsed]) -> StoreResult:
        res = StoreResult()
        now = datetime.now(UTC)
        with self.t.transaction():
            tel = [p.doc for p in docs if p.kind == "telemetry"]
            if tel:
                self._telemetry(tel, res, now)
            for stream in ("units", "events"):
                recs = [p.doc for p in docs if p.kind == stream]
                if recs:
                    self._records(stream, recs, res, now)
            if res.problems:
                self.t.executemany("INSERT INTO sink_problems VALUES (?, ?, ?, ?, ?, ?)",
                                   [(*p, now) for p in res.problems])
        return res

    # --- unit records and events --------------------------------------------------------------

    def _records(self, stream: str, docs: list[dict[str, Any]], res: StoreResult, now: datetime) -> None:
        new: dict[str, list[int]] = {}
        seen: dict[tuple[str, int], dict[str, Any]] = {}
        for doc in docs:
            agent, seq = doc["agent"], doc["seq"]
            content = {k: doc.get(k) for k in RECORD_COLUMNS}
            key = (agent, seq)
            if key in seen:  # twice in one batch
                res.duplicates += 1
                if seen[key] != content:
                    res.problems.append((agent, stream, seq, "duplicate_differs",
                                         "a second delivery differs from the first (the first is kept)"))
                continue
            seen[key] = content
            body = doc["body"]
            body_text = orjson.dumps(body).decode()
            if stream == "units":
                row = (agent, seq, doc["id"], _text(body.get("serial")), _text(body.get("station")),
                       _text(body.get("device")), _text(body.get("operator")), _text(body.get("lot")),
                       from_us(_int(body.get("started_at"))), from_us(_int(body.get("ended_at"))),
                       _float(body.get("cycle_time")), _text(body.get("verdict")),
                       _text(body.get("config_version")), doc["recorded_at"], body_text, doc["prev_hash"],
                       doc["hash"], now)
            else:
                row = (agent, seq, doc["id"], _text(body.get("kind")), _text(body.get("serial")),
                       _text(body.get("station")), from_us(_int(body.get("ts"))), doc["recorded_at"], body_text,
                       doc["prev_hash"], doc["hash"], now)
            marks = ", ".join("?" * len(row))
            got = self.t.execute(f"INSERT INTO {stream} VALUES ({marks}) ON CONFLICT DO NOTHING RETURNING seq", row)
            if got:
                res.inserted[stream] += 1
                new.setdefault(agent, []).append(seq)
                res.touched.add((agent, stream))
                continue
            res.duplicates += 1
            held = self.t.execute(f"SELECT {', '.join(RECORD_COLUMNS)} FROM {stream} WHERE agent = ? AND seq = ?",
                                  (agent, seq))
            if held and record_envelope(agent, stream, seq, held[0]) != {"agent": agent, "stream": stream,
                                                                         "seq": seq, **content}:
                res.problems.append((agent, stream, seq, "duplicate_differs",
                                     "a later delivery differs from the row held (the row is kept)"))
        for agent, seqs in new.items():
            res.problems.extend(self._check_links(stream, agent, seqs))

    def _check_links(self, stream: str, agent: str, seqs: list[int]) -> list[tuple]:
        wanted = sorted({s + d for s in seqs for d in (-1, 0, 1) if s + d >= 1})
        records: dict[int, dict[str, Any]] = {}
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            rows = self.t.execute(f"SELECT seq, {', '.join(RECORD_COLUMNS)} FROM {stream} WHERE agent = ? AND seq IN "
                                  f"({', '.join('?' * len(part))})", (agent, *part))
            for seq, *rest in rows:
                records[seq] = record_envelope(agent, stream, seq, tuple(rest))
        new = set(seqs)
        successors = {s + 1 for s in seqs if s + 1 in records and s + 1 not in new}
        out = []
        for seq, detail in chain_findings(agent, stream, records, sorted(new | successors), links_only=successors):
            out.append((agent, stream, seq, "chain_break", detail))
        return out

    # --- telemetry ------------------------------------------------------------------------

    def _telemetry(self, docs: list[dict[str, Any]], res: StoreResult, now: datetime) -> None:
        rows: dict[tuple[str, int], tuple] = {}
        for doc in docs:
            agent, seq0, s = doc["agent"], doc["seq"], doc["samples"]
            for i in range(doc["count"]):
                row = (agent, seq0 + i, doc["device"], doc.get("station"), s["tag"][i],
                       orjson.dumps(s["value"][i]).decode(), s["quality"][i], s["reason"][i],
                       s["source_ts"][i], s["agent_ts"][i])
                key = (agent, seq0 + i)
                if key in rows:
                    res.duplicates += 1
                    if rows[key] != row:
                        res.problems.append((agent, "telemetry", seq0 + i, "duplicate_differs",
                                             "a second delivery differs from the first (the first is kept)"))
                    continue
                rows[key] = row
            res.touched.add((agent, "telemetry"))
        staged = list(rows.values())
        # timestamps travel as the envelope's integers (us since the epoch) and become TIMESTAMPTZ in the
        # database: no Python datetime per sample (from_us and its COPY formatting were ~40% of the sink's CPU)
        if self.t.dialect == "duckdb":
            import pyarrow as pa

            cols = list(zip(*staged, strict=True))
            ts = pa.timestamp("us", tz="UTC")
            table = pa.table({name: pa.array(list(col), type=pa.int64()).cast(ts) if name.endswith("_ts") else
                              pa.array(list(col), type=pa.int64() if name == "seq" else pa.string())
                              for name, col in zip(TELEMETRY_COLUMNS, cols, strict=True)})
            self.t.conn.register("sink_stage", table)
            stage, cols_sql = "sink_stage", ", ".join(TELEMETRY_COLUMNS)
        else:
            # every batch: a rolled-back transaction takes the temp table's creation with it
            self.t.execute("CREATE TEMP TABLE IF NOT EXISTS sink_stage_us (agent TEXT, seq BIGINT, device TEXT, "
                           "station TEXT, tag TEXT, value TEXT, quality TEXT, reason TEXT, source_ts BIGINT, "
                           "agent_ts BIGINT) ON COMMIT DELETE ROWS")
            with self.t.conn.cursor() as cur, cur.copy(f"COPY sink_stage_us ({', '.join(TELEMETRY_COLUMNS)}) "
                                                       "FROM STDIN") as copy:
                for row in staged:
                    copy.write_row(row)
            # exact: a bigint times 1 us stays exact below 2**53 us (the year 2255)
            stage = ("(SELECT agent, seq, device, station, tag, value, quality, reason, "
                     "timestamptz 'epoch' + source_ts * interval '1 microsecond' AS source_ts, "
                     "timestamptz 'epoch' + agent_ts * interval '1 microsecond' AS agent_ts FROM sink_stage_us)")
            cols_sql = ", ".join(TELEMETRY_COLUMNS)
        # ON CONFLICT DO NOTHING counts the rows it inserted: the rest were held already
        inserted = self._insert_count(f"INSERT INTO telemetry SELECT {cols_sql} FROM {stage} s "
                                      "ON CONFLICT DO NOTHING")
        before = len(staged) - inserted
        res.inserted["telemetry"] += inserted
        res.duplicates += before
        if before:
            differs = " OR ".join(f"t.{c} IS DISTINCT FROM s.{c}" for c in TELEMETRY_COLUMNS[2:])
            for agent, seq in self.t.execute(f"SELECT s.agent, s.seq FROM {stage} s JOIN telemetry t "
                                             f"USING (agent, seq) WHERE {differs}"):
                res.problems.append((agent, "telemetry", seq, "duplicate_differs",
                                     "a later delivery differs from the row held (the row is kept)"))
        if self.t.dialect == "duckdb":
            self.t.conn.unregister("sink_stage")

    def _insert_count(self, sql: str) -> int:
        """Run an INSERT; the number of rows it inserted."""
        if self.t.dialect == "duckdb":
            return int(self.t.execute(sql)[0][0])
        with self.t.conn.cursor() as cur:
            cur.execute(sql)
            return cur.rowcount

    # --- completeness bookkeeping -------------------------------------------------------------

    def refresh_streams(self, touched: set[tuple[str, str]]) -> None:
        """Recompute `sink_streams` for the (agent, stream) pairs that received records."""
        from linetap.agent.sink.audit import held_ranges

        now = datetime.now(UTC)
        with self.t.transaction():
            for agent, stream in sorted(touched):
                ranges = held_ranges(self.t, stream, agent).get(agent, [])
                if not ranges:
                    continue
                held = sum(b - a + 1 for a, b in ranges)
                last = ranges[-1][1]
                self.t.execute("INSERT INTO sink_streams VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                               "ON CONFLICT (agent, stream) DO UPDATE SET seq_first = excluded.seq_first, "
                               "seq_last = excluded.seq_last, held = excluded.held, missing = excluded.missing, "
                               "ranges = excluded.ranges, updated_at = excluded.updated_at",
                               (agent, stream, ranges[0][0], last, held, last - held,
                                orjson.dumps(ranges[:1000]).decode(), now))


def _text(v: Any) -> str | None:
    return None if v is None else v if isinstance(v, str) else orjson.dumps(v).decode()


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
