"""The agent's writer: events and unit records never queue behind telemetry (real DuckDB buffer)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from agent_helpers import line_config, modbus_device

from linetap.agent.forwarder import MQTTForwarder
from linetap.agent.runtime import Agent
from linetap.buffers import AsyncBuffer
from linetap.buffers.records import Event
from linetap.drivers.samples import Quality, SampleBatch, now_us


def telemetry(i: int) -> SampleBatch:
    return SampleBatch(device="sealer1", tag=[f"t{k}" for k in range(100)], value=[float(i)] * 100,
                       quality=[Quality.GOOD] * 100, reason=[None] * 100, agent_ts=now_us(), source_ts=[None] * 100)


async def test_an_event_is_committed_while_telemetry_queued_before_it_waits(tmp_path):
    broker = SimpleNamespace(host="127.0.0.1", port=1)  # the forwarder is never started here
    cfg = line_config(tmp_path, broker, [modbus_device(1)], buffer={"flush_interval": "2s"})
    agent = Agent(cfg)
    agent.buffer = await AsyncBuffer.open(cfg.buffer.path, cfg.agent.id)
    agent.forwarder = MQTTForwarder(cfg, agent.buffer)
    writers = [asyncio.create_task(agent._telemetry_writer()), asyncio.create_task(agent._records_writer())]
    try:
        for i in range(50):
            await agent._produce(telemetry(i))
        agent._put(Event("nonconformance", now_us(), "sealer1", "sealer1", {"serial": "SN1"}))
        for _ in range(200):
            if await agent.buffer.last_seq("events") == 1:
                break
            await asyncio.sleep(0.01)
        assert await agent.buffer.last_seq("events") == 1, "the event was not committed"
        # the telemetry queued before it goes in at the end of the flush interval (2 s here)
        assert await agent.buffer.last_seq("telemetry") == 0
        await asyncio.wait_for(agent._queue.join(), 10)  # then the telemetry follows, nothing lost
        assert await agent.buffer.last_seq("telemetry") == 50 * 100
    finally:
        for w in writers:
            w.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        await agent.buffer.close()


async def test_an_event_is_committed_while_a_telemetry_commit_is_stuck(tmp_path):
    """A telemetry commit that takes long (DuckDB checkpointing, a slow disk) holds no event back."""
    broker = SimpleNamespace(host="127.0.0.1", port=1)
    cfg = line_config(tmp_path, broker, [modbus_device(1)], buffer={"flush_interval": "10ms"})
    agent = Agent(cfg)
    agent.buffer = await AsyncBuffer.open(cfg.buffer.path, cfg.agent.id)
    agent.forwarder = MQTTForwarder(cfg, agent.buffer)
    writers = [asyncio.create_task(agent._telemetry_writer()), asyncio.create_task(agent._records_writer())]
    try:
        stuck = asyncio.ensure_future(agent.buffer._call(time.sleep, 3.0))  # the telemetry thread is busy
        await agent._produce(telemetry(1))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        agent._put(Event("nonconformance", now_us(), "sealer1", "sealer1", {"serial": "SN1"}))
        while await agent.buffer.last_seq("events") < 1:
            assert time.monotonic() - t0 < 2.0, "the event waited for the stuck telemetry commit"
            await asyncio.sleep(0.01)
        assert not stuck.done()
        await stuck
        await asyncio.wait_for(agent._queue.join(), 10)
        assert await agent.buffer.last_seq("telemetry") == 100
    finally:
        for w in writers:
            w.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        await agent.buffer.close()
