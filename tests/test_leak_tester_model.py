"""The sealer's pouch-film lot and the leak tester downstream: deterministic, the same serials in the
same order after the sealer, and ground truth that matches what the Modbus simulator serves."""

from __future__ import annotations

import pytest
from fixtures_sim import ModelClock

from linetap.config.devices.modbus import ModbusDeviceConfig
from linetap.drivers.modbus import ModbusDriver
from linetap.drivers.samples import Quality
from linetap.simulators import (
    FILM_LOT_TAG,
    LEAK_OPERATORS,
    LEAK_TESTER_TAGS,
    LEAK_TESTER_UNIT_ID,
    STATION_TAGS,
    LeakState,
    LeakTesterModel,
    ModbusStationServer,
    StationModel,
)


def test_film_lot_is_deterministic_and_changes_every_n_units() -> None:
    units = StationModel(seed=4, units_per_lot=10).run_until(60)
    lots = [u.film_lot for u in units]
    assert all(lot.startswith("PF-") and len(lot) == len("PF-2611-0042") for lot in lots)
    for k in range(6):  # one roll per 10 units, a new roll each time
        assert len(set(lots[10 * k:10 * k + 10])) == 1
    assert len(set(lots)) == 6
    again = StationModel(seed=4, units_per_lot=10)
    t = 0.0
    while again.unit_count < 60:
        t += 0.017
        again.step(t)
    assert [u.film_lot for u in again.completed_units[:60]] == lots
    assert [u.film_lot for u in StationModel(seed=5, units_per_lot=10).run_until(60)] != lots


def test_film_lot_changes_nothing_else() -> None:
    """The lots have their own RNG: the sealer's units are those of a model without lots."""
    a = StationModel(seed=9, units_per_lot=3).run_until(40)
    b = StationModel(seed=9, units_per_lot=1000).run_until(40)
    strip = [(u.serial, u.operator, u.temperature_setpoint, u.pressure, u.dwell, u.ended_at) for u in a]
    assert strip == [(u.serial, u.operator, u.temperature_setpoint, u.pressure, u.dwell, u.ended_at) for u in b]
    assert len({u.film_lot for u in a}) > len({u.film_lot for u in b}) == 1


def test_leak_tester_tests_the_same_serials_in_order_after_the_sealer() -> None:
    sealer = StationModel(seed=21, out_of_limit_share=0.2)
    tester = LeakTesterModel(sealer, seed=21, out_of_limit_share=0.1)
    tests = tester.run_until(80)
    sealed = {u.serial: u for u in sealer.completed_units}
    assert [t.serial for t in tests] == [u.serial for u in sealer.completed_units[:80]]
    for prev, t in zip([None, *tests], tests, strict=False):
        s = sealed[t.serial]
        assert t.arrived_at == pytest.approx(s.ended_at + tester.transfer_time)
        assert t.started_at >= t.arrived_at and t.started_at > s.ended_at
        if prev is not None:
            assert t.started_at >= prev.ended_at + tester.idle_time - 1e-9
        assert t.measure_started_at - t.started_at == pytest.approx(tester.fill_time)
        assert t.operator in LEAK_OPERATORS
        assert t.passed == (not t.out_of_limit), t
    failed = [t for t in tests if not t.passed]
    assert failed and len(failed) < len(tests) / 2
    assert {t.out_of_limit_parameter for t in failed} <= {"pressure_decay", "test_pressure"}


def test_leak_tester_is_deterministic_however_often_it_is_stepped() -> None:
    a = LeakTesterModel(StationModel(seed=3), seed=3)
    a.run_until(30)
    b = LeakTesterModel(StationModel(seed=3), seed=3)
    t = 0.0
    while b.unit_count < 30:
        t += 0.011
        b.step(t)
    assert a.completed_units == b.completed_units[:30]
    c = LeakTesterModel(StationModel(seed=3), seed=4).run_until(30)
    assert [u.pressure_decay for u in c] != [u.pressure_decay for u in a.completed_units]


async def test_both_stations_served_over_modbus_match_the_ground_truth() -> None:
    """Unit id 1 the sealer (now with its film lot), unit id 2 the leak tester, read through the
    driver at chosen model times: the served values are the models' ground truth."""
    sealer = StationModel(seed=13, units_per_lot=2)
    tester = LeakTesterModel(sealer, seed=13)
    clock = ModelClock()
    server = ModbusStationServer(sealer, clock=clock, leak_tester=tester)
    await server.start()

    def device(name: str, unit_id: int, tags: list[dict]) -> ModbusDriver:
        return ModbusDriver(ModbusDeviceConfig(protocol="modbus", name=name, host="127.0.0.1", port=server.port,
                                               unit_id=unit_id, addressing="zero_based", tags=tags))

    seal = device("sealer1", 1, [*STATION_TAGS, FILM_LOT_TAG])
    leak = device("leak1", LEAK_TESTER_UNIT_ID, LEAK_TESTER_TAGS)
    await seal.connect()
    await leak.connect()

    async def read(driver: ModbusDriver, t: float) -> dict:
        clock.t = t
        batch = await driver.read()
        assert set(batch.quality) == {Quality.GOOD}, batch.reason
        return dict(zip(batch.tag, batch.value, strict=True))

    # The ground truth from a twin (same seeds), then what the server gives, in model time order.
    twin = LeakTesterModel(StationModel(seed=13, units_per_lot=2), seed=13)
    truths = twin.run_until(4)
    sealed = twin.sealer.run_until(5)[:5]
    reads = [(u.started_at + 1e-6, "seal_start", u) for u in sealed]
    reads += [(t.measure_started_at + 1e-6, "measure", t) for t in truths]
    reads += [(t.ended_at + 1e-6, "leak_end", t) for t in truths]
    try:
        for t, what, truth in sorted(reads, key=lambda r: r[0]):
            if what == "seal_start":
                v = await read(seal, t)
                assert v["cycle_active"] and (v["serial"], v["film_lot"]) == (truth.serial, truth.film_lot)
            elif what == "measure":
                v = await read(leak, t)
                assert v["state"] == LeakState.MEASURE and v["cycle_active"] is True
                assert (v["serial"], v["operator"]) == (truth.serial, truth.operator)
                assert v["pressure"] == pytest.approx(truth.test_pressure, abs=0.01)
            else:
                v = await read(leak, t)
                assert v["cycle_active"] is False and v["serial"] == truth.serial and v["unit_count"] == truth.index
                assert v["test_pressure"] == pytest.approx(truth.test_pressure, abs=1e-4)
                assert v["pressure_decay"] == pytest.approx(truth.pressure_decay, abs=1e-5)
                assert v["result"] == (1 if truth.passed else 2)
        assert tester.completed_units == truths and sealer.completed_units == sealed[:sealer.unit_count]
        lots = [u.film_lot for u in sealed]
        assert lots[0] == lots[1] != lots[2] == lots[3] != lots[4]
    finally:
        await seal.close()
        await leak.close()
        await server.stop()
