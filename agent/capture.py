"""Per-unit records (eDHR) and real-time non-conformance events, assembled from samples.

One `StationAssembler` per configured station, fed by the same sample batches the telemetry
stream gets (no extra polling). A unit starts and ends on trigger tags; its parameters are
reduced from tags while it is in progress. A limit breach that is already certain during the
cycle (a max above high, a min below low, a trace point outside) raises the non-conformance at
once; the rest are judged when the unit ends. A unit whose data is missing ends `incomplete`
with the reason, and that raises an event too: never a silent pass.

Times are microseconds since the epoch: the sample's source timestamp when the device gives
one, else the agent's read time.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from linetap.agent.records import Event, Quality, SampleBatch
from linetap.config.capture import Parameter, StationCapture, Trigger
from linetap.config.models import LineConfig

log = structlog.get_logger("linetap.capture")

REALTIME_REDUCTIONS = ("min", "max", "trace")  # a breach is certain as soon as one sample is out


def config_version(config: LineConfig) -> str:
    """A hash of the whole line config: which config produced a record."""
    doc = config.model_dump(mode="json", exclude={"mqtt": {"password"}})
    return "sha256:" + hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class _ParamState:
    spec: Parameter
    value: Any = None
    count: int = 0
    total: float = 0.0
    true_us: int = 0
    last_ts: int | None = None
    last_bool: bool | None = None
    trace: list[tuple[int, Any]] = field(default_factory=list)
    reason: str | None = None  # why the value is missing or unreliable
    breached: tuple[str, float, Any] | None = None  # (side, limit, value) raised during the cycle


@dataclass
class _Unit:
    serial: str | None
    lot: Any
    operator: Any
    started_at: int
    params: list[_ParamState]
    incomplete: list[str] = field(default_factory=list)


class StationAssembler:
    """The state machine of one station: idle <-> unit in progress."""

    def __init__(self, cfg: StationCapture, config_version: str) -> None:
        self.cfg = cfg
        self.config_version = config_version
        self.start = cfg.start
        self.end: Trigger | None = cfg.end_trigger
        self.tags = cfg.tags()
        self._prev: dict[str, Any] = {}  # last good value of every trigger/identity tag
        self._current: dict[str, Any] = {}
        self.unit: _Unit | None = None
        self.units_done = 0

    # -- feeding --------------------------------------------------------------------------

    def feed(self, batch: SampleBatch) -> tuple[list[dict[str, Any]], list[Event]]:
        """Samples of the station's device in; finished unit records and events out."""
        units: list[dict[str, Any]] = []
        events: list[Event] = []
        idx = {t: i for i, t in enumerate(batch.tag) if t in self.tags}
        if not idx:
            return units, events
        src = batch.source_ts
        ts = batch.agent_ts
        if src is not None:
            ts = max((src[i] for i in idx.values() if src[i] is not None), default=ts)
        values = batch.value
        quality = batch.quality

        def good(tag: str) -> bool:
            i = idx.get(tag)
            return i is not None and quality[i] != Quality.BAD

        # A device that is gone ends the unit in progress: its data cannot be complete.
        if self.unit is not None and all(quality[i] == Quality.BAD for i in idx.values()):
            reason = next((batch.reason[i] for i in idx.values() if batch.reason[i]), "no data")
            self._close(ts, units, events, incomplete=f"device {batch.device} lost mid-cycle: {reason}")
            self._prev.clear()
            return units, events

        fired_end = self.end is not None and self._fired(self.end, idx, values, good)
        fired_start = self._fired(self.start, idx, values, good)
        for tag, i in idx.items():
            if quality[i] != Quality.BAD:
                self._current[tag] = values[i]

        if self.unit is not None and (fired_end or (self.end is None and fired_start)):
            self._feed_end_values(idx, values, quality, batch.reason, ts)
            self._close(ts, units, events)
        elif self.unit is not None:
            self._feed_params(idx, values, quality, batch.reason, ts, events)
            if ts - self.unit.started_at > self.cfg.timeout * 1e6:
                self._close(ts, units, events, incomplete=f"unit did not end within {self.cfg.timeout:g}s")
        if fired_start and self.unit is None:
            self._open(ts)
            self._feed_params(idx, values, quality, batch.reason, ts, events)

        for tag in (self.start.tag, self.end.tag if self.end else None):
            if tag is not None and good(tag):
                self._prev[tag] = values[idx[tag]]
        return units, events

    def _fired(self, trig: Trigger, idx, values, good) -> bool:
        if not good(trig.tag):
            return False
        cur = values[idx[trig.tag]]
        prev = self._prev.get(trig.tag)
        if prev is None:
            return False  # the first value seen is a state, not an edge
        if trig.on == "rising":
            return bool(cur) and not bool(prev)
        if trig.on == "falling":
            return bool(prev) and not bool(cur)
        if trig.on == "increment":
            return cur > prev
        return cur != prev

    # -- a unit's life --------------------------------------------------------------------

    def _open(self, ts: int) -> None:
        cfg = self.cfg
        serial = self._current.get(cfg.serial.tag)
        if serial is not None and cfg.serial.format:
            try:
                serial = cfg.serial.format.format(serial)
            except (ValueError, TypeError) as exc:
                log.warning("serial format failed", station=cfg.name, serial=serial, error=str(exc))
        operator = cfg.operator.value if cfg.operator and cfg.operator.value is not None else (
            self._current.get(cfg.operator.tag) if cfg.operator else None)
        self.unit = _Unit(
            serial=None if serial is None else str(serial),
            lot=self._current.get(cfg.lot) if cfg.lot else None,
            operator=operator,
            started_at=ts,
            params=[_ParamState(p) for p in cfg.parameters],
        )
        if serial is None:
            self.unit.incomplete.append("serial number unknown at unit start")

    def _feed_params(self, idx, values, quality, reasons, ts: int, events: list[Event]) -> None:
        unit = self.unit
        offset = ts - unit.started_at
        for ps in unit.params:
            p = ps.spec
            if p.tag is None or p.reduce == "end":
                continue
            i = idx.get(p.tag)
            if i is None:
                continue
            if quality[i] == Quality.BAD:
                ps.reason = ps.reason or f"bad quality on {p.tag}: {reasons[i]}"
                continue
            v = values[i]
            r = p.reduce
            if r == "start":
                if ps.count == 0:
                    ps.value = v
                    self._judge_now(ps, v, ts, events)
            elif r == "last":
                ps.value = v
            elif r == "at":
                if ps.count == 0 and offset >= p.at * 1e6:
                    ps.value = v
                    self._judge_now(ps, v, ts, events)
                else:
                    continue  # keep count at 0 until the offset is reached
            elif r in ("min", "max", "mean"):
                if not _is_number(v):
                    ps.reason = ps.reason or f"{p.tag} is not numeric ({v!r})"
                    continue
                if r == "min":
                    ps.value = v if ps.value is None else min(ps.value, v)
                elif r == "max":
                    ps.value = v if ps.value is None else max(ps.value, v)
                else:
                    ps.total += v
                if r != "mean":
                    self._judge_now(ps, v, ts, events)
            elif r == "true_duration":
                if ps.last_ts is not None and ps.last_bool:
                    ps.true_us += ts - ps.last_ts
                ps.last_ts, ps.last_bool = ts, bool(v)
            elif r == "trace":
                ps.trace.append((offset, v))
                self._judge_now(ps, v, ts, events)
            ps.count += 1

    def _feed_end_values(self, idx, values, quality, reasons, ts: int) -> None:
        for ps in self.unit.params:
            p = ps.spec
            if p.reduce == "true_duration" and ps.last_ts is not None and ps.last_bool:
                ps.true_us += ts - ps.last_ts
                ps.last_ts = ts
            if p.reduce != "end":
                continue
            i = idx.get(p.tag)
            if i is None:
                ps.reason = f"{p.tag} not read at the end of the unit"
            elif quality[i] == Quality.BAD:
                ps.reason = f"bad quality on {p.tag}: {reasons[i]}"
            else:
                ps.value, ps.count = values[i], 1

    def _judge_now(self, ps: _ParamState, value: Any, ts: int, events: list[Event]) -> None:
        """Raise a non-conformance the moment a breach is certain, once per parameter per unit."""
        limits = ps.spec.limits
        if limits is None or ps.breached is not None or not _is_number(value):
            return
        if ps.spec.reduce not in (*REALTIME_REDUCTIONS, "start", "at"):
            return
        breach = limits.breach(value)
        # A max can still rise into the band, a min still fall into it: only the far side is certain.
        if breach is not None and (ps.spec.reduce, breach[0]) not in (("max", "low"), ("min", "high")):
            ps.breached = (*breach, value)
            events.append(self._nc_event(ps, value, breach, ts, during_cycle=True))

    def _close(self, ts: int, units: list, events: list, incomplete: str | None = None) -> None:
        unit = self.unit
        self.unit = None
        if incomplete:
            unit.incomplete.append(incomplete)
        params = []
        for ps in unit.params:
            params.append(self._finish_param(ps, unit, ts, events, truncated=incomplete))
        verdicts = {p["verdict"] for p in params}
        if "fail" in verdicts:
            verdict = "fail"
        elif unit.incomplete or "incomplete" in verdicts:
            verdict = "incomplete"
        else:
            verdict = "pass"
        reasons = unit.incomplete + [f"{p['name']}: {p['reason']}" for p in params if p["verdict"] == "incomplete"]
        record = {
            "kind": "unit",
            "serial": unit.serial,
            "lot": unit.lot,
            "station": self.cfg.name,
            "device": self.cfg.device,
            "operator": unit.operator,
            "started_at": unit.started_at,
            "ended_at": ts,
            "cycle_time": (ts - unit.started_at) / 1e6,
            "parameters": params,
            "verdict": verdict,
            "reasons": reasons,
            "config_version": self.config_version,
        }
        units.append(record)
        self.units_done += 1
        if verdict == "incomplete":
            events.append(Event("unit_incomplete", ts, self.cfg.device, self.cfg.name, {
                "serial": unit.serial, "operator": unit.operator, "started_at": unit.started_at,
                "reason": "; ".join(reasons)}))

    def _finish_param(self, ps: _ParamState, unit: _Unit, ts: int, events: list[Event],
                      truncated: str | None = None) -> dict[str, Any]:
        p = ps.spec
        value: Any = ps.value
        if p.reduce == "cycle_time":
            value = (ts - unit.started_at) / 1e6
        elif p.reduce == "mean":
            value = ps.total / ps.count if ps.count else None
        elif p.reduce == "true_duration":
            value = ps.true_us / 1e6 if ps.last_ts is not None else None
        elif p.reduce == "trace":
            value = _downsample(ps.trace, p.points) if ps.trace else None
        out: dict[str, Any] = {"name": p.name, "reduce": p.reduce, "tag": p.tag, "value": value, "unit": p.unit,
                               "low": p.limits.low if p.limits else None,
                               "high": p.limits.high if p.limits else None, "spec": p.spec}
        missing = value is None or (p.reduce != "cycle_time" and ps.count == 0)
        if ps.reason and (missing or p.reduce in ("min", "max", "mean", "trace", "true_duration")):
            out["verdict"], out["reason"] = "incomplete", ps.reason
        elif missing:
            out["verdict"], out["reason"] = "incomplete", f"no value of {p.tag} during the unit"
        elif ps.breached is not None:
            out["verdict"], out["reason"] = "fail", f"{ps.breached[0]} limit {ps.breached[1]:g} breached"
        elif truncated and p.reduce not in ("start", "at"):
            # A value over part of a cycle is not the unit's value: neither pass nor fail.
            out["verdict"], out["reason"] = "incomplete", f"the unit ended early ({truncated})"
        elif p.limits is not None and p.reduce != "trace" and _is_number(value) and (b := p.limits.breach(value)):
            out["verdict"], out["reason"] = "fail", f"{b[0]} limit {b[1]:g} breached"
            events.append(self._nc_event(ps, value, b, ts, during_cycle=False, unit=unit))
        else:
            out["verdict"], out["reason"] = "pass", None
        if out["verdict"] == "pass" and p.limits is None:
            out["verdict"] = "recorded"
        return out

    def _nc_event(self, ps: _ParamState, value: Any, breach: tuple[str, float], ts: int, *, during_cycle: bool,
                  unit: _Unit | None = None) -> Event:
        unit = unit or self.unit
        p = ps.spec
        log.warning("non-conformance", station=self.cfg.name, serial=unit.serial, parameter=p.name, value=value,
                    limit=breach[0], limit_value=breach[1])
        return Event("nonconformance", ts, self.cfg.device, self.cfg.name, {
            "serial": unit.serial, "operator": unit.operator, "parameter": p.name, "reduce": p.reduce,
            "value": value, "limit": breach[0], "limit_value": breach[1], "unit": p.unit, "spec": p.spec,
            "unit_started_at": unit.started_at, "during_cycle": during_cycle,
        })


def _is_number(v: Any) -> bool:
    return (type(v) is int or type(v) is float) and not (type(v) is float and math.isnan(v))


def _downsample(trace: list[tuple[int, Any]], points: int) -> list[list[Any]]:
    """At most `points` [seconds into the cycle, value] pairs, evenly picked, first and last kept."""
    if len(trace) > points:
        step = (len(trace) - 1) / (points - 1)
        trace = [trace[round(k * step)] for k in range(points)]
    return [[off / 1e6, v] for off, v in trace]


class CaptureEngine:
    """Every station of the line; routes each batch to the stations of its device."""

    def __init__(self, config: LineConfig) -> None:
        version = config_version(config)
        self.by_device: dict[str, list[StationAssembler]] = {}
        for station in config.stations:
            self.by_device.setdefault(station.device, []).append(StationAssembler(station, version))

    def feed(self, batch: SampleBatch) -> tuple[list[dict[str, Any]], list[Event]]:
        stations = self.by_device.get(batch.device)
        if not stations:
            return [], []
        units: list[dict[str, Any]] = []
        events: list[Event] = []
        for station in stations:
            u, e = station.feed(batch)
            units.extend(u)
            events.extend(e)
        return units, events
