"""Modbus RTU: the driver and the simulator on the two ends of a socat pty pair (one unit id, then three
on one bus sharing the port), and RTU frames over TCP (a serial gateway). Values are compared with the
served model at hand-set model times."""

from __future__ import annotations

import asyncio

import pytest
from fixtures_sim import ModelClock

from linetap.config.devices.modbus import ModbusDeviceConfig
from linetap.drivers import DeviceUnreachable
from linetap.drivers.modbus import ModbusDriver
from linetap.drivers.modbus.serial_bus import SerialBus
from linetap.drivers.samples import Quality
from linetap.simulators import (
    LEAK_TESTER_TAGS,
    LEAK_TESTER_UNIT_ID,
    STATION_TAGS,
    LeakTesterModel,
    ModbusStationServer,
    StationModel,
)

# Linux ptys refuse parity (tcsetattr EINVAL): the tests use the spec's no-parity form, 8N2.
LINE = {"baudrate": 38400, "parity": "N", "stopbits": 2}


def rtu_device(name: str, port: str, unit_id: int, tags: list[dict], **kw) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(protocol="modbus", name=name, transport="rtu", serial={"port": port, **LINE},
                              unit_id=unit_id, addressing="zero_based", tags=tags, timeout=kw.pop("timeout", 0.5),
                              **kw)


def values(batch) -> dict:
    assert set(batch.quality) == {Quality.GOOD}, batch.reason
    return dict(zip(batch.tag, batch.value, strict=True))


def assert_sealer(v: dict, snap) -> None:
    assert v["temperature"] == pytest.approx(snap.temperature, abs=1e-4)
    assert v["pressure"] == pytest.approx(snap.pressure, abs=1e-5)
    assert (v["unit_count"], v["cycle_active"], v["state"]) == (snap.unit_count, snap.cycle_active, int(snap.state))
    assert (v["serial"], v["operator"], v["rejects"]) == (snap.serial, snap.operator, snap.rejects)


@pytest.fixture
def sealer() -> StationModel:
    return StationModel(seed=11, cycle_time=2.0, idle_time=0.5)


async def test_one_unit_over_a_pty_pair(pty_pair, sealer) -> None:
    sim_end, agent_end = pty_pair
    clock = ModelClock()
    server = ModbusStationServer(sealer, clock=clock, serial=sim_end, **LINE)
    await server.start()
    driver = ModbusDriver(rtu_device("sealer1", agent_end, 1, STATION_TAGS))
    try:
        await driver.connect()
        seen_cycle = set()
        for t in (0.1, 0.7, 1.3, 2.2, 3.9, 5.05):
            clock.t = t
            before = server.requests
            v = values(await driver.read())
            assert server.requests - before == len(driver.blocks) == 1
            assert_sealer(v, server.snapshot())
            seen_cycle.add(v["cycle_active"])
        assert seen_cycle == {True, False} and v["unit_count"] >= 1
    finally:
        await driver.close()
        await server.stop()


async def test_three_unit_ids_share_one_port(pty_pair, sealer) -> None:
    """A sealer (1), the leak tester (2) and a second sealer (3) on one bus: one client, one request at
    a time (the three drivers poll at once), each reply from the right unit."""
    sim_end, agent_end = pty_pair
    clock = ModelClock()
    tester = LeakTesterModel(sealer, seed=11)
    server = ModbusStationServer(sealer, clock=clock, serial=sim_end, leak_tester=tester, extra_unit_ids=(3,),
                                 **LINE)
    await server.start()
    drivers = [ModbusDriver(rtu_device("sealer1", agent_end, 1, STATION_TAGS)),
               ModbusDriver(rtu_device("leak1", agent_end, LEAK_TESTER_UNIT_ID, LEAK_TESTER_TAGS)),
               ModbusDriver(rtu_device("sealer3", agent_end, 3, STATION_TAGS))]
    try:
        for d in drivers:
            await d.connect()
        buses = {id(d._bus) for d in drivers}
        assert len(buses) == 1 and drivers[0]._bus.users == 3
        assert len({id(d._client) for d in drivers}) == 1
        for t in (0.2, 1.1, 2.6, 4.4, 7.3):
            clock.t = t
            leak_before = server.leak_requests
            seal1, leak, seal3 = await asyncio.gather(*(d.read() for d in drivers))
            snap = server.snapshot()
            assert_sealer(values(seal1), snap)
            assert_sealer(values(seal3), snap)
            lv, truth = values(leak), tester.step(t)
            assert server.leak_requests - leak_before == 1
            assert (lv["unit_count"], lv["state"], lv["serial"]) == (truth.unit_count, int(truth.state), truth.serial)
            assert lv["pressure"] == pytest.approx(truth.pressure, abs=1e-3)
        # a unit id nobody answers to: that device is unreachable, the others go on
        ghost = ModbusDriver(rtu_device("ghost", agent_end, 9, STATION_TAGS[:1], timeout=0.2))
        with pytest.raises(DeviceUnreachable, match="unit 9 does not answer"):
            await ghost.connect()
        assert drivers[0]._bus.users == 3
        assert_sealer(values(await drivers[0].read()), server.snapshot())
        for d in drivers:
            await d.close()
        assert not SerialBus._buses  # the last one out closed the port
    finally:
        for d in drivers:
            await d.close()
        await server.stop()


