"""A heat-sealing station as a deterministic, time-driven process model (no protocol in here).

The Modbus simulator (`modbus_server.py`) and, later, the OPC UA simulator serve the same model.

Timeline of one unit (all times in *model seconds*; `step(now)` moves the model to `now`)::

    ... idle (idle_time) | ramp (ramp_time) | hold (dwell) | idle ... | ramp | hold | ...
                         ^ unit starts: cycle_active rises, new serial appears
                                            ^ temperature at setpoint, pressure on
                                                           ^ unit ends: cycle_active falls,
                                                             unit_count += 1, dwell updated,
                                                             next unit's operator appears

- `cycle_active` is True while sealing (ramp + hold).
- temperature: `STANDBY_TEMPERATURE` while idle (cooling linearly back to it after a unit),
  a linear ramp to the unit's setpoint, then setpoint + bounded noise during the hold. The noise
  changes every `tick` model seconds, so the values a client can observe are exactly the values
  the ground truth's max/min/mean are computed from.
- pressure: the unit's pressure while sealing, 0.0 while idle.
- dwell: the hold time of the *last completed* unit (0.0 before the first one).
- serial: `{serial_prefix}{n:06d}` of the current unit while sealing, of the last one while idle.
- operator: a badge id from `OPERATORS`, changing every `units_per_operator` units; the badge of
  the next unit shows from the end of the previous unit (operators badge in before the cycle).
- film_lot: the pouch-film lot scanned for the unit (`PF-{yyww}-{nnnn}`), a new roll every
  `units_per_lot` units; like the badge, the next unit's lot shows from the end of the previous
  unit. Lots come from their own RNG (seeded from `seed`), so they change none of the other values.

Every unit is planned (drawn from the seeded RNG) when the previous one ends, in unit order, so the
produced units do not depend on how often `step` is called: the same seed gives the same units.
A share `out_of_limit_share` of the units is made out of limits: one parameter (temperature,
pressure or dwell, chosen at random among `out_of_limit_parameters`) is set beyond its high or low
limit by `out_of_limit_excess` (fractions of the tolerance band). In-limit units stay well inside.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

# --- Process constants ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limit:
    """The tolerance of one process parameter (inclusive)."""

    low: float
    high: float
    unit: str

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def span(self) -> float:
        return self.high - self.low


TEMPERATURE_LIMITS = Limit(175.0, 185.0, "degC")
PRESSURE_LIMITS = Limit(4.0, 6.0, "bar")
DWELL_LIMITS = Limit(1.0, 1.6, "s")
LIMITS: dict[str, Limit] = {
    "temperature": TEMPERATURE_LIMITS,
    "pressure": PRESSURE_LIMITS,
    "dwell": DWELL_LIMITS,
}

TEMPERATURE_SETPOINT = 180.0  # degC
PRESSURE_SETPOINT = 5.0  # bar
DWELL_SETPOINT = 1.3  # s
STANDBY_TEMPERATURE = 150.0  # degC, platen temperature between units

# In-limit units: how far from the setpoint a unit may land (uniform), and the hold noise bound.
TEMPERATURE_SPREAD = 2.0
TEMPERATURE_NOISE = 0.5  # |noise| <= this; standard deviation is a third of it
PRESSURE_SPREAD = 0.5
DWELL_SPREAD = 0.15

OPERATORS = ("OP-1042", "OP-1107", "OP-1215", "OP-1388", "OP-1420", "OP-1563")


class State(IntEnum):
    IDLE = 0
    RAMP = 1
    HOLD = 2


@dataclass(frozen=True, slots=True)
class StationSnapshot:
    """The station's current values, as any protocol server publishes them."""

    time: float  # model seconds
    state: State
    cycle_active: bool
    serial: str
    operator: str
    temperature: float  # degC
    pressure: float  # bar
    dwell: float  # s, hold time of the last completed unit
    unit_count: int  # completed units
    setpoint: float  # degC, the nominal temperature setpoint
    rejects: int  # completed units that were made out of limits (a PLC's reject counter)
    film_lot: str = ""  # pouch-film lot of the current (or next) unit


