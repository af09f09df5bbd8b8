"""The heat-sealing station model: deterministic, the configured share of bad units, and ground
truth that matches what the Modbus simulator serves."""

from __future__ import annotations

import pytest
from fixtures_sim import ModelClock

from linetap.config.devices.modbus import ModbusDeviceConfig
from linetap.drivers.modbus import ModbusDriver
from linetap.drivers.samples import Quality
from linetap.simulators import (
    DWELL_LIMITS,
    OPERATORS,
    PRESSURE_LIMITS,
    STATION_TAGS,
    TEMPERATURE_LIMITS,
    ModbusStationServer,
    State,
    StationModel,
)


def test_same_seed_same_units_however_often_it_is_stepped() -> None:
    a = StationModel(seed=42)
    a.run_until(50)
    b = StationModel(seed=42)
    t = 0.0
    while b.unit_count < 50:
        t += 0.013
        b.step(t)
    assert a.completed_units == b.completed_units[:50]
    other = StationModel(seed=43).run_until(50)
    assert [u.temperature_setpoint for u in other] != [u.temperature_setpoint for u in a.completed_units]


@pytest.mark.parametrize("share", [0.0, 0.1, 0.3])
def test_configured_share_of_out_of_limit_units(share: float) -> None:
    units = StationModel(seed=5, out_of_limit_share=share).run_until(2000)
    made_bad = [u for u in units if u.out_of_limit]
    assert len(made_bad) / len(units) == pytest.approx(share, abs=0.025)
    # Made out of limits <=> the produced values are outside the limits, on the named parameter.
    for u in units:
        within = u.within_limits()
        if u.out_of_limit:
            assert not within[u.out_of_limit_parameter]
            assert [k for k, ok in within.items() if not ok] == [u.out_of_limit_parameter]
        else:
            assert all(within.values()), u
    if share:
        assert {u.out_of_limit_parameter for u in made_bad} == {"temperature", "pressure", "dwell"}
        assert {u.out_of_limit_direction for u in made_bad} == {"high", "low"}


def test_only_chosen_parameters_go_out_of_limits() -> None:
    units = StationModel(seed=1, out_of_limit_share=0.5, out_of_limit_parameters=["pressure"]).run_until(200)
    assert {u.out_of_limit_parameter for u in units if u.out_of_limit} == {"pressure"}


def test_unit_timeline_and_identity(station_model: StationModel) -> None:
    m = station_model
    assert m.step(0.0).state is State.IDLE and m.snapshot().serial == ""
    start = m.next_unit_start
    snap = m.step(start)
    assert snap.cycle_active and snap.state is State.RAMP and snap.serial == "SN-000001"
    assert snap.pressure > 0 and snap.temperature == pytest.approx(150.0)
    snap = m.step(start + m.ramp_time + 0.01)
    assert snap.state is State.HOLD and TEMPERATURE_LIMITS.low - 6 < snap.temperature < TEMPERATURE_LIMITS.high + 6
    end = m.next_unit_end
    snap = m.step(end)
    assert not snap.cycle_active and snap.unit_count == 1 and snap.pressure == 0.0
    truth = m.completed_units[0]
    assert snap.dwell == truth.dwell and snap.serial == truth.serial == "SN-000001"
    assert truth.cycle_time == pytest.approx(m.ramp_time + truth.dwell)
    assert truth.temperature_min <= truth.temperature_mean <= truth.temperature_max
    units = m.run_until(65)
    assert [u.serial for u in units] == [f"SN-{i:06d}" for i in range(1, 66)]
    operators = [u.operator for u in units]
    assert all(op in OPERATORS for op in operators)
    # Badges change every 20 units, never to the same badge.
    assert len(set(operators[:20])) == 1 and operators[19] != operators[20] and len(set(operators[20:40])) == 1
    assert all(units[i].started_at - units[i - 1].ended_at == pytest.approx(m.idle_time) for i in range(1, 65))