async def test_a_missing_serial_port_says_so(tmp_path) -> None:
    driver = ModbusDriver(rtu_device("sealer1", str(tmp_path / "ttyUSB9"), 1, STATION_TAGS[:1]))
    with pytest.raises(DeviceUnreachable, match=r"cannot open serial port .*ttyUSB9.*plugged in"):
        await driver.connect()
    assert not SerialBus._buses


async def test_rtu_over_tcp_to_a_serial_gateway(sealer) -> None:
    clock = ModelClock()
    server = ModbusStationServer(sealer, clock=clock, framer="rtu")
    await server.start()
    cfg = {"protocol": "modbus", "host": "127.0.0.1", "port": server.port, "addressing": "zero_based",
           "tags": STATION_TAGS, "timeout": 0.3}
    rtu = ModbusDriver(ModbusDeviceConfig(name="sealer1", transport="rtu-over-tcp", **cfg))
    tcp = ModbusDriver(ModbusDeviceConfig(name="sealer1tcp", **cfg))  # MBAP framing to an RTU port: no
    try:
        await rtu.connect()
        for t in (0.3, 1.7, 3.1):
            clock.t = t
            assert_sealer(values(await rtu.read()), server.snapshot())
        await tcp.connect()
        batch = await tcp.read()
        assert set(batch.quality) == {Quality.BAD}
    finally:
        await rtu.close()
        await tcp.close()
        await server.stop()


async def test_simulate_serial_and_the_agent_end_to_end(pty_pair, tmp_path, broker, capture) -> None:
    """`linetap simulate modbus --serial` on one end; the agent with the sealer (1) and the leak tester (2)
    on the other, sharing the port, to the broker."""
    import subprocess
    import sys
    import time

    from agent_helpers import line_config, payloads, running_agent, telemetry_samples

    sim_end, agent_end = pty_pair
    proc = subprocess.Popen([sys.executable, "-m", "linetap.agent.cli", "simulate", "modbus", "--serial", sim_end,
                             "--baudrate", "38400", "--parity", "N", "--stopbits", "2", "--speed", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, ready = time.monotonic() + 15, ""
        while time.monotonic() < deadline and "simulator running" not in ready:
            ready = await asyncio.to_thread(proc.stdout.readline)
            ready = ready.decode()
            assert ready or proc.poll() is None, "the simulator exited"
        assert sim_end in ready and "RTU 38400 8N2" in ready, ready
        serial = {"port": agent_end, **LINE}
        devices = [{"protocol": "modbus", "name": name, "transport": "rtu", "serial": serial, "unit_id": unit,
                    "addressing": "zero_based", "poll_interval": "100ms", "timeout": "500ms", "tags": tags}
                   for name, unit, tags in (("sealer1", 1, STATION_TAGS), ("leak1", 2, LEAK_TESTER_TAGS))]
        cfg = line_config(tmp_path, broker, devices)
        async with running_agent(cfg):
            await capture.until(lambda m: {s["device"] for s in telemetry_samples(m)} == {"sealer1", "leak1"}
                                and len(telemetry_samples(m)) >= 5 * (len(STATION_TAGS) + len(LEAK_TESTER_TAGS)),
                                timeout=20)
        samples = telemetry_samples(capture.messages)
        assert {s["quality"] for s in samples} == {"good"}, [s for s in samples if s["quality"] != "good"][:3]
        counts = [s["value"] for s in samples if s["tag"] == "unit_count" and s["device"] == "sealer1"]
        assert counts == sorted(counts)
        states = [(e["body"]["device"], e["body"]["state"]) for e in payloads(capture.messages, "/events")
                  if e["body"]["kind"] == "device_state"]
        assert sorted(states) == [("leak1", "connected"), ("sealer1", "connected")]
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
