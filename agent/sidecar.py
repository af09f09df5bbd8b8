"""What the agent held in memory when its buffer turned out damaged, written beside the buffer.

The agent stops on a damaged buffer (it never writes on over damage), but what it read and
recorded and could not commit is evidence: unit records and events already chained (with
their seq, id and hash), records not chained yet, and telemetry batches. They go, one JSON
object a line, into `<buffer>.unsaved-<time>.jsonl`, for whoever restores the line's records.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from linetap.buffers.records import Event, StoredRecord
from linetap.drivers.samples import SampleBatch


def sidecar_path(buffer_path: Path) -> Path:
    return buffer_path.with_name(f"{buffer_path.name}.unsaved-{time.strftime('%Y%m%dT%H%M%S')}.jsonl")


def write_sidecar(path: Path, chained: Iterable[StoredRecord], records: Iterable[Event | dict[str, Any]],
                  telemetry: Iterable[SampleBatch]) -> tuple[int, int]:
    """Write the lines; returns (records, samples) written. `records`: Events or unit record bodies."""
    n_records = n_samples = 0
    with open(path, "wb") as out:
        for r in chained:
            out.write(_line({"kind": "chained_record", "stream": r.stream, "seq": r.seq, "id": r.id,
                             "recorded_at": r.recorded_at, "body": r.body, "prev_hash": r.prev_hash, "hash": r.hash}))
            n_records += 1
        for item in records:
            doc = {"kind": "event", "body": item.body()} if isinstance(item, Event) else {"kind": "unit", "body": item}
            out.write(_line(doc))
            n_records += 1
        for b in telemetry:
            out.write(_line({"kind": "telemetry", "device": b.device, "agent_ts": b.agent_ts, "tag": b.tag,
                             "value": b.value, "quality": b.quality, "reason": b.reason, "source_ts": b.source_ts}))
            n_samples += len(b)
        out.flush()
    return n_records, n_samples


def _line(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, default=str, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS) + b"\n"
