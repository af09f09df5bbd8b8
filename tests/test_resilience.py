"""Outages of any length: backoff that never overflows, and the agent alive after days of retries.

The days pass on a fake clock: `linetap.agent.backoff.sleep` (the one wait between retries of
the agent) is replaced by a fake that adds the delay to a per-task fake clock and yields. The
sockets stay real: a closed Modbus port and a closed broker port on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import yaml
from agent_helpers import (
    line_config,
    modbus_device,
    payloads,
    running_agent,
    start_simulator_process,
    telemetry_samples,
)
from fixtures_broker import Broker, MQTTCapture
from fixtures_opcua import make_driver

from linetap.agent import backoff as backoff_module
from linetap.agent.backoff import Backoff
from linetap.agent.runtime import Agent
from linetap.agent.topics import Topics
from linetap.config.devices.modbus import ModbusDeviceConfig
from linetap.config.loader import load_config
from linetap.drivers import DeviceUnreachable
from linetap.drivers.modbus import ModbusDriver
from linetap.simulators import STATION_TAGS, ModbusStationServer, StationModel

DAY = 86_400.0
ROOT = Path(__file__).parents[1]


def test_a_million_retries_stay_capped_and_never_overflow():
    b = Backoff(0.5, 30.0, rng=random.Random(1))
    delays = [b.next() for _ in range(1_000_000)]
    assert delays[0] == pytest.approx(0.5, rel=0.21)
    assert all(0.0 < d <= 30.0 for d in delays)
    assert min(delays[-1000:]) >= 30.0 * 0.8 - 1e-9  # at the cap, spread by the jitter
    b.reset()
    assert b.next() <= 0.5 * 1.2


def test_delays_double_until_the_cap_without_jitter():
    b = Backoff(0.1, 1.0, jitter=0.0)
    assert [round(b.next(), 6) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    b.reset()
    assert b.next() == pytest.approx(0.1)


async def test_wait_goes_through_the_injected_sleep():
    slept: list[float] = []

    async def fake(d: float) -> None:
        slept.append(d)

    b = Backoff(1.0, 4.0, jitter=0.0, sleep=fake)
    assert [await b.wait() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert slept == [1.0, 2.0, 4.0, 4.0]


class FakeClock:
    """Per-task fake time: each retrying loop (device loop, forwarder) lives through its own days."""

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    async def sleep(self, delay: float) -> None:
        name = asyncio.current_task().get_name()
        self.t[name] += delay
        self.calls[name] += 1
        await asyncio.sleep(0)


def _free_port_below_ephemeral() -> int:
    """A free port below the kernel's ephemeral range. Thousands of connects to a closed port
    inside that range end, sooner or later, in a TCP self-connect (source port == destination
    port) that then holds the port the server wants to bind. Real servers (502, 4840, 1883)
    are below the range, so that is where this test puts them."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1025, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