@dataclass(frozen=True, slots=True)
class UnitTruth:
    """Ground truth of one completed unit: what was really produced."""

    index: int  # 1-based unit number
    serial: str
    operator: str
    started_at: float  # model seconds: cycle_active rises
    hold_started_at: float
    ended_at: float  # cycle_active falls
    temperature_setpoint: float
    temperature_max: float  # over the hold (every tick value)
    temperature_min: float
    temperature_mean: float
    pressure: float
    dwell: float
    out_of_limit: bool
    out_of_limit_parameter: str | None  # "temperature" | "pressure" | "dwell"
    out_of_limit_direction: str | None  # "high" | "low"
    film_lot: str = ""  # the pouch-film lot the unit was sealed from

    @property
    def cycle_time(self) -> float:
        return self.ended_at - self.started_at

    def within_limits(self) -> dict[str, bool]:
        """Per parameter: is the produced value inside its limits (temperature: max and min)?"""
        return {
            "temperature": TEMPERATURE_LIMITS.contains(self.temperature_max)
            and TEMPERATURE_LIMITS.contains(self.temperature_min),
            "pressure": PRESSURE_LIMITS.contains(self.pressure),
            "dwell": DWELL_LIMITS.contains(self.dwell),
        }


@dataclass(frozen=True, slots=True)
class _Plan:
    index: int
    serial: str
    operator: str
    start: float
    hold_start: float
    end: float
    setpoint: float
    noise: tuple[float, ...]  # one value per tick of the hold
    pressure: float
    dwell: float
    out_of_limit: bool
    parameter: str | None
    direction: str | None
    film_lot: str

    def temperature_at_hold(self, t: float, tick: float) -> float:
        k = int((t - self.hold_start) / tick)
        return round(self.setpoint + self.noise[min(max(k, 0), len(self.noise) - 1)], 3)

    @property
    def final_temperature(self) -> float:
        return round(self.setpoint + self.noise[-1], 3)


