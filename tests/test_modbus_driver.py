"""ModbusDriver against the station simulator over real sockets (127.0.0.1, free ports)."""

from __future__ import annotations

import asyncio
import time

import pytest

from linetap.config.devices.modbus import ModbusDeviceConfig
from linetap.drivers import DeviceUnreachable, create_driver
from linetap.drivers.modbus import ModbusDriver
from linetap.drivers.samples import Quality, SampleBatch
from linetap.simulators import (
    KNOWN_UNCERTAIN_STRING,
    KNOWN_VALUES,
    STATION_TAGS,
    ModbusStationServer,
    StationModel,
)
from linetap.simulators.net import free_port


def device(port: int, tags: list[dict], **kw) -> ModbusDeviceConfig:
    kw.setdefault("addressing", "zero_based")
    kw.setdefault("timeout", 0.5)
    return ModbusDeviceConfig(protocol="modbus", name="sealer1", host="127.0.0.1", port=port, tags=tags, **kw)


def by_name(batch: SampleBatch) -> dict[str, tuple]:
    return {t: (v, q, r) for t, v, q, r in zip(batch.tag, batch.value, batch.quality, batch.reason, strict=True)}


@pytest.fixture
async def driver_for(modbus_sim):
    drivers: list[ModbusDriver] = []

    async def make(tags: list[dict], **kw) -> ModbusDriver:
        d = ModbusDriver(device(modbus_sim.port, tags, **kw))
        await d.connect()
        drivers.append(d)
        return d

    yield make
    for d in drivers:
        await d.close()


async def test_every_type_and_order_decodes_through_the_driver(modbus_sim, driver_for) -> None:
    driver = await driver_for([f for f, _ in KNOWN_VALUES])
    before = modbus_sim.requests
    batch = await driver.read()
    # holding 1000..1097, input 1000..1008, coils, discrete inputs: 4 requests for 90+ tags
    assert modbus_sim.requests - before == len(driver.blocks) == 4
    got = by_name(batch)
    assert len(got) == len(KNOWN_VALUES)
    for fields, expected in KNOWN_VALUES:
        value, quality, reason = got[fields["name"]]
        assert (value, type(value)) == (expected, type(expected)), fields
        assert quality == Quality.GOOD and reason is None
    assert batch.source_ts is None
    assert abs(batch.agent_ts / 1e6 - time.time()) < 5


async def test_one_based_addressing_reads_the_same_values(driver_for) -> None:
    tags = [{**f, "address": f["address"] + 1} for f, _ in KNOWN_VALUES]
    batch = await (await driver_for(tags, addressing="one_based")).read()
    assert batch.value == [dict((f["name"], v) for f, v in KNOWN_VALUES)[t] for t in batch.tag]


async def test_undecodable_string_is_uncertain(driver_for) -> None:
    fields, expected = KNOWN_UNCERTAIN_STRING
    got = by_name(await (await driver_for([fields, KNOWN_VALUES[0][0]])).read())
    value, quality, reason = got[fields["name"]]
    assert value == expected and quality == Quality.UNCERTAIN and "undecodable" in reason
    assert got[KNOWN_VALUES[0][0]["name"]][1] == Quality.GOOD


async def test_scaled_plc_integers(modbus_sim, driver_for) -> None:
    tags = [{"name": "temp_x10", "table": "input", "address": 0, "type": "int16", "scale": 0.1},
            {"name": "count_cdab", "table": "input", "address": 3, "type": "uint32", "order": "CDAB"},
            {"name": "kv", "address": 1000, "type": "int16", "scale": 0.5, "offset": 10}]
    got = by_name(await (await driver_for(tags)).read())
    snap = modbus_sim.snapshot()
    assert got["temp_x10"][0] == pytest.approx(snap.temperature, abs=3.0)  # the model moves on meanwhile
    assert got["count_cdab"][0] == snap.unit_count
    assert got["kv"][0] == -4660 * 0.5 + 10


