"""Topic names: `{root}/{station}/{stream}` for data, `{root}/_agent/{agent_id}/status` for status.

Which station a record or a device belongs to decides its topic; every payload encoder uses these names.
"""

from __future__ import annotations

from typing import Any

from linetap.buffers.records import StoredRecord

STREAMS = ("events", "units", "telemetry")  # also the forwarder's order of priority

LINE_STATION = "_line"  # topic level of records that belong to no station


def data_topic(topic_root: str, station: str, stream: str) -> str:
    return f"{topic_root}/{station}/{stream}"


def status_topic(topic_root: str, agent_id: str) -> str:
    return f"{topic_root}/_agent/{agent_id}/status"


def record_station(record: StoredRecord) -> str:
    return record.body.get("station") or LINE_STATION


class Topics:
    """Topic names of one agent, from its config (`LineConfig`)."""

    def __init__(self, topic_root: str, agent_id: str, stations: dict[str, str] | None = None) -> None:
        self.root = topic_root.strip("/")
        self.agent_id = agent_id
        self.stations = dict(stations or {})  # device name -> station name
        self.status = status_topic(self.root, agent_id)

    @classmethod
    def from_config(cls, config: Any) -> Topics:
        return cls(config.topic_root, config.agent.id, {d.name: d.station_name for d in config.devices})

    def station_of(self, device: str) -> str:
        return self.stations.get(device, device)

    def telemetry(self, device: str) -> str:
        return data_topic(self.root, self.station_of(device), "telemetry")

    def record(self, record: StoredRecord) -> str:
        return data_topic(self.root, record_station(record), record.stream)
