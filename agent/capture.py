"""Per-unit records (eDHR) and real-time non-conformance events, assembled from samples.

One `StationAssembler` per configured station, fed by the same sample batches the telemetry
stream gets (no extra polling). A unit starts and ends on trigger tags; its parameters are
reduced from tags while it is in progress. A limit breach that is already certain during the
cycle (a max above high, a min below low, a trace point outside) raises the non-conformance at
once; the rest are judged when the unit ends. A unit whose data is missing ends `incomplete`
with the reason, and that raises an event too: never a silent pass.

Every unit is announced by a `unit_started` event when it starts (committed at once), so a unit
the agent was stopped in (kill -9, power cut) is not lost: at the next start it is resumed if
still in progress, else closed `incomplete` ("agent restarted"). A unit already under way at the
agent's first poll is captured from there (`started_before_agent`). Which parameters of such a
partly seen unit can still be judged: `unit_resume`.

Times are microseconds since the epoch: the sample's source timestamp when the device gives
one, else the agent's read time.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from linetap.agent import unit_resume as resume
from linetap.agent.station_capture import StationAssembler
from linetap.buffers.records import Event
from linetap.config.models import LineConfig
from linetap.drivers.samples import SampleBatch


def config_version(config: LineConfig) -> str:
    """A hash of the whole line config: which config produced a record."""
    doc = config.model_dump(mode="json", exclude={"mqtt": {"password"}})
    return "sha256:" + hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


class CaptureEngine:
    """Every station of the line; routes each batch to the stations of its device."""

    def __init__(self, config: LineConfig) -> None:
        version = config_version(config)
        self.by_device: dict[str, list[StationAssembler]] = {}
        for station in config.stations:
            self.by_device.setdefault(station.device, []).append(StationAssembler(station, version))

    def restore(self, opened: list[dict[str, Any]], stopped_at: dict[str, int | None], now: int
                ) -> tuple[list[dict[str, Any]], list[Event]]:
        """Units a previous agent left open (their `unit_started` bodies, oldest first): each station's
        latest is resolved at its first poll; any other (an older one, a station no longer configured)
        is closed `incomplete` now. `stopped_at`: the last committed reading per device."""
        stations = {s.cfg.name: s for group in self.by_device.values() for s in group}
        pending, stale = resume.split_open_units(opened, stopped_at, set(stations))
        units: list[dict[str, Any]] = []
        events: list[Event] = []
        for unit, version in stale:
            known = stations.get(unit.station)
            st = StationAssembler(known.cfg if known else resume.orphan_station(unit), version)
            st.pending = unit
            st._resolve(None, now, units, events, "no longer the station's open unit")
        for name, unit in pending.items():
            stations[name].pending = unit
        return units, events

    def feed(self, batch: SampleBatch) -> tuple[list[dict[str, Any]], list[Event]]:
        stations = self.by_device.get(batch.device)
        if not stations:
            return [], []
        units: list[dict[str, Any]] = []
        events: list[Event] = []
        for i, station in enumerate(stations):
            u, e = station.feed(batch)
            units.extend(u)
            events.extend(e)
            if station.successor is not None and station.unit is None and station.pending is None:
                stations[i] = station.successor.taking_over(station)  # its unit done: the new definition
        return units, events

    def reconfigure(self, config: LineConfig, now: int) -> tuple[list[dict[str, Any]], list[Event]]:
        """A reloaded config (`agent.reload`): an unchanged station goes on as it is; a changed one
        takes the new definition at once when idle, else after the unit in progress, which ends under
        the config it started with; a station removed (or moved to another device) mid-unit closes the
        unit incomplete. Returns what that closing made."""
        version = config_version(config)
        old = {s.cfg.name: s for group in self.by_device.values() for s in group}
        units: list[dict[str, Any]] = []
        events: list[Event] = []
        self.by_device = {}
        for cfg in config.stations:
            prev = old.pop(cfg.name, None)
            if prev is not None and prev.cfg.device != cfg.device:
                old[cfg.name + "\0moved"] = prev  # closed below, like a removed station
                prev = None
            new = StationAssembler(cfg, version)
            if prev is None:
                station = new
            elif prev.cfg == cfg:
                station, prev.config_version = prev, version
            elif prev.unit is not None or prev.pending is not None:
                station, prev.successor = prev, new
            else:
                station = new.taking_over(prev)
            self.by_device.setdefault(cfg.device, []).append(station)
        for gone in old.values():
            why = "the station was removed from the config (config_changed)"
            if gone.unit is not None:
                gone._close(now, units, events, incomplete=why)
            elif gone.pending is not None:
                gone._resolve(None, now, units, events, why)
        return units, events