async def test_modbus_exception_marks_only_that_block(modbus_sim, driver_for) -> None:
    driver = await driver_for([*STATION_TAGS, {"name": "kv", "address": 1000, "type": "uint16"},
                               {"name": "flag", "table": "coil", "address": 1000, "type": "bool"}])
    modbus_sim.fail_range("holding", 1000, 1, code=2)
    got = by_name(await driver.read())
    assert got["kv"] == (None, Quality.BAD, "modbus exception 2 (illegal data address)")
    assert got["temperature"][1] == Quality.GOOD and got["flag"] == (True, Quality.GOOD, None)
    modbus_sim.clear_faults()
    modbus_sim.fail_range("coil", 1000, 1, code=4)
    got = by_name(await driver.read())
    assert got["flag"] == (None, Quality.BAD, "modbus exception 4 (server device failure)")
    assert got["kv"][1] == Quality.GOOD
    modbus_sim.clear_faults()
    assert set((await driver.read()).quality) == {Quality.GOOD}


async def test_unmapped_address_is_an_exception_not_a_crash(driver_for) -> None:
    got = by_name(await (await driver_for([{"name": "nowhere", "address": 1500, "type": "uint16"}])).read())
    assert got["nowhere"] == (None, Quality.BAD, "modbus exception 2 (illegal data address)")


async def test_slow_device_times_out_then_recovers(modbus_sim, driver_for) -> None:
    driver = await driver_for(STATION_TAGS, timeout=0.2)
    modbus_sim.set_delay(0.5)
    t = time.monotonic()
    batch = await driver.read()
    assert time.monotonic() - t < 0.45
    assert set(batch.quality) == {Quality.BAD} and set(batch.reason) == {"timed out after 0.2s"}
    modbus_sim.set_delay(0.0)
    await asyncio.sleep(0.4)  # the late answer arrives and is ignored (stale transaction id)
    batch = await driver.read()
    assert set(batch.quality) == {Quality.GOOD}
    got = by_name(batch)
    assert got["operator"][0].startswith("OP-")


async def test_slow_device_with_many_blocks_gives_up_early(modbus_sim, driver_for) -> None:
    tags = [{"name": f"t{i}", "address": 1000 + 20 * i, "type": "uint16"} for i in range(5)]
    driver = await driver_for(tags, timeout=0.1, max_gap=0)
    assert len(driver.blocks) == 5
    modbus_sim.set_delay(0.3)
    t = time.monotonic()
    batch = await driver.read()
    assert time.monotonic() - t < 0.35  # two timeouts, the rest skipped
    assert batch.reason[0] == "timed out after 0.1s"
    assert batch.reason[-1].startswith("not read: device not responding")


async def test_silent_device_becomes_unreachable(modbus_sim, driver_for) -> None:
    driver = await driver_for(STATION_TAGS[:1], timeout=0.1)
    modbus_sim.set_delay(1.0)
    for _ in range(driver.unreachable_after_silent_polls - 1):
        assert (await driver.read()).quality == [Quality.BAD]
    with pytest.raises(DeviceUnreachable, match=rf"127.0.0.1:{modbus_sim.port}.*no answer"):
        await driver.read()


async def test_stopped_server_is_unreachable_and_restart_recovers(modbus_sim, driver_for) -> None:
    driver = await driver_for(STATION_TAGS)
    assert set((await driver.read()).quality) == {Quality.GOOD}
    port = modbus_sim.port
    await modbus_sim.stop()
    await asyncio.sleep(0.05)
    with pytest.raises(DeviceUnreachable, match=f"127.0.0.1:{port}"):
        await driver.read()
    with pytest.raises(DeviceUnreachable, match=rf"127.0.0.1:{port}.*refused"):
        await driver.connect()
    await modbus_sim.start()
    assert modbus_sim.port == port
    await driver.connect()
    assert set((await driver.read()).quality) == {Quality.GOOD}


async def test_dropped_connection_is_unreachable_then_reconnects(modbus_sim, driver_for) -> None:
    driver = await driver_for(STATION_TAGS)
    await driver.read()
    assert modbus_sim.drop_connections() == 1
    await asyncio.sleep(0.05)
    with pytest.raises(DeviceUnreachable, match="lost"):
        await driver.read()
    await driver.connect()
    assert set((await driver.read()).quality) == {Quality.GOOD}


async def test_nothing_listening_is_unreachable() -> None:
    port = free_port()
    driver = ModbusDriver(device(port, STATION_TAGS))
    with pytest.raises(DeviceUnreachable, match=rf"cannot connect to 127.0.0.1:{port}.*refused"):
        await driver.connect()
    with pytest.raises(DeviceUnreachable):
        await driver.read()
    await driver.close()
    await driver.close()