@pytest.fixture
def quiet_broker(tmp_path_factory):
    """A private broker on a port below the ephemeral range, not started."""
    b = Broker(tmp_path_factory.mktemp("broker"), port=_free_port_below_ephemeral())
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.timeout(300)
async def test_days_of_device_and_broker_outage_then_both_reconnect(tmp_path, quiet_broker, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(backoff_module, "sleep", clock.sleep)
    broker = quiet_broker  # nothing listens on its port until broker.start()
    plc_port = _free_port_below_ephemeral()
    folder = tmp_path / "line 3 heat sealer"
    folder.mkdir()
    cfg = line_config(folder, broker, [modbus_device(plc_port, name="heat-sealer-1", poll_interval="50ms")],
                      mqtt={"reconnect_min": "500ms", "reconnect_max": "30s"},
                      reconnect={"min": "500ms", "max": "30s"},
                      buffer={"path": str(folder / "heat-sealer-buffer.duckdb")})
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    device_task, fwd_task = "device:heat-sealer-1", "forwarder"
    try:
        await asyncio.wait_for(agent.ready.wait(), 10)
        outage = 2 * DAY  # at the 30 s cap: ~5800 retries each, the old `2 ** attempt` overflowed at 1024
        while clock.t[device_task] < outage or clock.t[fwd_task] < outage:
            assert not task.done(), f"the agent died during the outage: {task.exception()!r}"
            await asyncio.sleep(0.05)
        assert clock.calls[device_task] > 1100 and clock.calls[fwd_task] > 1100
        assert agent.stats.devices["heat-sealer-1"].state == "lost"
        assert not agent.forwarder.stats.connected

        # the server and the broker come back: both loops reconnect at their next retry
        async with ModbusStationServer(StationModel(seed=5, cycle_time=1.0, idle_time=0.2),
                                       host="127.0.0.1", port=plc_port):
            broker.start()
            with MQTTCapture(broker.host, broker.port) as cap:
                deadline = asyncio.get_running_loop().time() + 30
                while not (agent.stats.devices["heat-sealer-1"].state == "connected"
                           and agent.forwarder.stats.connected):
                    assert not task.done(), f"the agent died: {task.exception()!r}"
                    assert asyncio.get_running_loop().time() < deadline, "no reconnect after the outage"
                    await asyncio.sleep(0.05)
                msgs = await cap.until(lambda m: any(
                    p["body"]["kind"] == "device_state" and p["body"]["state"] == "connected"
                    for p in payloads(m, "/events")), timeout=20)
        states = [p["body"]["state"] for p in payloads(msgs, "/events") if p["body"]["kind"] == "device_state"]
        assert states[:2] == ["lost", "connected"]  # never connected before: the first success is `connected`
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


# -- stopping: SIGTERM says `offline` itself and disconnects cleanly; kill -9 leaves it to the will ------

LINETAP = Path(sys.executable).with_name("linetap")  # the installed console script


def _sealer_line(tmp_path: Path, broker, plc_port: int) -> tuple[Path, str]:
    """`plant config/line 3/line-3-heat-sealer.yaml` for the example heat sealer: (file, status topic)."""
    folder = tmp_path / "plant config" / "line 3"
    folder.mkdir(parents=True)
    example = load_config(ROOT / "config/examples/heat-sealer-modbus.yaml")
    device = example.devices[0].model_dump(mode="json", exclude_none=True)
    device.update({"name": "heat-sealer-1", "port": plc_port, "poll_interval": "50ms", "timeout": "500ms"})
    cfg = line_config(folder, broker, [device], buffer={"path": str(folder / "heat-sealer-buffer.duckdb")})
    path = folder / "line-3-heat-sealer.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return path, Topics.from_config(cfg).status


def _status_docs(msgs) -> list[dict]:
    return [orjson.loads(m.payload) for m in msgs]


def _start_agent(cfg_path: Path, status_topic: str, cap: MQTTCapture) -> tuple[subprocess.Popen, dict]:
    agent = subprocess.Popen([str(LINETAP), "run", str(cfg_path)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, cwd=cfg_path.parent)
    try:
        msgs = cap.wait_for(lambda ms: any(d["state"] == "online" for d in _status_docs(ms)), timeout=20)
    except TimeoutError:
        agent.kill()
        raise AssertionError(f"the agent never said online: {agent.communicate(timeout=10)[1].decode()}") from None
    return agent, next(d for d in _status_docs(msgs) if d["state"] == "online")


def _retained(broker, topic: str) -> dict:
    with MQTTCapture(broker.host, broker.port, topics=(topic,), clean=True) as late:
        msgs = late.wait_for(lambda ms: len(ms) >= 1, timeout=5)
    assert msgs[0].retain
    return orjson.loads(msgs[0].payload)


@pytest.mark.timeout(90)
def test_sigterm_publishes_offline_at_the_stop_and_no_last_will(tmp_path, broker):
    sim, plc_port = start_simulator_process()
    try:
        cfg_path, topic = _sealer_line(tmp_path, broker, plc_port)
        with MQTTCapture(broker.host, broker.port, topics=(topic,), clean=True) as cap:
            agent, online = _start_agent(cfg_path, topic, cap)
            time.sleep(1.5)  # running: polling, forwarding
            cap.clear()
            sigterm_us = int(time.time() * 1e6)
            agent.send_signal(signal.SIGTERM)
            _, err = agent.communicate(timeout=30)
            assert agent.returncode == 0 and b"Traceback" not in err, err.decode()
            time.sleep(1.5)  # a will would be published the moment the broker sees the socket close
            docs = _status_docs(cap.messages)
    finally:
        sim.send_signal(signal.SIGINT)
        sim.wait(10)
    # exactly one message after the SIGTERM: our own offline, stamped at the stop; no will after it
    # (the will is the offline built at connect time: its ts is the connect time, before the SIGTERM)
    assert [d["state"] for d in docs] == ["offline"], docs
    assert docs[0]["ts"] >= sigterm_us > online["ts"]
    retained = _retained(broker, topic)
    assert retained["state"] == "offline" and retained["ts"] == docs[0]["ts"]


@pytest.mark.timeout(90)
def test_kill_9_leaves_the_last_will_as_the_retained_status(tmp_path, broker):
    sim, plc_port = start_simulator_process()
    try:
        cfg_path, topic = _sealer_line(tmp_path, broker, plc_port)
        with MQTTCapture(broker.host, broker.port, topics=(topic,), clean=True) as cap:
            agent, online = _start_agent(cfg_path, topic, cap)
            time.sleep(1.0)
            cap.clear()
            kill_us = int(time.time() * 1e6)
            agent.kill()
            agent.wait(10)
            msgs = cap.wait_for(lambda ms: len(ms) >= 1, timeout=15)  # keepalive 5 s at the latest
            time.sleep(0.5)
            docs = _status_docs(cap.messages)
    finally:
        sim.send_signal(signal.SIGINT)
        sim.wait(10)
    assert msgs and [d["state"] for d in docs] == ["offline"], docs
    # the will: built when the agent connected, so stamped before the kill
    assert online["ts"] - 1_000_000 <= docs[0]["ts"] < kill_us
    assert _retained(broker, topic) == docs[0]


# -- loss reasons: what happened to the socket, in words --------------------------------------------------

def _start_opcua_simulator() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "linetap.agent.cli", "simulate", "opcua", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if m := re.search(r"opc\.tcp://[\w.]+:(\d+)", line):
            return proc, f"opc.tcp://127.0.0.1:{m.group(1)}/linetap/"
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("the OPC UA simulator did not report its endpoint")


def _modbus_driver(port: int) -> ModbusDriver:
    return ModbusDriver(ModbusDeviceConfig(protocol="modbus", name="heat-sealer-1", host="127.0.0.1", port=port,
                                           tags=STATION_TAGS, addressing="zero_based", timeout=2.0))


async def test_modbus_plc_killed_mid_request_is_connection_reset_then_refused():
    sim, port = start_simulator_process()
    driver = _modbus_driver(port)
    try:
        await driver.connect()
        await driver.read()
        sim.send_signal(signal.SIGSTOP)  # the request below stays unread in the PLC's socket
        read = asyncio.create_task(driver.read())
        await asyncio.sleep(0.3)
        sim.kill()  # unread data: the kernel answers with a reset
        sim.wait(10)
        started = time.monotonic()
        with pytest.raises(DeviceUnreachable) as lost:
            await read
        assert time.monotonic() - started < 1.0, "the loss is reported at once, not after the 2 s timeout"
        assert "lost: connection reset by peer while waiting for holding" in str(lost.value)
        with pytest.raises(DeviceUnreachable, match=rf"cannot connect to 127.0.0.1:{port}.*: connection refused"):
            await driver.connect()
    finally:
        await driver.close()
        if sim.poll() is None:
            sim.kill()
            sim.wait()


async def test_opcua_server_killed_is_closed_or_reset_then_refused():
    for mode in ("subscribe", "poll"):
        sim, endpoint = _start_opcua_simulator()
        driver = make_driver(endpoint, mode=mode, timeout=2.0)
        try:
            await driver.connect()
            samples = driver.samples().__aiter__()
            await samples.__anext__()
            sim.kill()
            sim.wait(10)
            with pytest.raises(DeviceUnreachable) as lost:
                async with asyncio.timeout(10):
                    while True:
                        await samples.__anext__()
            assert re.search(r"lost: connection (closed by the server|reset by peer)$", str(lost.value)), \
                (mode, str(lost.value))
            with pytest.raises(DeviceUnreachable, match=r": connection refused"):
                await driver.connect()
        finally:
            await driver.close()
            if sim.poll() is None:
                sim.kill()
                sim.wait()


async def test_opcua_server_frozen_is_timed_out():
    sim, endpoint = _start_opcua_simulator()
    driver = make_driver(endpoint, mode="poll", timeout=1.0)
    try:
        await driver.connect()
        await driver.read()
        sim.send_signal(signal.SIGSTOP)
        with pytest.raises(DeviceUnreachable, match=r"lost: timed out after 1s"):
            await driver.read()
        with pytest.raises(DeviceUnreachable, match=r": timed out after 1s"):
            await driver.connect()
    finally:
        await driver.close()
        sim.kill()
        sim.wait()


def _device_states(msgs) -> list[dict]:
    return [p["body"] for p in payloads(msgs, "/events") if p["body"]["kind"] == "device_state"]


@pytest.mark.timeout(120)
async def test_agent_events_say_what_happened_to_the_plc_and_the_broker(tmp_path, broker, capture):
    sim, plc_port = start_simulator_process()
    closed_port = _free_port_below_ephemeral()
    cfg = line_config(tmp_path, broker, [modbus_device(plc_port, name="heat-sealer-1", poll_interval="50ms"),
                                         modbus_device(closed_port, name="heat-sealer-2", poll_interval="50ms")],
                      buffer={"path": str(tmp_path / "heat-sealer-buffer.duckdb")})
    try:
        async with running_agent(cfg) as agent:
            msgs = await capture.until(lambda m: any(
                s["device"] == "heat-sealer-1" and s["state"] == "connected" for s in _device_states(m)), timeout=20)
            sim.kill()
            sim.wait(10)
            msgs = await capture.until(lambda m: any(
                s["device"] == "heat-sealer-1" and s["state"] == "lost" for s in _device_states(m)) and any(
                s["device"] == "heat-sealer-1" and s["quality"] == "bad" for s in telemetry_samples(m)), timeout=20)
            await asyncio.sleep(0.5)  # a retry or two against the dead PLC
            plc = agent.stats.devices["heat-sealer-1"]
            assert plc.state == "lost" and "connection refused" in plc.reason, plc.reason

            # the broker killed: the forwarder's loss says how, and the retries say refused
            broker.proc.kill()
            broker.proc.wait()
            fwd = agent.forwarder.stats
            deadline = time.monotonic() + 10
            while fwd.connected or fwd.last_error is None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            loss = fwd.last_error
            while fwd.last_error == loss and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            retry = fwd.last_error
        broker.proc = None
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
    states = _device_states(msgs)
    lost = next(s for s in states if s["device"] == "heat-sealer-1" and s["state"] == "lost")
    assert re.search(r"lost: connection (closed by the device|reset by peer)", lost["reason"]), lost
    assert "not connected" not in lost["reason"]
    never = next(s for s in states if s["device"] == "heat-sealer-2" and s["state"] == "lost")
    assert re.search(rf"cannot connect to 127.0.0.1:{closed_port} .*: connection refused", never["reason"]), never
    bad = [s for s in telemetry_samples(msgs) if s["device"] == "heat-sealer-1" and s["quality"] == "bad"]
    assert bad and all(s["reason"] == lost["reason"] for s in bad)
    assert loss in ("connection closed by the broker", "connection reset by peer"), loss
    assert retry == "connection refused", retry
