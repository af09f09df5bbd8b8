"""How a station's units are captured (eDHR): identity, operator, boundaries, parameters, limits."""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .issues import At, unique_names
from .units import Duration

_COMPONENT_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Trigger(Strict):
    """A unit boundary: an edge of a boolean tag, a counter's increment, or a value change (e.g. serial)."""

    tag: str = Field(description="tag of the station's device")
    on: Literal["rising", "falling", "increment", "change"] = Field(
        description="rising/falling edge of a boolean, increment of a counter, change of any value")


class SerialSource(Strict):
    tag: str = Field(description="tag holding the unit's serial number")
    format: str | None = Field(None, description="for a numeric serial, e.g. 'SN-{:06d}'")
    new_serial_ends_unit: bool = Field(
        True, description="a serial that changes while the start trigger stays on ends the unit in "
        "progress (incomplete: its end was not seen) and starts one for the new serial: two polls "
        "that straddle a cycle's end and the next start would otherwise make one record of two "
        "units. Set false where the PLC shows the next serial before the current cycle ends")


class OperatorSource(Strict):
    tag: str | None = Field(None, description="tag holding the operator's badge id")
    value: str | None = Field(None, description="a fixed operator for this station (e.g. set per shift)")

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.tag is None) == (self.value is None):
            raise ValueError("give either tag or value for the operator")
        return self


class Limits(Strict):
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = Field(True, description="a value equal to low passes")
    high_inclusive: bool = Field(True, description="a value equal to high passes")

    @model_validator(mode="after")
    def _some(self) -> Self:
        if self.low is None and self.high is None:
            raise ValueError("limits need low, high or both")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        return self

    def breach(self, value: float) -> tuple[str, float] | None:
        """('low'|'high', the limit) when value is outside, else None."""
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return "low", self.low
        if self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)):
            return "high", self.high
        return None


Reduction = Literal["start", "end", "last", "at", "min", "max", "mean", "true_duration", "cycle_time", "trace"]


class Parameter(Strict):
    """One process parameter of a unit, reduced from a tag over the unit's cycle."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    tag: str | None = Field(None, description="source tag (not needed for cycle_time)")
    reduce: Reduction = Field(
        description="start: value when the unit starts; end: value when the end trigger fires (results "
        "a PLC latches at cycle end); last: last value during the cycle; at: value at `at` into the cycle; "
        "min/max/mean over the cycle; true_duration: seconds a boolean was true; cycle_time; "
        "trace: the values over the cycle, downsampled to `points`")
    at: Duration | None = Field(None, description="offset into the cycle, for reduce: at")
    points: int = Field(50, ge=2, le=10_000, description="most points kept, for reduce: trace")
    unit: str | None = None
    limits: Limits | None = None
    spec: str | None = Field(None, description="specification and revision the limits come from")

    @model_validator(mode="after")
    def _fits(self) -> Self:
        if self.reduce == "cycle_time":
            if self.tag is not None:
                raise ValueError("cycle_time needs no tag")
        elif self.tag is None:
            raise ValueError(f"reduce: {self.reduce} needs a tag")
        if (self.reduce == "at") != (self.at is not None):
            raise ValueError("`at` goes with reduce: at, and reduce: at needs `at`")
        return self


class StationCapture(Strict):
    """The unit capture of one station, from the tags of one device."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", description="station name (topic level, record field)")
    device: str = Field(description="the device whose tags describe this station")
    serial: SerialSource
    lot: str | None = Field(None, description="tag holding the lot / work order")
    components: dict[str, str] = Field(
        default_factory=dict, description="genealogy: component name -> tag holding the lot (or serial) of "
        "that component, read when the unit starts, e.g. {pouch_film: film_lot}")
    operator: OperatorSource | None = None
    start: Trigger
    end: Trigger | None = Field(None, description="default: the opposite edge of a rising/falling start; "
                                                  "for increment/change starts, the next start ends the unit")
    timeout: Duration = Field(120.0, gt=0, description="a unit still open after this long ends as incomplete")
    parameters: list[Parameter] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        unique_names(self.parameters, "parameters", "parameter")
        for name in self.components:
            if not _COMPONENT_NAME.fullmatch(name):
                raise At(("components", name), f"component name {name!r}: use letters, digits, _ . -")
        return self

    @property
    def end_trigger(self) -> Trigger | None:
        if self.end is not None:
            return self.end
        if self.start.on in ("rising", "falling"):
            return Trigger(tag=self.start.tag, on="falling" if self.start.on == "rising" else "rising")
        return None

    def tag_refs(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Where each tag is named in this station (a path from the station) and the tag."""
        out: list[tuple[tuple[str | int, ...], str]] = [(("serial", "tag"), self.serial.tag),
                                                       (("start", "tag"), self.start.tag)]
        if self.end is not None:
            out.append((("end", "tag"), self.end.tag))
        if self.lot:
            out.append((("lot",), self.lot))
        out.extend((("components", name), tag) for name, tag in self.components.items())
        if self.operator and self.operator.tag:
            out.append((("operator", "tag"), self.operator.tag))
        out.extend((("parameters", i, "tag"), p.tag) for i, p in enumerate(self.parameters) if p.tag)
        return out

    def tags(self) -> set[str]:
        out = {self.serial.tag, self.start.tag}
        if self.end is not None:
            out.add(self.end.tag)
        if self.lot:
            out.add(self.lot)
        out.update(self.components.values())
        if self.operator and self.operator.tag:
            out.add(self.operator.tag)
        out.update(p.tag for p in self.parameters if p.tag)
        return out
