"""The JSON envelope payloads (versioned, encoded with orjson): `mqtt.payload: json`.

Envelopes (JSON Schemas in `config/schemas/`):

- telemetry, many samples of one device per message, contiguous seqs (sample i has seq + i)::

    {"schema": "linetap.telemetry/2", "id": "<agent>/telemetry/<first>-<last>", "agent": ...,
     "stream": "telemetry", "seq": first, "seq_last": last, "count": n, "sent_at": us,
     "device": ..., "station": ...,
     "samples": {"tag": [...], "value": [...], "quality": [...], "reason": [...],
                 "source_ts": [...], "agent_ts": [...]}}

- unit records and events, one per message::

    {"schema": "linetap.unit/2" | "linetap.event/2", "id": ..., "agent": ..., "stream": ...,
     "seq": ..., "sent_at": us, "recorded_at": us, "prev_hash": ..., "hash": ..., "body": {...}}

  The schema's version is the record's hash chain version (`linetap.buffers.integrity`): 2, RFC
  8785; 1 for a record hashed before (still in a buffer when the agent was upgraded) or whose body
  RFC 8785 cannot write.

- agent status (retained)::

    {"schema": "linetap.status/1", "agent": ..., "state": "online" | "offline", "ts": us}

Topics: `linetap.agent.topics`.

A message's content depends only on the buffer's rows, never on when it is sent, except
`sent_at`: a re-sent message has the same id and the same samples. Telemetry message
boundaries are a function of the rows alone, never of read sizes: a message starts where the
device changes, where seq is not the previous seq + 1, where `agent_ts` changes (one poll's
`SampleBatch` has one `agent_ts`, and an append never splits one), and at every seq bucket of
`batch` samples aligned to multiples of `batch`. Every read for messages (the forwarder's
`read_telemetry(..., align=batch)`, export and replay) ends on a bucket end or at the last row
that exists; at the live head that is the end of an append, hence an `agent_ts` change. So
the forwarder, a re-send after a reconnect, `linetap replay` and `linetap export` all build
the same messages (ids and content) from the same rows, wherever their reads started and ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from linetap.agent.topics import Topics
from linetap.buffers.integrity import LEGACY, chain_version
from linetap.buffers.records import StoredRecord
from linetap.drivers.samples import VType

TELEMETRY_SCHEMA_ID = "linetap.telemetry/2"  # 2: typed values (see json_values)
UNIT_SCHEMA_ID = "linetap.unit/2"  # 2: hash chain over RFC 8785 (integrity.JCS)
EVENT_SCHEMA_ID = "linetap.event/2"
STATUS_SCHEMA_ID = "linetap.status/1"

RECORD_SCHEMA_IDS = {"units": UNIT_SCHEMA_ID, "events": EVENT_SCHEMA_ID}
LEGACY_RECORD_SCHEMA_IDS = {"units": "linetap.unit/1", "events": "linetap.event/1"}  # integrity.LEGACY chains
QUALITY_NAMES = ("good", "uncertain", "bad")
_QUALITY_LOOKUP = np.array(QUALITY_NAMES + ("bad",) * (256 - len(QUALITY_NAMES)), dtype=object)


# --- telemetry --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TelemetryChunk:
    """Rows read from the buffer (`seq` + TELEMETRY_SCHEMA), column by column, ready to slice into
    messages. Numbers stay numpy arrays (orjson writes them in one C call each: a float32 array as
    the float32's shortest decimal); only text columns are Python lists, converted once per chunk.
    """

    seq: list[int]
    device_codes: np.ndarray  # per row: index into `devices`
    devices: list[str]
    tag: list[str]
    num: np.ndarray  # float64, NaN where null
    uniform32: np.ndarray  # cumulative count of rows that are NOT plain finite float32 (see `values`)
    num_col: pa.ChunkedArray  # the stored columns, for the messages that are not uniform float32
    text_col: pa.ChunkedArray
    vtype: np.ndarray
    quality: list[str]
    reason: list[str | None] | None  # None: every reason is null
    source_ts: np.ndarray | list[int | None] | None  # None: every source_ts is null
    agent_ts: np.ndarray
    spans: list[tuple[int, int]]  # [start, end) row ranges, one per message

    def __len__(self) -> int:
        return len(self.seq)

    @property
    def last_seq(self) -> int:
        return self.seq[-1]

    def device_at(self, row: int) -> str:
        return self.devices[self.device_codes[row]]

    def values(self, start: int, end: int) -> np.ndarray | list[Any]:
        """The `value` column of rows [start, end): a float32 array when every value there is a finite
        float32 (the bulk of telemetry), else the JSON values of these rows only: a float32 device
        next to one with integer tags keeps its messages as arrays."""
        if self.uniform32[end] - self.uniform32[start] == 0:
            return self.num[start:end].astype(np.float32)
        return json_values(self.num_col.slice(start, end - start), self.text_col.slice(start, end - start),
                           self.vtype[start:end])


def message_spans(seq: np.ndarray, device_codes: np.ndarray, batch: int,
                  agent_ts: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Row ranges [start, end) of one message each: a new message starts where the device
    changes, where seq is not the previous seq + 1, where `agent_ts` changes (a new poll, hence
    wherever an append may have ended: the forwarder's read edge at the live head), and at every
    seq that is a multiple of `batch` plus one (aligned buckets), so at most `batch` samples per
    message. Only the rows decide: the same rows give the same spans however they were read,
    provided each read ends on a boundary (see `DuckDBBuffer.read_telemetry`)."""
    n = len(seq)
    if n == 0:
        return []
    brk = np.zeros(n, dtype=bool)
    brk[0] = True
    if n > 1:
        brk[1:] = (device_codes[1:] != device_codes[:-1]) | (seq[1:] != seq[:-1] + 1)
        if agent_ts is not None:
            brk[1:] |= agent_ts[1:] != agent_ts[:-1]
    brk |= (seq - 1) % batch == 0
    starts = np.flatnonzero(brk).tolist()
    ends = starts[1:] + [n]
    return list(zip(starts, ends, strict=True))


def telemetry_chunk(table: pa.Table, batch: int) -> TelemetryChunk:
    """Prepare rows from `AsyncBuffer.read_telemetry` for encoding into messages."""
    n = table.num_rows
    seq_np = table.column("seq").to_numpy()
    device = table.column("device").combine_chunks().dictionary_encode()
    codes = device.indices.to_numpy(zero_copy_only=False)
    num_col, text_col = table.column("num"), table.column("text")
    vtype = table.column("vtype").to_numpy(zero_copy_only=False)
    num = num_col.to_numpy()  # nulls as NaN
    plain32 = (vtype == VType.FLOAT32) & np.isfinite(num)  # NaN covers the nulls too
    not_plain = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(~plain32, out=not_plain[1:])
    reason = table.column("reason")
    source_ts = table.column("source_ts")
    agent_ts = table.column("agent_ts").to_numpy()
    return TelemetryChunk(
        seq=seq_np.tolist(),
        device_codes=codes,
        devices=device.dictionary.to_pylist(),
        tag=table.column("tag").to_pylist(),
        num=num,
        uniform32=not_plain,
        num_col=num_col,
        text_col=text_col,
        vtype=vtype,
        quality=_QUALITY_LOOKUP[table.column("quality").to_numpy(zero_copy_only=False)].tolist(),
        reason=None if reason.null_count == n else reason.to_pylist(),
        source_ts=(None if source_ts.null_count == n else
                   source_ts.to_numpy() if source_ts.null_count == 0 else source_ts.to_pylist()),
        agent_ts=agent_ts,
        spans=message_spans(seq_np, codes, batch, agent_ts),
    )


def json_values(num: pa.ChunkedArray, text: pa.ChunkedArray, vtype: np.ndarray) -> list[Any]:
    """The `value` column of telemetry messages (see `VType`): integers as JSON integers, booleans
    as true/false, a float32 as the float32's shortest decimal (a numpy float32: orjson writes it),
    other floats as stored, the non-finite floats as "NaN" / "Infinity" / "-Infinity", text where
    there is text, null where there is no value. Column at a time (numpy masks): no Python loop per
    sample."""
    values = num.to_pylist()
    n = len(values)
    if n == 0:
        return values
    num_np = num.to_numpy()  # nulls as NaN
    has_num = ~num.is_null().to_numpy(zero_copy_only=False)
    nonfinite = has_num & ~np.isfinite(num_np)
    special = bool((vtype >= VType.FLOAT32).any())
    if not special and not nonfinite.any() and text.null_count == n:
        return values  # float64s and nulls only
    out = np.empty(n, dtype=object)
    out[:] = values
    m = has_num & (vtype == VType.FLOAT32)
    if m.any():
        # numpy float32 scalars (the list keeps them as they are): orjson writes their shortest form
        out[m] = np.array([*num_np[m].astype(np.float32), None], dtype=object)[:-1]
    m = has_num & (vtype == VType.INT)
    if m.any():
        out[m] = num_np[m].astype(np.int64)  # Python ints
    m = has_num & (vtype == VType.BOOL)
    if m.any():
        out[m] = num_np[m] != 0  # Python bools
    if nonfinite.any():
        bad = num_np[nonfinite]
        out[nonfinite] = np.where(np.isnan(bad), "NaN", np.where(bad > 0, "Infinity", "-Infinity")).astype(object)
    if text.null_count != n:
        has_text = ~text.is_null().to_numpy(zero_copy_only=False)
        out[has_text] = text.to_numpy(zero_copy_only=False)[has_text]
    return out.tolist()


def telemetry_id(agent: str, first: int, last: int) -> str:
    return f"{agent}/telemetry/{first}-{last}"


def encode_telemetry(agent: str, chunk: TelemetryChunk, start: int, end: int, station: str,
                     sent_at: int) -> bytes:
    """One telemetry message: rows [start, end) of the chunk (one device, contiguous seqs)."""
    first, last = chunk.seq[start], chunk.seq[end - 1]
    count = end - start
    return orjson.dumps({
        "schema": TELEMETRY_SCHEMA_ID,
        "id": telemetry_id(agent, first, last),
        "agent": agent,
        "stream": "telemetry",
        "seq": first,
        "seq_last": last,
        "count": count,
        "sent_at": sent_at,
        "device": chunk.device_at(start),
        "station": station,
        "samples": {
            "tag": chunk.tag[start:end],
            "value": chunk.values(start, end),
            "quality": chunk.quality[start:end],
            "reason": [None] * count if chunk.reason is None else chunk.reason[start:end],
            "source_ts": [None] * count if chunk.source_ts is None else chunk.source_ts[start:end],
            "agent_ts": chunk.agent_ts[start:end],
        },
    }, option=orjson.OPT_SERIALIZE_NUMPY)


def iter_telemetry_messages(agent: str, table: pa.Table, batch: int, topics: Topics,
                            sent_at: int) -> Iterator[tuple[str, int, int, bytes]]:
    """(topic, first seq, last seq, payload) for every message of a table of rows."""
    chunk = telemetry_chunk(table, batch)
    for start, end in chunk.spans:
        device = chunk.device_at(start)
        yield (topics.telemetry(device), chunk.seq[start], chunk.seq[end - 1],
               encode_telemetry(agent, chunk, start, end, topics.station_of(device), sent_at))


# --- records and status ---------------------------------------------------------------------


def record_schema_id(record: StoredRecord) -> str:
    """The schema that names the record's chain version: recomputed, so it is true of every record,
    including those hashed before an upgrade (~60 us for a unit with a 40-point trace; records are few)."""
    version = chain_version(record.hash, record.prev_hash, id=record.id, stream=record.stream, seq=record.seq,
                            recorded_at=record.recorded_at, body=record.body)
    return (LEGACY_RECORD_SCHEMA_IDS if version == LEGACY else RECORD_SCHEMA_IDS)[record.stream]


def encode_record(agent: str, record: StoredRecord, sent_at: int) -> bytes:
    """One unit record or event."""
    return orjson.dumps({
        "schema": record_schema_id(record),
        "id": record.id,
        "agent": agent,
        "stream": record.stream,
        "seq": record.seq,
        "sent_at": sent_at,
        "recorded_at": record.recorded_at,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
        "body": record.body,
    }, option=orjson.OPT_NON_STR_KEYS)


def encode_status(agent: str, state: str, ts: int) -> bytes:
    if state not in ("online", "offline"):
        raise ValueError(f"status state {state!r}: expected online or offline")
    return orjson.dumps({"schema": STATUS_SCHEMA_ID, "agent": agent, "state": state, "ts": ts})


def decode(payload: bytes) -> dict[str, Any]:
    return orjson.loads(payload)


class JsonEnvelope:
    """`mqtt.payload: json`: the versioned JSON envelopes above, on `linetap.agent.topics`' topics."""

    name = "json"

    def __init__(self, agent: str, topics: Topics, batch: int) -> None:
        self.agent = agent
        self.topics = topics
        self.batch = batch

    def telemetry_rows(self, table: pa.Table) -> TelemetryChunk:
        return telemetry_chunk(table, self.batch)

    def telemetry(self, rows: TelemetryChunk, start: int, end: int, sent_at: int) -> tuple[str, bytes]:
        device = rows.device_at(start)
        return (self.topics.telemetry(device),
                encode_telemetry(self.agent, rows, start, end, self.topics.station_of(device), sent_at))

    def record(self, record: StoredRecord, sent_at: int) -> tuple[str, bytes]:
        return self.topics.record(record), encode_record(self.agent, record, sent_at)

    def status(self, state: str, ts: int) -> tuple[str, bytes]:
        return self.topics.status, encode_status(self.agent, state, ts)
