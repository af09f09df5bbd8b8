"""Report by exception for polled tags: `deadband:` and `max_silence:` per tag, and as a device's default.

A sample is sent (buffered and published) when it moved beyond its deadband from the last *sent*
value, when its quality or bad reason changed, when it is the tag's first sample, or when the tag
has sent nothing for `max_silence`. Unit capture sees every poll whatever this says: it applies to
telemetry only (`linetap.agent.exception`).

- `{absolute: X}`: passes when |v - last sent| > X (engineering units).
- `{percent: Y}`: passes when |v - last sent| > Y/100 * |last sent|: a percent of the last sent
  value's magnitude (not of a range: Kepware and OPC UA take percent of the EU range, Telegraf and
  Ignition differ again; a polled Modbus tag has no range). A last sent value of 0 means any change.
- Boolean, bit and string tags pass on any change only: a deadband number on one is a config error
  (a device default deadband applies to its numeric tags; its other tags keep any-change).
- `max_silence` (default 60s once a tag has a deadband): a tag that does not move is still sent at
  least this often, so the MES can tell "unchanged" from "lost" together with the device's poll
  counter (the `$polls` sample, see `linetap.agent.exception`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from linetap.config.units import Duration

DEFAULT_MAX_SILENCE = 60.0  # seconds, when a deadband is given without max_silence


class Deadband(BaseModel):
    """How far a numeric tag must move from its last sent value to be sent again: exactly one of
    `absolute` (engineering units) or `percent` (of the last sent value's magnitude)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    absolute: float | None = Field(None, ge=0, allow_inf_nan=False,
                                   description="send when |value - last sent| > this (engineering units)")
    percent: float | None = Field(None, ge=0, allow_inf_nan=False,
                                  description="send when |value - last sent| > this percent of |last sent|")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.absolute is None) == (self.percent is None):
            raise ValueError("give exactly one of `absolute: X` or `percent: Y`")
        return self


class ExceptionFields(BaseModel):
    """The report-by-exception fields a polled tag and its device share (the tag's win)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deadband: Deadband | None = Field(
        None, description="report by exception: {absolute: X} or {percent: Y} (of the last sent value); "
        "telemetry only, unit capture sees every poll")
    max_silence: Duration | None = Field(
        None, gt=0, description="report by exception: send a tag that did not move at least this often "
        f"(default {DEFAULT_MAX_SILENCE:g}s when a deadband applies)")


@dataclass(frozen=True, slots=True)
class TagException:
    """The effective rule of one tag: `absolute`/`percent` None with `numeric` False or no deadband
    means any change; `max_silence` in seconds."""

    numeric: bool
    absolute: float | None
    percent: float | None
    max_silence: float


def effective(tag_fields: ExceptionFields, device_fields: ExceptionFields, numeric: bool) -> TagException | None:
    """The rule for one tag (tag settings over the device's), or None when neither sets anything
    (every sample of that tag is sent)."""
    deadband = tag_fields.deadband or device_fields.deadband
    silence = tag_fields.max_silence or device_fields.max_silence
    if deadband is None and silence is None:
        return None
    if not numeric:
        deadband = None  # any change: a device default deadband does not apply to bool or text tags
    return TagException(numeric, deadband.absolute if deadband else None, deadband.percent if deadband else None,
                        silence if silence is not None else DEFAULT_MAX_SILENCE)
