"""Outages of any length: backoff that never overflows, and the agent alive after days of retries.

The days pass on a fake clock: `linetap.agent.backoff.sleep` (the one wait between retries of
the agent) is replaced by a fake that adds the delay to a per-task fake clock and yields. The
sockets stay real: a closed Modbus port and a closed broker port on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import yaml
from agent_helpers import line_config, modbus_device, payloads, start_simulator_process
from fixtures_broker import MQTTCapture, free_port

from linetap.agent import backoff as backoff_module
from linetap.agent.backoff import Backoff
from linetap.agent.payload import Topics
from linetap.agent.runtime import Agent
from linetap.config.loader import load_config
from linetap.simulators import ModbusStationServer, StationModel

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


@pytest.mark.timeout(300)
async def test_days_of_device_and_broker_outage_then_both_reconnect(tmp_path, broker, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(backoff_module, "sleep", clock.sleep)
    broker.stop()  # the port stays ours: nothing listens there until broker.start()
    plc_port = free_port()
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
