"""MQTT payload encoders: how the buffer's rows become the messages the MES reads.

An encoder turns telemetry rows (an Arrow table read from the buffer), unit records, events and
the agent's status into (topic, payload) pairs. The forwarder, `linetap export` and `linetap replay`
all take their messages from one, so a re-sent message is the message first sent. `mqtt.payload`
names the encoder; adding one is a module in this package with a class that follows `Encoder`,
plus its line in `ENCODERS` (and its name in `MQTTConfig.payload`; a test checks both agree).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, Protocol

import pyarrow as pa

from linetap.agent.topics import Topics
from linetap.buffers.records import StoredRecord

#: `mqtt.payload` -> "module:class" (imported when chosen)
ENCODERS: dict[str, str] = {
    "json": "linetap.agent.encoders.json_envelope:JsonEnvelope",
}


class TelemetryRows(Protocol):
    """Telemetry rows prepared by an encoder, cut into messages (`spans`: [start, end) row ranges)."""

    seq: list[int]
    spans: list[tuple[int, int]]

    def __len__(self) -> int: ...


class Encoder(Protocol):
    """What the forwarder, export and replay need from a payload format."""

    name: str
    batch: int  # samples per telemetry message, at most
    topics: Topics  # the topic names; a config reload updates its device -> station map

    def telemetry_rows(self, table: pa.Table) -> TelemetryRows:
        """Prepare rows from `AsyncBuffer.read_telemetry` (ending on a `batch` boundary) for messages."""

    def telemetry(self, rows: TelemetryRows, start: int, end: int, sent_at: int) -> tuple[str, bytes]:
        """The message of rows [start, end), one of `rows.spans`: (topic, payload)."""

    def record(self, record: StoredRecord, sent_at: int) -> tuple[str, bytes]:
        """One unit record or event: (topic, payload)."""

    def status(self, state: str, ts: int) -> tuple[str, bytes]:
        """The agent's retained status ("online" / "offline"; "offline" is also the will): (topic, payload)."""


def encoder_for(config: Any, topics: Topics | None = None) -> Encoder:
    """The encoder `config.mqtt.payload` names, for this agent (`config`: a LineConfig)."""
    name = config.mqtt.payload
    module, _, cls = ENCODERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(
        config.agent.id, topics or Topics.from_config(config), config.mqtt.telemetry_batch)


def telemetry_messages(encoder: Encoder, table: pa.Table, sent_at: int) -> Iterator[tuple[str, int, int, bytes]]:
    """(topic, first seq, last seq, payload) of every message of a table of telemetry rows."""
    rows = encoder.telemetry_rows(table)
    for start, end in rows.spans:
        topic, payload = encoder.telemetry(rows, start, end, sent_at)
        yield topic, rows.seq[start], rows.seq[end - 1], payload
