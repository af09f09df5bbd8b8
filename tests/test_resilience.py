"""Outages of any length: backoff that never overflows, and the agent alive after days of retries.

The days pass on a fake clock: `linetap.agent.backoff.sleep` (the one wait between retries of
the agent) is replaced by a fake that adds the delay to a per-task fake clock and yields. The
sockets stay real: a closed Modbus port and a closed broker port on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest
from agent_helpers import line_config, modbus_device, payloads
from fixtures_broker import MQTTCapture, free_port

from linetap.agent import backoff as backoff_module
from linetap.agent.backoff import Backoff
from linetap.agent.runtime import Agent
from linetap.simulators import ModbusStationServer, StationModel

DAY = 86_400.0


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
