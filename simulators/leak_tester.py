"""A leak tester downstream of the heat sealer: the same serials, in the same order, tested after the
sealer (a deterministic, time-driven model like `station.py`; no protocol in here).

Every unit the sealer completes arrives at the tester `transfer_time` model seconds later and
waits in a queue (first in, first out). The tester takes the next unit at its arrival, but not
before `idle_time` after the previous test ended::

    ... idle | fill (fill_time) | measure (measure_time) | idle ...
             ^ test starts: cycle_active rises, the unit's serial appears
                                                        ^ test ends: cycle_active falls,
                                                          test_pressure, pressure_decay and
                                                          result of this unit latched,
                                                          unit_count += 1

- pressure (mbar): 0 while idle; a linear fill to the unit's test pressure; then, while measuring,
  a linear decay by the unit's pressure decay (a leak makes it decay more).
- test_pressure, pressure_decay: the last completed test's values (0 before the first), as a leak
  tester's PLC latches them at the end of the test; result: 0 none yet, 1 pass, 2 fail (the
  tester's own verdict against `LEAK_LIMITS`).
- serial: the unit under test while testing, the last tested while idle.
- operator: a badge from `LEAK_OPERATORS`, changing every `units_per_operator` tests; the next
  test's badge shows as soon as that test is planned.

Tests are planned in unit order from the tester's own RNG (seeded from `seed`), when the sealer
hands the unit over, so the same seed gives the same tests however often `step` is called. A share
`out_of_limit_share` of the tests is out of limits (a leak: decay above its limit, or a test
pressure outside its band); the sealer's own out-of-limit units leak with `sealer_reject_leak`.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from enum import IntEnum

from .station import Limit, StationModel, UnitTruth

TEST_PRESSURE_LIMITS = Limit(480.0, 520.0, "mbar")
DECAY_LIMITS = Limit(0.0, 2.0, "mbar")
LEAK_LIMITS: dict[str, Limit] = {"test_pressure": TEST_PRESSURE_LIMITS, "pressure_decay": DECAY_LIMITS}
TEST_PRESSURE_SETPOINT = 500.0  # mbar
TEST_PRESSURE_SPREAD = 8.0
DECAY_RANGE = (0.2, 1.2)  # mbar, a tight pouch
LEAK_OPERATORS = ("OP-2031", "OP-2118", "OP-2264", "OP-2307")


class LeakState(IntEnum):
    IDLE = 0
    FILL = 1
    MEASURE = 2


@dataclass(frozen=True, slots=True)
class LeakSnapshot:
    time: float
    state: LeakState
    cycle_active: bool
    serial: str
    operator: str
    pressure: float  # mbar, live
    test_pressure: float  # mbar, of the last completed test
    pressure_decay: float  # mbar, of the last completed test
    result: int  # 0 none yet, 1 pass, 2 fail (last completed test)
    unit_count: int
    rejects: int


@dataclass(frozen=True, slots=True)
class LeakTruth:
    """Ground truth of one completed leak test."""

    index: int
    serial: str
    operator: str
    arrived_at: float  # model seconds: handed over by the sealer + transfer
    started_at: float
    measure_started_at: float
    ended_at: float
    test_pressure: float
    pressure_decay: float
    out_of_limit: bool
    out_of_limit_parameter: str | None

    def within_limits(self) -> dict[str, bool]:
        return {name: limit.contains(getattr(self, name)) for name, limit in LEAK_LIMITS.items()}

    @property
    def passed(self) -> bool:
        return all(self.within_limits().values())


@dataclass(frozen=True, slots=True)
class _Test:
    truth: LeakTruth

    def pressure_at(self, t: float) -> float:
        u = self.truth
        if t < u.measure_started_at:
            return round(u.test_pressure * (t - u.started_at) / (u.measure_started_at - u.started_at), 3)
        frac = (t - u.measure_started_at) / (u.ended_at - u.measure_started_at)
        return round(u.test_pressure - u.pressure_decay * min(frac, 1.0), 3)


class LeakTesterModel:
    """A deterministic leak tester fed by `sealer`; see the module docstring."""

    def __init__(
        self,
        sealer: StationModel,
        seed: int = 1,
        *,
        transfer_time: float = 0.6,
        fill_time: float = 0.3,
        measure_time: float = 0.8,
        idle_time: float = 0.2,
        out_of_limit_share: float = 0.05,
        sealer_reject_leak: float = 0.5,
        units_per_operator: int = 20,
        keep_units: int | None = None,
    ) -> None:
        if min(transfer_time, fill_time, measure_time, idle_time) <= 0:
            raise ValueError("transfer_time, fill_time, measure_time and idle_time must be positive")
        if not (0.0 <= out_of_limit_share <= 1.0 and 0.0 <= sealer_reject_leak <= 1.0):
            raise ValueError("out_of_limit_share and sealer_reject_leak must be between 0 and 1")
        if units_per_operator < 1:
            raise ValueError("units_per_operator must be >= 1")
        self.sealer = sealer
        self.transfer_time, self.fill_time, self.measure_time, self.idle_time = (
            transfer_time, fill_time, measure_time, idle_time)
        self.out_of_limit_share = out_of_limit_share
        self.sealer_reject_leak = sealer_reject_leak
        self.units_per_operator = units_per_operator
        self._rng = random.Random(f"leak-tester:{seed}")
        self._operator = self._rng.choice(LEAK_OPERATORS)
        self._planned = 0
        self._free_at = sealer.now  # when the tester can start its next test
        self._plans: deque[_Test] = deque()  # planned, not yet complete (the first may be under way)
        self._last: LeakTruth | None = None
        self._units: deque[LeakTruth] = deque(maxlen=keep_units)
        self._unit_count = 0
        self._rejects = 0
        self._now = sealer.now
        sealer.on_unit_done(self._arrive)

    def _arrive(self, sealed: UnitTruth) -> None:
        rng = self._rng
        index = self._planned + 1
        self._planned = index
        if index > 1 and (index - 1) % self.units_per_operator == 0:
            self._operator = rng.choice([op for op in LEAK_OPERATORS if op != self._operator])
        arrived = sealed.ended_at + self.transfer_time
        start = max(arrived, self._free_at)
        pressure = TEST_PRESSURE_SETPOINT + rng.uniform(-TEST_PRESSURE_SPREAD, TEST_PRESSURE_SPREAD)
        decay = rng.uniform(*DECAY_RANGE)
        leak_share = self.sealer_reject_leak if sealed.out_of_limit else self.out_of_limit_share
        out = rng.random() < leak_share
        parameter = None
        if out:
            parameter = "pressure_decay" if rng.random() < 0.8 else "test_pressure"
            if parameter == "pressure_decay":  # a leak
                decay = DECAY_LIMITS.high + rng.uniform(0.2, 3.0)
            else:  # the fill did not reach its band (a gross leak or a bad seal of the fixture)
                pressure = TEST_PRESSURE_LIMITS.low - rng.uniform(5.0, 40.0)
        truth = LeakTruth(index=index, serial=sealed.serial, operator=self._operator, arrived_at=arrived,
                          started_at=start, measure_started_at=start + self.fill_time,
                          ended_at=start + self.fill_time + self.measure_time, test_pressure=round(pressure, 2),
                          pressure_decay=round(decay, 3), out_of_limit=out, out_of_limit_parameter=parameter)
        self._plans.append(_Test(truth))
        self._free_at = truth.ended_at + self.idle_time

    # --- running -------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self._now

    def step(self, now: float) -> LeakSnapshot:
        """Move the sealer and the tester to `now` (never backwards) and return the tester's values."""
        self.sealer.step(now)
        if now > self._now:
            self._now = now
        while self._plans and self._now >= self._plans[0].truth.ended_at:
            done = self._plans.popleft().truth
            self._units.append(done)
            self._unit_count += 1
            self._rejects += not done.passed
            self._last = done
        return self.snapshot()

    def run_until(self, units: int) -> list[LeakTruth]:
        """Advance (without serving) until `units` tests are complete; return the ground truth."""
        while self._unit_count < units:
            if self._plans:
                self.step(self._plans[0].truth.ended_at)
            else:
                self.step(self.sealer.next_unit_end)
        return self.completed_units

    def snapshot(self) -> LeakSnapshot:
        t, last = self._now, self._last
        cur = self._plans[0] if self._plans else None
        if cur is not None and t >= cur.truth.started_at:
            u = cur.truth
            state = LeakState.FILL if t < u.measure_started_at else LeakState.MEASURE
            serial, operator, pressure = u.serial, u.operator, cur.pressure_at(t)
        else:
            state, pressure = LeakState.IDLE, 0.0
            serial = last.serial if last else ""
            operator = cur.truth.operator if cur else self._operator
        return LeakSnapshot(
            time=t, state=state, cycle_active=state is not LeakState.IDLE, serial=serial, operator=operator,
            pressure=pressure, test_pressure=last.test_pressure if last else 0.0,
            pressure_decay=last.pressure_decay if last else 0.0,
            result=0 if last is None else 1 if last.passed else 2,
            unit_count=self._unit_count, rejects=self._rejects,
        )

    # --- ground truth --------------------------------------------------------------------

    @property
    def completed_units(self) -> list[LeakTruth]:
        return list(self._units)

    def unit(self, serial: str) -> LeakTruth | None:
        for u in reversed(self._units):
            if u.serial == serial:
                return u
        return None

    @property
    def unit_count(self) -> int:
        return self._unit_count