class StationModel:
    """A deterministic heat-sealing station; see the module docstring for the timeline."""

    def __init__(
        self,
        seed: int = 1,
        cycle_time: float = 2.0,
        idle_time: float = 0.5,
        out_of_limit_share: float = 0.1,
        *,
        out_of_limit_parameters: Sequence[str] = ("temperature", "pressure", "dwell"),
        out_of_limit_excess: tuple[float, float] = (0.1, 0.5),
        serial_prefix: str = "SN-",
        first_serial: int = 1,
        units_per_operator: int = 20,
        units_per_lot: int = 25,
        tick: float = 0.05,
        start_time: float = 0.0,
        keep_units: int | None = None,
    ) -> None:
        """`cycle_time`: nominal sealing time (ramp + nominal dwell); the ramp takes
        `cycle_time - DWELL_SETPOINT`, at least 0.2 s (so a shorter cycle_time gives longer cycles).

        `keep_units`: how many completed units the ground truth keeps (None: all; a long-running
        CLI simulator should bound it).
        """
        if cycle_time <= 0:
            raise ValueError("cycle_time must be positive")
        if idle_time <= 0:
            raise ValueError("idle_time must be positive")
        if not 0.0 <= out_of_limit_share <= 1.0:
            raise ValueError("out_of_limit_share must be between 0 and 1")
        unknown = set(out_of_limit_parameters) - set(LIMITS)
        if unknown or not out_of_limit_parameters:
            raise ValueError(f"out_of_limit_parameters must be a non-empty subset of {sorted(LIMITS)}")
        if not 0 < out_of_limit_excess[0] <= out_of_limit_excess[1]:
            raise ValueError("out_of_limit_excess must be (low, high) with 0 < low <= high")
        if units_per_operator < 1 or units_per_lot < 1 or tick <= 0:
            raise ValueError("units_per_operator and units_per_lot must be >= 1 and tick > 0")
        self.seed = seed
        self.cycle_time = cycle_time
        self.idle_time = idle_time
        self.ramp_time = max(cycle_time - DWELL_SETPOINT, 0.2)
        self.out_of_limit_share = out_of_limit_share
        self.out_of_limit_parameters = tuple(out_of_limit_parameters)
        self.out_of_limit_excess = out_of_limit_excess
        self.serial_prefix = serial_prefix
        self.units_per_operator = units_per_operator
        self.tick = tick
        self._rng = random.Random(seed)
        self.units_per_lot = units_per_lot
        self._lot_rng = random.Random(f"film-lot:{seed}")  # its own: lots change no other value
        self._lot_week = self._lot_rng.randrange(2601, 2653)
        self._lot_number = self._lot_rng.randrange(1, 500)
        self._film_lot = self._lot_name()
        self._listeners: list[Callable[[UnitTruth], None]] = []
        self._next_serial = first_serial
        self._operator = self._rng.choice(OPERATORS)
        self._now = start_time
        self._unit_count = 0
        self._rejects = 0
        self._last: _Plan | None = None
        self._units: deque[UnitTruth] = deque(maxlen=keep_units)
        self._current = self._plan(start_time + idle_time)

    # --- planning ------------------------------------------------------------------------

    def _lot_name(self) -> str:
        return f"PF-{self._lot_week}-{self._lot_number:04d}"

    def _next_lot(self) -> str:
        self._lot_number += self._lot_rng.randrange(1, 4)  # rolls of one delivery, not all used here
        if self._lot_number > 9999 or self._lot_rng.random() < 0.1:  # a new delivery
            self._lot_week = 2601 + (self._lot_week - 2601 + 1) % 52
            self._lot_number = self._lot_rng.randrange(1, 500)
        return self._lot_name()

    def _plan(self, start: float) -> _Plan:
        rng = self._rng
        index = self._unit_count + 1
        if index > 1 and (index - 1) % self.units_per_operator == 0:
            self._operator = rng.choice([op for op in OPERATORS if op != self._operator])
        if index > 1 and (index - 1) % self.units_per_lot == 0:
            self._film_lot = self._next_lot()
        serial = f"{self.serial_prefix}{self._next_serial:06d}"
        self._next_serial += 1

        setpoint = TEMPERATURE_SETPOINT + rng.uniform(-TEMPERATURE_SPREAD, TEMPERATURE_SPREAD)
        pressure = PRESSURE_SETPOINT + rng.uniform(-PRESSURE_SPREAD, PRESSURE_SPREAD)
        dwell = DWELL_SETPOINT + rng.uniform(-DWELL_SPREAD, DWELL_SPREAD)
        out_of_limit = rng.random() < self.out_of_limit_share
        parameter = direction = None
        if out_of_limit:
            parameter = rng.choice(self.out_of_limit_parameters)
            direction = rng.choice(("high", "low"))
            limit = LIMITS[parameter]
            excess = rng.uniform(*self.out_of_limit_excess) * limit.span
            if parameter == "temperature":
                # Beyond the limit by `excess` even at the noise's worst.
                excess += TEMPERATURE_NOISE
            value = limit.high + excess if direction == "high" else limit.low - excess
            if parameter == "temperature":
                setpoint = value
            elif parameter == "pressure":
                pressure = max(value, 0.1)
            else:
                dwell = max(value, self.tick)
        setpoint = round(setpoint, 2)
        pressure = round(pressure, 3)
        dwell = round(dwell, 3)
        n = max(1, math.ceil(dwell / self.tick - 1e-9))
        sd = TEMPERATURE_NOISE / 3
        noise = tuple(
            round(min(max(rng.gauss(0.0, sd), -TEMPERATURE_NOISE), TEMPERATURE_NOISE), 3) for _ in range(n)
        )
        hold_start = start + self.ramp_time
        return _Plan(index, serial, self._operator, start, hold_start, hold_start + dwell, setpoint,
                     noise, pressure, dwell, out_of_limit, parameter, direction, self._film_lot)

    def _complete(self, plan: _Plan) -> None:
        temps = [round(plan.setpoint + n, 3) for n in plan.noise]
        self._units.append(
            UnitTruth(
                index=plan.index,
                serial=plan.serial,
                operator=plan.operator,
                started_at=plan.start,
                hold_started_at=plan.hold_start,
                ended_at=plan.end,
                temperature_setpoint=plan.setpoint,
                temperature_max=max(temps),
                temperature_min=min(temps),
                temperature_mean=sum(temps) / len(temps),
                pressure=plan.pressure,
                dwell=plan.dwell,
                out_of_limit=plan.out_of_limit,
                out_of_limit_parameter=plan.parameter,
                out_of_limit_direction=plan.direction,
                film_lot=plan.film_lot,
            )
        )
        self._unit_count += 1
        self._rejects += plan.out_of_limit
        self._last = plan
        for listener in self._listeners:
            listener(self._units[-1])

    def on_unit_done(self, listener: Callable[[UnitTruth], None]) -> None:
        """Call `listener(truth)` as each unit completes, in unit order (a downstream station)."""
        self._listeners.append(listener)

    # --- running -------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self._now

    def step(self, now: float) -> StationSnapshot:
        """Move the model to `now` (model seconds; never backwards) and return its values."""
        if now > self._now:
            self._now = now
            while now >= self._current.end:
                done = self._current
                self._complete(done)
                self._current = self._plan(done.end + self.idle_time)
        return self.snapshot()

    def run_until(self, units: int) -> list[UnitTruth]:
        """Advance (without serving) until `units` units are complete; return the ground truth."""
        while self._unit_count < units:
            self.step(self._current.end)
        return self.completed_units

    def snapshot(self) -> StationSnapshot:
        t = self._now
        cur, last = self._current, self._last
        if t < cur.start:
            state = State.IDLE
            serial = last.serial if last else ""
            operator = cur.operator
            pressure = 0.0
            if last is None:
                temperature = STANDBY_TEMPERATURE
            else:
                frac = min(max((t - last.end) / self.idle_time, 0.0), 1.0)
                temperature = round(last.final_temperature + (STANDBY_TEMPERATURE - last.final_temperature) * frac, 3)
        else:
            serial, operator, pressure = cur.serial, cur.operator, cur.pressure
            if t < cur.hold_start:
                state = State.RAMP
                frac = (t - cur.start) / self.ramp_time
                temperature = round(STANDBY_TEMPERATURE + (cur.setpoint - STANDBY_TEMPERATURE) * frac, 3)
            else:
                state = State.HOLD
                temperature = cur.temperature_at_hold(t, self.tick)
        return StationSnapshot(
            time=t,
            state=state,
            cycle_active=state is not State.IDLE,
            serial=serial,
            operator=operator,
            temperature=temperature,
            pressure=pressure,
            dwell=last.dwell if last else 0.0,
            unit_count=self._unit_count,
            setpoint=TEMPERATURE_SETPOINT,
            rejects=self._rejects,
            film_lot=cur.film_lot,
        )

    # --- ground truth --------------------------------------------------------------------

    @property
    def completed_units(self) -> list[UnitTruth]:
        """Every completed unit still kept (all of them unless `keep_units` was given)."""
        return list(self._units)

    def unit(self, serial: str) -> UnitTruth | None:
        for u in reversed(self._units):
            if u.serial == serial:
                return u
        return None

    @property
    def unit_count(self) -> int:
        return self._unit_count

    @property
    def next_unit_start(self) -> float:
        """When the current (or next) unit's sealing starts, in model seconds."""
        return self._current.start

    @property
    def next_unit_end(self) -> float:
        return self._current.end