def test_limits_are_constants() -> None:
    assert (TEMPERATURE_LIMITS.low, TEMPERATURE_LIMITS.high) == (175.0, 185.0)
    assert (PRESSURE_LIMITS.low, PRESSURE_LIMITS.high) == (4.0, 6.0)
    assert (DWELL_LIMITS.low, DWELL_LIMITS.high) == (1.0, 1.6)


def test_serial_prefix_and_bounded_history() -> None:
    m = StationModel(seed=1, serial_prefix="LOT7-", first_serial=41, keep_units=10)
    units = m.run_until(30)
    assert len(units) == 10 and units[-1].serial == "LOT7-000070" and m.unit_count == 30


async def test_ground_truth_matches_what_is_served_over_modbus() -> None:
    """Step the model tick by tick, read every tick through the driver: the served values are
    the ground truth's."""
    model = StationModel(seed=11, out_of_limit_share=0.3)
    clock = ModelClock()
    server = ModbusStationServer(model, clock=clock)
    await server.start()
    driver = ModbusDriver(ModbusDeviceConfig(protocol="modbus", name="sealer1", host="127.0.0.1",
                                             port=server.port, addressing="zero_based", tags=STATION_TAGS))
    await driver.connect()
    try:
        seen: dict[str, list[float]] = {}
        last_count = 0

        async def read_at(t: float) -> dict:
            clock.t = t
            batch = await driver.read()
            assert set(batch.quality) == {Quality.GOOD}
            return dict(zip(batch.tag, batch.value, strict=True))

        while model.unit_count < 6:
            start, end = model.next_unit_start, model.next_unit_end
            hold = start + model.ramp_time
            # idle, the rising edge, the ramp, every tick of the hold, the falling edge
            times = [start - 0.2, start + 1e-6, start + model.ramp_time / 2]
            times += [hold + k * model.tick + 1e-6 for k in range(int((end - hold) / model.tick) + 1)]
            for t in [t for t in times if t < end] + [end + 1e-6]:
                v = await read_at(t)
                assert v["cycle_active"] == (v["state"] != State.IDLE)
                if v["state"] == State.HOLD:
                    seen.setdefault(v["serial"], []).append(v["temperature"])
                if v["unit_count"] != last_count:  # a unit just ended: its latched results are served
                    assert v["unit_count"] == last_count + 1
                    last_count = v["unit_count"]
                    truth = model.completed_units[-1]
                    assert v["serial"] == truth.serial and v["cycle_active"] is False
                    assert v["dwell"] == pytest.approx(truth.dwell, abs=1e-6)
                    assert v["rejects"] == sum(u.out_of_limit for u in model.completed_units)
                    assert v["operator"] == model.snapshot().operator
        assert len(seen) == 6
        for truth in model.completed_units:
            temps = seen[truth.serial]
            # Every tick of the hold was observed once: the truth's statistics (float32 on the wire).
            assert max(temps) == pytest.approx(truth.temperature_max, abs=1e-4)
            assert min(temps) == pytest.approx(truth.temperature_min, abs=1e-4)
            assert sum(temps) / len(temps) == pytest.approx(truth.temperature_mean, abs=1e-3)
    finally:
        await driver.close()
        await server.stop()


async def test_served_in_real_time(modbus_sim) -> None:
    """The default server runs the model on the wall clock."""
    import asyncio

    driver = ModbusDriver(ModbusDeviceConfig(protocol="modbus", name="s", host="127.0.0.1", port=modbus_sim.port,
                                             addressing="zero_based", tags=STATION_TAGS))
    await driver.connect()
    try:
        first = dict(zip(driver.tag_names, (await driver.read()).value, strict=True))
        await asyncio.sleep(0.6)  # the first unit starts after idle_time = 0.5 s
        later = dict(zip(driver.tag_names, (await driver.read()).value, strict=True))
        assert first["serial"] == "" and later["serial"] == "SN-000001" and later["cycle_active"] is True
    finally:
        await driver.close()