async def test_registry_builds_the_driver_and_samples_streams(modbus_sim) -> None:
    driver = create_driver(device(modbus_sim.port, STATION_TAGS, poll_interval=0.02))
    assert isinstance(driver, ModbusDriver)
    assert driver.tag_names == [t["name"] for t in STATION_TAGS]  # already in address order
    await driver.connect()
    try:
        batches = []
        async for batch in driver.samples():
            batches.append(batch)
            if len(batches) == 3:
                break
        assert [len(b) for b in batches] == [len(STATION_TAGS)] * 3
        assert batches[0].agent_ts < batches[2].agent_ts
    finally:
        await driver.close()


async def test_frozen_value_is_served(modbus_sim, driver_for) -> None:
    modbus_sim.freeze("temperature", 123.5)
    modbus_sim.freeze("serial", "SN-FROZEN")
    got = by_name(await (await driver_for(STATION_TAGS)).read())
    assert got["temperature"][0] == 123.5 and got["serial"][0] == "SN-FROZEN"
    modbus_sim.unfreeze()
    assert modbus_sim.snapshot().serial != "SN-FROZEN"


async def test_wrong_unit_id_is_a_gateway_exception(modbus_sim) -> None:
    driver = ModbusDriver(device(modbus_sim.port, STATION_TAGS[:1], unit_id=9))
    await driver.connect()
    try:
        batch = await driver.read()
        assert batch.quality == [Quality.BAD] and batch.reason[0].startswith("modbus exception 11")
    finally:
        await driver.close()


async def test_two_servers_on_port_zero_get_different_ports() -> None:
    a = ModbusStationServer(StationModel(seed=1))
    b = ModbusStationServer(StationModel(seed=1))
    async with a, b:
        assert a.port != b.port and a.port > 0 and b.port > 0


async def test_rejected_span_is_split_and_only_the_bad_tag_stays_bad(modbus_sim, driver_for) -> None:
    """A PLC with a hole in its map rejects a read spanning the hole: the driver reads the parts."""
    tags = [{"name": "a", "address": 1000, "type": "int16"}, {"name": "b", "address": 1005, "type": "uint16"},
            {"name": "c", "address": 1006, "type": "uint16"}]
    driver = await driver_for(tags)
    assert [(b.address, b.count) for b in driver.blocks] == [(1000, 7)]
    modbus_sim.fail_range("holding", 1003, 1)  # the hole
    got = by_name(await driver.read())
    assert got["a"] == (-4660, Quality.GOOD, None) and got["b"][1] == got["c"][1] == Quality.GOOD
    assert [(b.address, b.count) for b in driver.blocks] == [(1000, 1), (1005, 2)]
    modbus_sim.fail_range("holding", 1006, 1)  # now a tag itself is not there
    got = by_name(await driver.read())
    assert got["c"] == (None, Quality.BAD, "modbus exception 2 (illegal data address)")
    assert got["a"][1] == got["b"][1] == Quality.GOOD
    assert [(b.address, b.count) for b in driver.blocks] == [(1000, 1), (1005, 1), (1006, 1)]
    assert driver.tag_names == ["a", "b", "c"]


async def test_failures_are_logged_once_then_quietly_until_recovered(modbus_sim, driver_for) -> None:
    from structlog.testing import capture_logs

    driver = await driver_for([{"name": "kv", "address": 1000, "type": "uint16"}])
    modbus_sim.fail_range("holding", 1000, 1, code=6)
    with capture_logs() as logs:
        for _ in range(3):
            await driver.read()
        modbus_sim.clear_faults()
        await driver.read()
        await driver.read()
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["reason"] == "modbus exception 6 (server device busy)"
    assert warnings[0]["device"] == "sealer1" and warnings[0]["block"] == "holding 1000..1000"
    assert [e["event"] for e in logs if e["log_level"] == "info"] == ["modbus block recovered"]
    assert len([e for e in logs if e["log_level"] == "debug"]) == 2


async def test_short_response_is_bad_with_the_reason(modbus_sim, driver_for) -> None:
    driver = await driver_for([*STATION_TAGS, {"name": "flag", "table": "coil", "address": 1000, "type": "bool"}])
    modbus_sim.short_responses(2)
    got = by_name(await driver.read())
    assert got["temperature"] == (None, Quality.BAD, "reply with 60 bytes for 32 registers")
    assert got["flag"] == (True, Quality.GOOD, None)
    modbus_sim.short_responses(0)
    assert set((await driver.read()).quality) == {Quality.GOOD}
