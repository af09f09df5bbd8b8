"""Units the agent did not see whole: resumed after a restart, or already running at its start.

Pure logic, no I/O. `capture.StationAssembler` asks three questions here:
- is the unit a previous agent started (its `unit_started` event has no unit record) still the
  unit in progress at the first poll? (`still_in_progress`)
- is a unit in progress at the agent's first poll of a station? (`in_progress_at_first_poll`)
- over the part of a cycle that was seen, is a parameter still decidable? (`undecidable`)

The decidability rule: a parameter of a unit not seen whole is judged only when the unseen part
of the cycle cannot change its verdict.
- `end`, `last`: taken at or near the end of the cycle, which was seen: decided as usual.
- `cycle_time`: start and end times are known for a resumed unit (the start is in its
  `unit_started` event): decided as usual; unknown for a unit that started before the agent.
- `at`: decided only if the moment `at` into the cycle falls in the part seen.
- `start`: never (the start was not seen by this agent).
- `max` above its high limit, `min` below its low limit, a `trace` point outside, a
  `true_duration` above its high limit: the unseen part can only make them worse, so a breach
  already seen is a fail. Anything else (in band so far, a `max` below its low limit, ...): not
  decidable, the parameter is `incomplete`.
- `mean`: never (a mean over part of the cycle is not the unit's mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from linetap.config.capture import Parameter, SerialSource, StationCapture, Trigger


@dataclass(frozen=True, slots=True)
class OpenUnit:
    """A unit a previous agent started and never closed, from its `unit_started` event."""

    station: str
    device: str | None
    serial: str | None
    lot: Any
    operator: Any
    started_at: int
    triggers: dict[str, Any]  # trigger tag -> its value when the unit started
    stopped_at: int  # the previous agent's last committed reading of the device (>= started_at)
    components: dict[str, Any] | None = None  # component name -> lot, read at the start

    @classmethod
    def from_event(cls, body: dict[str, Any], stopped_at: int | None) -> OpenUnit:
        started = int(body["started_at"])
        return cls(station=body["station"], device=body.get("device"), serial=body.get("serial"),
                   lot=body.get("lot"), operator=body.get("operator"), started_at=started,
                   triggers=dict(body.get("triggers") or {}),
                   stopped_at=max(started, stopped_at or started),
                   components=dict(body["components"]) if body.get("components") is not None else None)


def split_open_units(opened: list[dict[str, Any]], stopped_at: dict[str, int | None], stations: set[str]
                     ) -> tuple[dict[str, OpenUnit], list[tuple[OpenUnit, str]]]:
    """`unit_started` bodies of open units (oldest first) -> each configured station's latest, to resolve
    at its first poll, and the rest (older ones, stations no longer configured) with their config version,
    to close now: a station has one unit in progress at a time."""
    pending: dict[str, tuple[OpenUnit, str]] = {}
    stale: list[tuple[OpenUnit, str]] = []
    for body in opened:
        unit = OpenUnit.from_event(body, stopped_at.get(body.get("device")))
        item = (unit, body.get("config_version", ""))
        if unit.station not in stations:
            stale.append(item)
            continue
        if unit.station in pending:
            stale.append(pending[unit.station])
        pending[unit.station] = item
    stale.sort(key=lambda item: item[0].started_at)
    return {name: unit for name, (unit, _) in pending.items()}, stale


def orphan_station(unit: OpenUnit) -> StationCapture:
    """A station no longer in the config, rebuilt just enough to close its open unit."""
    return StationCapture(name=unit.station, device=unit.device or "?", serial=SerialSource(tag="serial"),
                          start=Trigger(tag="start", on="change"))


def _level(trig: Trigger, value: Any) -> Any:
    """What a trigger's tag says about the unit: a boolean's level for edges, the value itself else."""
    return bool(value) if trig.on in ("rising", "falling") else value


def still_in_progress(cfg: StationCapture, unit: OpenUnit, current: dict[str, Any], serial: str | None) -> bool:
    """The same unit (same serial) and no trigger tag moved past it: neither a new start nor its end."""
    if unit.serial is None or serial != unit.serial:
        return False
    for trig in (cfg.start, cfg.end_trigger):
        if trig is None:
            continue
        if trig.tag not in current:
            return False
        if trig.tag in unit.triggers:
            if _level(trig, current[trig.tag]) != _level(trig, unit.triggers[trig.tag]):
                return False
        elif not in_progress_at_first_poll(cfg, current):
            return False
    return True


def in_progress_at_first_poll(cfg: StationCapture, current: dict[str, Any]) -> bool:
    """Does the first poll show a unit under way? A rising (falling) start: its tag is true (false),
    and an end edge on another tag is not at its ended level. An increment/change start without an
    end trigger: a unit is always under way (the next start ends it). Otherwise: cannot tell, no."""
    start, end = cfg.start, cfg.end_trigger
    if start.tag not in current:
        return False
    if start.on in ("increment", "change"):
        return end is None
    active = bool(current[start.tag]) == (start.on == "rising")
    if active and end is not None and end.tag != start.tag and end.on in ("rising", "falling") \
            and end.tag in current:
        active = bool(current[end.tag]) != (end.on == "rising")
    return active


def undecidable(spec: Parameter, value: Any, breached: bool, *, start_known: bool, started_at: int,
                seen_from: int) -> str | None:
    """Why a parameter of a unit seen from `seen_from` on cannot be judged, or None if it can."""
    r = spec.reduce
    if r in ("end", "last"):
        return None
    if r == "cycle_time":
        return None if start_known else "the start of the cycle was not seen"
    if r == "at":
        if start_known and started_at + spec.at * 1e6 >= seen_from:
            return None
        return f"the value {spec.at:g}s into the cycle was not seen"
    if r == "start":
        return "the start of the cycle was not seen"
    if r in ("max", "min", "trace") and breached:
        return None  # a breach already seen: the unseen part cannot undo it
    if r == "true_duration" and spec.limits is not None and spec.limits.high is not None \
            and isinstance(value, (int, float)) and spec.limits.breach(value) is not None \
            and spec.limits.breach(value)[0] == "high":
        return None  # a duration only grows
    return f"{r} over part of the cycle only: not decidable"
