"""One station's unit assembly: the state machine idle <-> unit in progress, its parameters'
reductions and verdicts, and the non-conformance events (see `linetap.agent.capture`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import structlog

from linetap.agent import unit_resume as resume
from linetap.buffers.records import Event
from linetap.config.capture import Parameter, StationCapture, Trigger
from linetap.drivers.samples import Quality, SampleBatch, TagNames, json_number

log = structlog.get_logger("linetap.capture")

REALTIME_REDUCTIONS = ("min", "max", "trace")  # a breach is certain as soon as one sample is out


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
    components: dict[str, Any] | None = None  # component name -> its lot (stations with `components:`)
    incomplete: list[str] = field(default_factory=list)
    seen_from: int | None = None  # first poll seen, when the agent missed the cycle's beginning
    interrupted: dict[str, int] | None = None  # resumed after a restart: {"from", "to"} without data
    before_agent: bool = False  # already under way at the agent's first poll: the start is unknown
    after_loss: bool = False  # ... at the first poll after the device came back (before_agent is set too)
    serial_changed: bool = False  # opened when the serial changed mid-cycle (before_agent is set too)
    lost: bool = False  # closed at a restart without any data (no longer in progress)


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
        self.pending: resume.OpenUnit | None = None  # a unit a previous agent left open, resolved at the first poll
        self._first = True  # no good value of the start tag seen yet since the agent started (or the device came back)
        self._after_loss = False  # _first was re-armed by a lost device, not by the agent's start
        self._closed_serial: str | None = None  # a left-open unit closed at the restart: not opened again
        self._index_of: tuple[Any, dict[str, int]] = (None, {})  # (batch.tag, this station's tag -> position)
        self.successor: StationAssembler | None = None  # a reloaded definition, waiting for the unit in progress

    def taking_over(self, idle: StationAssembler) -> StationAssembler:
        """This (new) definition of a station takes over from `idle`, between units: the edge
        detection goes on from the values already seen, so the next start is not missed."""
        self._prev, self._current, self.units_done = idle._prev, idle._current, idle.units_done
        self._first, self._after_loss, self._closed_serial = idle._first, idle._after_loss, idle._closed_serial
        return self

    # -- feeding --------------------------------------------------------------------------

    def _positions(self, names: Any) -> dict[str, int]:
        """Where this station's tags are in a batch. A driver gives every batch the same `TagNames`:
        the positions are found once, not per poll (a device may have a thousand bulk tags)."""
        seen, idx = self._index_of
        if names is not seen:
            idx = {t: i for i, t in enumerate(names) if t in self.tags}
            if isinstance(names, TagNames):
                self._index_of = (names, idx)
        return idx

    def feed(self, batch: SampleBatch) -> tuple[list[dict[str, Any]], list[Event]]:
        """Samples of the station's device in; finished unit records and events out."""
        units: list[dict[str, Any]] = []
        events: list[Event] = []
        idx = self._positions(batch.tag)
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

        if self.pending is not None and all(quality[i] == Quality.BAD for i in idx.values()):
            self._resolve(None, ts, units, events, f"device {batch.device} unreachable: "
                          + next((batch.reason[i] for i in idx.values() if batch.reason[i]), "no data"))
        # A device that is gone ends the unit in progress: its data cannot be complete. When it comes
        # back, its first poll is treated like the agent's first: a unit under way then is recorded
        # from there (its start unseen), never dropped; the unit just closed is not opened again.
        if all(quality[i] == Quality.BAD for i in idx.values()):
            if self.unit is not None:
                reason = next((batch.reason[i] for i in idx.values() if batch.reason[i]), "no data")
                self._closed_serial = self.unit.serial
                self._close(ts, units, events, incomplete=f"device {batch.device} lost mid-cycle: {reason}")
            self._prev.clear()
            if not self._first:
                self._first, self._after_loss = True, True
            return units, events

        fired_end = self.end is not None and self._fired(self.end, idx, values, good)
        fired_start = self._fired(self.start, idx, values, good)
        for tag, i in idx.items():
            if quality[i] != Quality.BAD:
                self._current[tag] = values[i]
        if self._first and good(self.start.tag):
            self._first = False
            if self.pending is not None:
                self._resolve(self._serial(), ts, units, events)
            if self.unit is None and resume.in_progress_at_first_poll(self.cfg, self._current) \
                    and (self._closed_serial is None or self._serial() != self._closed_serial):
                self._open(ts, events, before_agent=True)
            self._after_loss = False

        if self.unit is not None and not (fired_end or fired_start) and self._serial_changed(idx, good):
            # the cycle's end and the next start fell between two polls (or the PLC moved on)
            new, old = self._serial(), self.unit.serial
            log.warning("serial changed mid-cycle: unit closed, a new one opened", station=self.cfg.name,
                        serial=old, new_serial=new)
            self._close(ts, units, events, incomplete=f"serial changed to {new} while {self.start.tag} "
                        "stayed on: the end of this unit was not seen")
            self._open(ts, events, before_agent=True, serial_changed=True)
            fired_start = False
        if self.unit is not None and (fired_end or (self.end is None and fired_start)):
            self._feed_end_values(idx, values, quality, batch.reason, ts)
            self._close(ts, units, events)
        elif self.unit is not None:
            self._feed_params(idx, values, quality, batch.reason, ts, events)
            if ts - self.unit.started_at > self.cfg.timeout * 1e6:
                self._close(ts, units, events, incomplete=f"unit did not end within {self.cfg.timeout:g}s")
        if fired_start and self.unit is None:
            self._open(ts, events)
            self._feed_params(idx, values, quality, batch.reason, ts, events)

        for tag in (self.start.tag, self.end.tag if self.end else None):
            if tag is not None and good(tag):
                self._prev[tag] = values[idx[tag]]
        return units, events

    def _serial_changed(self, idx, good) -> bool:
        if not self.cfg.serial.new_serial_ends_unit or self.unit.serial is None or not good(self.cfg.serial.tag):
            return False
        new = self._serial()
        return new is not None and new != self.unit.serial

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

    def _serial(self) -> str | None:
        cfg = self.cfg
        serial = self._current.get(cfg.serial.tag)
        if serial is not None and cfg.serial.format:
            try:
                serial = cfg.serial.format.format(serial)
            except (ValueError, TypeError) as exc:
                log.warning("serial format failed", station=cfg.name, serial=serial, error=str(exc))
        return None if serial is None else str(serial)

    def _open(self, ts: int, events: list[Event], *, before_agent: bool = False, serial_changed: bool = False) -> None:
        cfg = self.cfg
        serial = self._serial()
        operator = cfg.operator.value if cfg.operator and cfg.operator.value is not None else (
            self._current.get(cfg.operator.tag) if cfg.operator else None)
        self.unit = _Unit(
            serial=serial,
            lot=self._current.get(cfg.lot) if cfg.lot else None,
            components={name: self._current.get(tag) for name, tag in cfg.components.items()} or None,
            operator=operator,
            started_at=ts,
            params=[_ParamState(p) for p in cfg.parameters],
            seen_from=ts if before_agent else None,
            before_agent=before_agent,
            after_loss=before_agent and self._after_loss and not serial_changed,
            serial_changed=serial_changed,
        )
        if serial is None:
            self.unit.incomplete.append("serial number unknown at unit start")
        triggers = {t.tag: self._current[t.tag] for t in (self.start, self.end)
                    if t is not None and t.tag in self._current}
        data = {"serial": serial, "lot": self.unit.lot, "operator": operator, "started_at": ts,
                "triggers": triggers, "config_version": self.config_version}
        if self.unit.components is not None:
            data["components"] = self.unit.components
        if serial_changed:
            data["serial_changed_mid_cycle"] = True
        elif self.unit.after_loss:
            data["started_while_device_lost"] = True
            log.info("unit already under way when the device came back", station=cfg.name, serial=serial)
        elif before_agent:
            data["started_before_agent"] = True
            log.info("unit already under way at the agent's start", station=cfg.name, serial=serial)
        events.append(Event("unit_started", ts, cfg.device, cfg.name, data))

    def _resolve(self, serial: str | None, ts: int, units: list, events: list, why: str | None = None) -> None:
        """The unit a previous agent left open: resumed if it is still the unit in progress, else closed."""
        p, self.pending = self.pending, None
        self.unit = _Unit(serial=p.serial, lot=p.lot, operator=p.operator, started_at=p.started_at,
                          params=[_ParamState(s) for s in self.cfg.parameters], components=p.components, seen_from=ts,
                          interrupted={"from": p.stopped_at, "to": ts})
        if why is None and resume.still_in_progress(self.cfg, p, self._current, serial):
            log.warning("unit resumed after an agent restart", station=self.cfg.name, serial=p.serial,
                        missed_s=(ts - p.stopped_at) / 1e6)
            return
        log.warning("unit left open by an agent restart closed as incomplete", station=self.cfg.name,
                    serial=p.serial, seen_serial=serial, reason=why)
        self.unit.lost = True
        self._closed_serial = p.serial
        self._close(ts, units, events, incomplete="agent restarted")

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
            if unit.seen_from is not None and r in ("start", "at") and resume.undecidable(
                    p, None, False, start_known=not unit.before_agent, started_at=unit.started_at,
                    seen_from=unit.seen_from):
                continue  # its moment was not seen: never take a later value for it
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
        if unit.lost:
            reasons = unit.incomplete
        elif verdict == "incomplete" and unit.interrupted:
            reasons.insert(0, "agent restarted mid-cycle: no data from {from} to {to}".format(**unit.interrupted))
        elif verdict == "incomplete" and unit.serial_changed:
            reasons.insert(0, "serial changed while the start trigger stayed on: this unit's start was not seen")
        elif verdict == "incomplete" and unit.after_loss:
            reasons.insert(0, f"unit started while device {self.cfg.device} was unreachable: its start was not seen")
        elif verdict == "incomplete" and unit.before_agent:
            reasons.insert(0, "unit started before the agent: its start was not seen")
        ended = None if unit.lost else ts
        record = {
            "kind": "unit",
            "serial": unit.serial,
            "lot": unit.lot,
            "station": self.cfg.name,
            "device": self.cfg.device,
            "operator": unit.operator,
            "started_at": unit.started_at,
            "ended_at": ended,
            "cycle_time": None if unit.lost or unit.before_agent else (ts - unit.started_at) / 1e6,
            "parameters": params,
            "verdict": verdict,
            "reasons": reasons,
            "config_version": self.config_version,
        }
        if unit.components is not None:
            record["components"] = unit.components
        if unit.interrupted:
            record["interrupted"] = unit.interrupted
        if unit.serial_changed:
            record["serial_changed_mid_cycle"] = True
        elif unit.after_loss:
            record["started_while_device_lost"] = True
        elif unit.before_agent:
            record["started_before_agent"] = True
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
            value = None if unit.before_agent else (ts - unit.started_at) / 1e6
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
        partial = None if unit.seen_from is None else resume.undecidable(
            p, value, ps.breached is not None, start_known=not unit.before_agent, started_at=unit.started_at,
            seen_from=unit.seen_from)
        if unit.lost:
            out["value"] = None
            out["verdict"], out["reason"] = "incomplete", "not seen: agent restarted"
        elif ps.reason and (missing or p.reduce in ("min", "max", "mean", "trace", "true_duration")):
            out["verdict"], out["reason"] = "incomplete", ps.reason
        elif partial:
            out["verdict"], out["reason"] = "incomplete", partial
        elif missing:
            out["verdict"], out["reason"] = "incomplete", f"no value of {p.tag} during the unit"
        elif ps.breached is not None:
            out["verdict"], out["reason"] = "fail", f"{ps.breached[0]} limit {ps.breached[1]:g} breached"
        elif truncated and p.reduce not in ("start", "at"):
            # A value over part of a cycle is not the unit's value: neither pass nor fail.
            out["verdict"], out["reason"] = "incomplete", f"the unit ended early ({truncated})"
        elif p.limits is not None and p.reduce != "trace" and not _is_number(value) and type(value) is not bool:
            # a NaN (or a text) is outside no limit, and inside none either: never a pass
            out["verdict"], out["reason"] = "incomplete", f"{p.tag} gave {json_number(value)!r}, not a number: " \
                                                          "cannot be judged against the limits"
        elif p.limits is not None and p.reduce != "trace" and (b := p.limits.breach(value)):
            out["verdict"], out["reason"] = "fail", f"{b[0]} limit {b[1]:g} breached"
            events.append(self._nc_event(ps, value, b, ts, during_cycle=False, unit=unit))
        else:
            out["verdict"], out["reason"] = "pass", None
        if out["verdict"] == "pass" and p.limits is None:
            out["verdict"] = "recorded"
        out["value"] = _json_value(out["value"])
        return out

    def _nc_event(self, ps: _ParamState, value: Any, breach: tuple[str, float], ts: int, *, during_cycle: bool,
                  unit: _Unit | None = None) -> Event:
        unit = unit or self.unit
        p = ps.spec
        log.warning("non-conformance", station=self.cfg.name, serial=unit.serial, parameter=p.name, value=value,
                    limit=breach[0], limit_value=breach[1])
        return Event("nonconformance", ts, self.cfg.device, self.cfg.name, {
            "serial": unit.serial, "operator": unit.operator, "parameter": p.name, "reduce": p.reduce,
            "value": json_number(value), "limit": breach[0], "limit_value": breach[1], "unit": p.unit,
            "spec": p.spec,
            "unit_started_at": unit.started_at, "during_cycle": during_cycle,
        })


def _json_value(value: Any) -> Any:
    """A parameter value for the record body: non-finite floats as text (also inside a trace)."""
    if type(value) is list:
        return [[t, json_number(v)] for t, v in value]
    return json_number(value)


def _is_number(v: Any) -> bool:
    return (type(v) is int or type(v) is float) and not (type(v) is float and math.isnan(v))


def _downsample(trace: list[tuple[int, Any]], points: int) -> list[list[Any]]:
    """At most `points` [seconds into the cycle, value] pairs, evenly picked, first and last kept."""
    if len(trace) > points:
        step = (len(trace) - 1) / (points - 1)
        trace = [trace[round(k * step)] for k in range(points)]
    return [[off / 1e6, v] for off, v in trace]
