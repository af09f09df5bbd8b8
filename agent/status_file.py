"""What the agent reports about itself: its counters (devices, samples, the forwarder) and the
status file `linetap status` reads while the agent holds the buffer's lock."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from linetap.config.models import LineConfig
from linetap.drivers.samples import SampleBatch, now_us


@dataclass
class DeviceStatus:
    state: str = "starting"  # starting | connected | lost | removed (by a config reload)
    since: int = 0
    reason: str | None = None
    batches: int = 0
    samples: int = 0
    last_batch: SampleBatch | None = None  # the latest committed read (for live views; no per-sample copy)
    counters: dict[str, int] = field(default_factory=dict)  # the driver's own (e.g. rejected replies), live


@dataclass
class AgentStats:
    units: int = 0
    samples_read: int = 0  # produced by the device loops (all-bad samples of a lost device included)
    samples_buffered: int = 0
    commits: int = 0
    started_at: float = field(default_factory=time.monotonic)
    devices: dict[str, DeviceStatus] = field(default_factory=dict)


@dataclass
class ForwarderStats:
    connected: bool = False
    broker: str = ""
    messages_sent: int = 0  # publishes, re-sends included
    samples_sent: int = 0  # telemetry samples in those publishes
    resent: int = 0  # messages re-sent after a reconnect
    acked: dict[str, int] = field(default_factory=dict)  # stream -> acknowledged seq (the cursor)
    inflight: int = 0  # messages taken from the buffer and not yet acknowledged
    reconnects: int = 0  # successful connections after the first
    last_error: str | None = None
    pubacks: int = 0  # PUBACKs received, and the seconds from publish to PUBACK summed over them
    puback_seconds: float = 0.0

    def acked_after(self, seconds: float) -> None:
        self.pubacks += 1
        self.puback_seconds += seconds


def status_path(config: LineConfig) -> Path:
    return config.buffer.path.with_name(config.buffer.path.name + ".status.json")


async def write_status_file(path: Path, agent_id: str, buffer: Any, sink: str, devices: dict[str, DeviceStatus],
                            forwarder: ForwarderStats | None) -> dict[str, Any] | None:
    """The buffer file is locked while the agent runs; `linetap status` reads this instead.
    Returns the document (also when the file could not be written: a full disk), None if the
    buffer could not be read."""
    try:
        streams = await buffer.stats(sink)
        doc = {
            "agent": agent_id,
            "pid": os.getpid(),
            "written_at": now_us(),
            "buffer": str(buffer.path),
            "file_size": await buffer.file_size(),
            "gaps": await buffer.gaps(),
            "streams": [dataclasses.asdict(s) for s in streams],
            "devices": {n: {"state": d.state, "reason": d.reason, "samples": d.samples,
                            **({"counters": dict(d.counters)} if d.counters else {})}
                        for n, d in devices.items()},
            "mqtt": dataclasses.asdict(forwarder) if forwarder is not None else None,
        }
    except Exception:  # noqa: BLE001 (a status that cannot be read is skipped this round)
        return None
    with contextlib.suppress(Exception):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(orjson.dumps(doc, default=str, option=orjson.OPT_INDENT_2))
        tmp.replace(path)
    return doc
