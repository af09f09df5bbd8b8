"""The records the buffer stores and chains: events and unit records.

Timestamps are integers: microseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
