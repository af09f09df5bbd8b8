"""The records that travel through the agent: samples (columnar), events, unit records.

Timestamps are integers: microseconds since the Unix epoch, UTC. They are cheap to
carry in columns and exact; the MQTT payload keeps them as integers too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import pyarrow as pa

# Integers beyond this magnitude do not survive a float64 round trip; they travel as text.
_MAX_EXACT_INT = 2**53


def now_us() -> int:
    """Agent wall-clock time in microseconds since the epoch (UTC)."""
    return time.time_ns() // 1000


class Quality(IntEnum):
    """Sample quality, in the OPC UA sense (good / uncertain / bad)."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


# The columns of a telemetry batch, as stored in the buffer (before `seq` is assigned)
# and as read back by the forwarder (with `seq` first).
TELEMETRY_SCHEMA = pa.schema(
    [
        ("device", pa.string()),
        ("tag", pa.string()),
        ("num", pa.float64()),  # numeric and boolean (0/1) values
        ("text", pa.string()),  # strings, byte strings as hex, integers beyond 2**53
        ("quality", pa.uint8()),
        ("reason", pa.string()),  # why the quality is not good; null when good
        ("source_ts", pa.int64()),  # equipment time when the device gives one, else null
        ("agent_ts", pa.int64()),  # agent time, always
    ]
)


@dataclass(frozen=True, slots=True)
class SampleBatch:
    """Samples of one device from one read (poll cycle or notification batch), one list per field.

    `value[i]` is a float, int, bool, str or None (None only with a non-good quality).
    `source_ts` is None when the device gives no timestamps, else one entry per sample.
    """

    device: str
    tag: list[str]
    value: list[Any]
    quality: list[int]
    reason: list[str | None]
    agent_ts: int
    source_ts: list[int | None] | None = None

    def __len__(self) -> int:
        return len(self.tag)

    @classmethod
    def all_bad(cls, device: str, tags: list[str], reason: str, agent_ts: int | None = None) -> SampleBatch:
        """One bad-quality sample per tag: what the agent records when a read fails."""
        n = len(tags)
        return cls(
            device=device,
            tag=list(tags),
            value=[None] * n,
            quality=[Quality.BAD] * n,
            reason=[reason] * n,
            agent_ts=now_us() if agent_ts is None else agent_ts,
        )

    def to_arrow(self) -> pa.Table:
        """The batch as an Arrow table in TELEMETRY_SCHEMA (the buffer's append format)."""
        n = len(self.tag)
        num: list[float | None] = []
        text: list[str | None] = []
        for v in self.value:
            t = type(v)
            if t is float or t is bool:
                num.append(v)
                text.append(None)
            elif t is int:
                if -_MAX_EXACT_INT <= v <= _MAX_EXACT_INT:
                    num.append(v)
                    text.append(None)
                else:
                    num.append(None)
                    text.append(str(v))
            elif v is None:
                num.append(None)
                text.append(None)
            elif t is bytes:
                num.append(None)
                text.append(v.hex())
            else:
                num.append(None)
                text.append(str(v))
        return pa.Table.from_arrays(
            [
                pa.repeat(pa.scalar(self.device, pa.string()), n),
                pa.array(self.tag, pa.string()),
                pa.array(num, pa.float64()),
                pa.array(text, pa.string()),
                pa.array(self.quality, pa.uint8()),
                pa.array(self.reason, pa.string()),
                pa.array(self.source_ts if self.source_ts is not None else [None] * n, pa.int64()),
                pa.array([self.agent_ts] * n, pa.int64()),
            ],
            schema=TELEMETRY_SCHEMA,
        )


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened: `device_state`, `nonconformance`, `gap`, `alarm`.

    `data` holds the kind-specific fields (flat JSON values), e.g. for `device_state`:
    {"state": "lost", "reason": "connection refused"}.
    """

    kind: str
    ts: int  # microseconds since the epoch
    device: str | None = None
    station: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"kind": self.kind, "ts": self.ts, "device": self.device, "station": self.station, **self.data}


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A unit record or event as it sits in the buffer: body plus its place in the stream."""

    stream: str
    seq: int
    id: str
    recorded_at: int  # microseconds since the epoch, when it entered the buffer
    body: dict[str, Any]
    prev_hash: str
    hash: str
