"""OpcUaDriver against the OPC UA station simulator over real sockets (127.0.0.1, free ports)."""

from __future__ import annotations

import asyncio
import time

import pytest
from fixtures_opcua import *  # noqa: F401,F403
from fixtures_opcua import collect, make_driver, station_config

from linetap.config.devices.opcua import OpcUaDeviceConfig, parse_node_ref
from linetap.drivers import DeviceUnreachable, DriverError, create_driver
from linetap.drivers.opcua import OpcUaDriver
from linetap.drivers.samples import Quality, SampleBatch, now_us
from linetap.simulators.net import free_port
from linetap.simulators.opcua_address_space import KNOWN_VALUES, NAMESPACE_URI
from linetap.simulators.opcua_server import OpcUaStationServer
from linetap.simulators.station import StationModel

pytestmark = pytest.mark.timeout(60)


def latest(batches: list[SampleBatch]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for b in batches:
        for i, tag in enumerate(b.tag):
            out[tag] = (b.value[i], b.quality[i], b.reason[i], b.source_ts[i] if b.source_ts else None, b.agent_ts)
    return out


# --- config ---------------------------------------------------------------------------------


def test_config_accepts_standard_node_ids_and_paths():
    cfg = OpcUaDeviceConfig.model_validate({
        "protocol": "opcua", "name": "plc1", "endpoint": "opc.tcp://10.0.0.5:4840", "publishing_interval": "250ms",
        "deadband": {"type": "absolute", "value": 0.5},
        "tags": [{"name": "a", "node": "ns=2;s=Line.Temp"}, {"name": "b", "node": "ns=3;i=1001"},
                 {"name": "c", "node": f"nsu={NAMESPACE_URI};s=Sealer1.Pressure"}, {"name": "d", "node": "i=2258"},
                 {"name": "e", "node": "Line/Sealer1/Temperature"}, {"name": "f", "node": "/Objects/2:Line/2:X"}]})
    assert cfg.publishing_interval == 0.25 and cfg.station_name == "plc1" and cfg.mode == "subscribe"
    assert parse_node_ref("Objects/2:Line/Known")[1] == [(2, "Line"), (None, "Known")]
    assert parse_node_ref(f"nsu={NAMESPACE_URI};s=X")[1].NamespaceUri == NAMESPACE_URI


@pytest.mark.parametrize("bad, message", [
    ({"tags": [{"name": "a", "node": "ns=2;s=x"}, {"name": "a", "node": "ns=2;s=y"}]}, "duplicate tag name"),
    ({"endpoint": "http://x:4840"}, "not an OPC UA endpoint"),
    ({"security": {"policy": "Basic256Sha256"}}, "needs `certificate`"),
    ({"security": {"policy": "None", "mode": "Sign"}}, "needs a security policy"),
    ({"security": {"password": "x"}}, "needs a `username`"),
    ({"mode": "stream"}, "subscribe"),
    ({"tags": [{"name": "a", "node": "ns=x;s=y"}]}, "tag 'a'"),
    ({"typo": 1}, "Extra inputs"),
])
def test_config_errors(bad, message):
    data = {"protocol": "opcua", "name": "plc1", "endpoint": "opc.tcp://h:4840",
            "tags": [{"name": "a", "node": "ns=2;s=x"}], **bad}
    with pytest.raises(ValueError, match=message):
        OpcUaDeviceConfig.model_validate(data)


def test_registry_creates_the_driver():
    cfg = station_config("opc.tcp://127.0.0.1:4840")
    assert isinstance(create_driver(cfg), OpcUaDriver)


# --- subscribe / poll -------------------------------------------------------------------------


async def test_subscribe_delivers_values_qualities_and_timestamps(opcua_sim):
    driver = make_driver(opcua_sim.endpoint)
    before = now_us()
    await driver.connect()
    try:
        batches = await collect(driver, 6.0, until=lambda bs: any(
            v[0] is True for b in bs for t, v in zip(b.tag, zip(b.value), strict=False) if t == "cycle_active")
            and sum(len(b) for b in bs) > 30)
    finally:
        await driver.close()
    assert batches, "no batches"
    first = batches[0]
    assert set(first.tag) == set(driver.tag_names), "the first publish carries every item's initial value"
    seen = latest(batches)
    assert seen["setpoint"][0] == 180.0 and seen["setpoint"][1] == Quality.GOOD and seen["setpoint"][2] is None
    assert seen["operator"][0].startswith("OP-")
    assert isinstance(seen["unit_count"][0], int) and isinstance(seen["cycle_active"][0], bool)
    for b in batches:
        assert b.device == "sealer1" and b.source_ts is not None and len(b.source_ts) == len(b)
        assert before - 5_000_000 < b.agent_ts < now_us() + 1
        assert all(before - 5_000_000 < ts <= b.agent_ts + 1_000_000 for ts in b.source_ts)
    # changes only: later batches carry fewer tags than all of them
    assert any(len(b) < len(driver.tag_names) for b in batches[1:])
    assert driver.units["temperature"] == "degC"


async def test_poll_mode_gives_the_same_values(opcua_sim):
    driver = make_driver(opcua_sim.endpoint, mode="poll", poll_interval="100ms")
    await driver.connect()
    try:
        batches = await collect(driver, 5.0, until=lambda bs: len(bs) >= 4)
    finally:
        await driver.close()
    assert len(batches) >= 4
    for b in batches:
        assert list(b.tag) == driver.tag_names and all(q == Quality.GOOD for q in b.quality)
        assert b.tag is batches[0].tag  # one tag-name object for every poll: consumers index it once
        assert all(ts is not None for ts in b.source_ts)
    assert batches[-1].agent_ts - batches[0].agent_ts >= 250_000  # polled at the interval
    assert latest(batches)["setpoint"][0] == 180.0


async def test_units_from_euinformation_and_config(opcua_sim):
    tags = [{"name": "t", "node": f"nsu={NAMESPACE_URI};s=Sealer1.Temperature"},
            {"name": "p", "node": "Line/Sealer1/Pressure", "unit": "psi"},
            {"name": "s", "node": "Line/Sealer1/SerialNumber"}]
    driver = make_driver(opcua_sim.endpoint, tags=tags)
    await driver.connect()
    await driver.close()
    assert driver.units == {"t": "degC", "p": "psi", "s": None}


async def test_builtin_types_and_arrays(opcua_sim):
    tags = [{"name": k, "node": f"Line/Known/{k}"} for k in KNOWN_VALUES]
    for mode in ("subscribe", "poll"):
        driver = make_driver(opcua_sim.endpoint, tags=tags, mode=mode, poll_interval="100ms")
        await driver.connect()
        try:
            batches = await collect(driver, 3.0, until=lambda bs: bool(bs))
        finally:
            await driver.close()
        got = latest(batches)
        for name, (_, _, expected) in KNOWN_VALUES.items():
            assert got[name][0] == expected, (mode, name)
            assert got[name][1] == Quality.GOOD, (mode, name, got[name][2])
            assert type(got[name][0]) is type(expected), (mode, name)
        # and the batch survives the buffer's Arrow conversion (UInt64 beyond 2**53 as text)
        table = batches[0].to_arrow()
        assert table.num_rows == len(batches[0])


async def test_bad_status_and_unknown_nodes(opcua_sim):
    tags = [{"name": "temperature", "node": opcua_sim.node_id("Temperature")},
            {"name": "missing", "node": f"nsu={NAMESPACE_URI};s=Sealer1.Nope"},
            {"name": "other_ns", "node": "nsu=urn:not:there;s=X"},
            {"name": "bad_path", "node": "Line/Sealer1/Nope"}]
    driver = make_driver(opcua_sim.endpoint, tags=tags)
    await driver.connect()
    try:
        first = await collect(driver, 3.0, until=lambda bs: "temperature" in latest(bs) and len(latest(bs)) == 4)
        got = latest(first)
        assert got["missing"][1] == Quality.BAD and got["missing"][2] == "BadNodeIdUnknown"
        assert got["other_ns"][1] == Quality.BAD and "urn:not:there" in got["other_ns"][2]
        assert got["bad_path"][1] == Quality.BAD and "Nope" in got["bad_path"][2]
        assert got["temperature"][1] == Quality.GOOD
        await opcua_sim.set_status("Temperature", "BadSensorFailure")
        later = await collect(driver, 3.0, until=lambda bs: latest(bs).get("temperature", (0, 0))[1] == Quality.BAD)
        t = latest(later)["temperature"]
        assert t[0] is None and t[1] == Quality.BAD and t[2] == "BadSensorFailure" and t[3] is not None
        await opcua_sim.set_status("Temperature", "UncertainLastUsableValue")
        later = await collect(driver, 3.0, until=lambda bs: latest(bs).get("temperature", (0, 0))[1]
                              == Quality.UNCERTAIN)
        t = latest(later)["temperature"]
        assert isinstance(t[0], float) and t[2] == "UncertainLastUsableValue"
    finally:
        await driver.close()


async def test_deadband_suppresses_small_changes(opcua_sim):
    await opcua_sim.freeze("Setpoint", 100.0)
    tags = [{"name": "setpoint", "node": opcua_sim.node_id("Setpoint")}]
    driver = make_driver(opcua_sim.endpoint, tags=tags, deadband={"type": "absolute", "value": 1.0})
    await driver.connect()
    try:
        initial = await collect(driver, 3.0, until=lambda bs: bool(bs))
        assert latest(initial)["setpoint"][0] == 100.0
        # each within 1.0 of the last reported value (100.0) and of the previous write (asyncua's
        # server compares with the previous sample, the spec with the last reported value)
        for v in (100.4, 100.8, 100.3, 99.6):
            await opcua_sim.write("Setpoint", v)
            await asyncio.sleep(0.1)
        quiet = await collect(driver, 0.5)
        assert not any(len(b) for b in quiet), f"changes inside the deadband were reported: {quiet}"
        await opcua_sim.write("Setpoint", 101.5)
        loud = await collect(driver, 3.0, until=lambda bs: bool(bs))
        assert [b.value for b in loud] == [[101.5]]
    finally:
        await driver.close()


async def test_two_thousand_items_with_low_operation_limits():
    n = 2000
    server = OpcUaStationServer(StationModel(seed=1), port=0, bulk_count=n, bulk_interval=0.5,
                                operation_limits={"MaxMonitoredItemsPerCall": 100, "MaxNodesPerRead": 100})
    await server.start()
    try:
        tags = [{"name": f"b{i:05d}", "node": f"nsu={NAMESPACE_URI};s=Bulk.B{i:05d}"} for i in range(n)]
        # read_units off: the test is about monitored items; 2000 translate calls add nothing here
        driver = make_driver(server.endpoint, tags=tags, read_units=False, publishing_interval="100ms")
        t0 = time.monotonic()
        await driver.connect()
        connect_s = time.monotonic() - t0
        assert driver.operation_limits["MaxMonitoredItemsPerCall"] == 100
        try:
            batches = await collect(driver, 10.0, until=lambda bs: len(latest(bs)) == n and len(bs) >= 3)
        finally:
            await driver.close()
        got = latest(batches)
        assert len(got) == n and all(v[1] == Quality.GOOD for v in got.values())
        assert server.stats["refused_calls"] == 0
        assert server.stats["create_item_calls"] == n // 100
        assert connect_s < 10

        # poll mode splits reads the same way
        driver = make_driver(server.endpoint, tags=tags, read_units=False, mode="poll", poll_interval="200ms")
        await driver.connect()
        try:
            reads_before = server.stats["read_calls"]
            polled = await collect(driver, 5.0, until=lambda bs: len(bs) >= 2)
        finally:
            await driver.close()
        assert all(len(b) == n and all(q == Quality.GOOD for q in b.quality) for b in polled)
        assert server.stats["read_calls"] - reads_before >= 2 * (n // 100)
        assert server.stats["refused_calls"] == 0
    finally:
        await server.stop()


async def test_server_restart_raises_unreachable_and_connect_recovers():
    server = OpcUaStationServer(StationModel(seed=3), port=0)
    await server.start()
    try:
        driver = make_driver(server.endpoint)
        await driver.connect()
        assert await collect(driver, 3.0, until=lambda bs: bool(bs))
        stopping = asyncio.create_task(server.stop())
        t0 = time.monotonic()
        with pytest.raises(DeviceUnreachable) as err:
            async for _ in driver.samples():
                pass
        assert time.monotonic() - t0 < 5
        assert "sealer1" in str(err.value) and server.endpoint in str(err.value)
        await stopping
        with pytest.raises(DeviceUnreachable, match="connection refused"):
            await driver.connect()
        await server.start()  # same port
        await driver.connect()
        try:
            batches = await collect(driver, 5.0, until=lambda bs: "cycle_active" in latest(bs)
                                    and sum(len(b) for b in bs) > len(driver.tag_names))
        finally:
            await driver.close()
        assert len(latest(batches)) == len(driver.tag_names), "subscriptions re-created after reconnect"
    finally:
        await server.stop()


async def test_dropped_session_in_poll_mode():
    server = OpcUaStationServer(StationModel(seed=3), port=0)
    await server.start()
    try:
        driver = make_driver(server.endpoint, mode="poll", poll_interval="100ms")
        await driver.connect()
        assert await collect(driver, 2.0, until=lambda bs: len(bs) >= 2)
        assert server.drop_sessions() >= 1
        with pytest.raises(DeviceUnreachable, match="sealer1"):
            async with asyncio.timeout(5):
                async for _ in driver.samples():
                    pass
        await driver.connect()
        try:
            assert await collect(driver, 2.0, until=lambda bs: len(bs) >= 2)
        finally:
            await driver.close()
    finally:
        await server.stop()


async def test_connect_refused_names_device_and_endpoint():
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}"
    driver = make_driver(endpoint)
    with pytest.raises(DeviceUnreachable) as err:
        await driver.connect()
    msg = str(err.value)
    assert "sealer1" in msg and endpoint in msg and "refused" in msg
    with pytest.raises(DeviceUnreachable):
        async for _ in driver.samples():
            pass
    await driver.close()


async def test_wrong_namespace_setting_is_a_driver_error(opcua_sim):
    driver = make_driver(opcua_sim.endpoint, namespace="urn:nope", tags=[{"name": "t", "node": "Sealer1"}])
    with pytest.raises(DriverError, match="namespace 'urn:nope' is not on the server"):
        await driver.connect()
