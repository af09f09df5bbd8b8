"""The agent's writer: events and unit records never queue behind telemetry (real DuckDB buffer)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from agent_helpers import line_config, modbus_device

from linetap.agent.forwarder import MQTTForwarder
from linetap.agent.records import Event, Quality, SampleBatch, now_us
from linetap.agent.runtime import Agent
from linetap.buffers import AsyncBuffer


def telemetry(i: int) -> SampleBatch:
    return SampleBatch(device="sealer1", tag=[f"t{k}" for k in range(100)], value=[float(i)] * 100,
                       quality=[Quality.GOOD] * 100, reason=[None] * 100, agent_ts=now_us(), source_ts=[None] * 100)


async def test_an_event_is_committed_ahead_of_telemetry_queued_before_it(tmp_path):
    broker = SimpleNamespace(host="127.0.0.1", port=1)  # the forwarder is never started here
    cfg = line_config(tmp_path, broker, [modbus_device(1)], buffer={"flush_interval": "2s"})
    agent = Agent(cfg)
    agent.buffer = await AsyncBuffer.open(cfg.buffer.path, cfg.agent.id)
    agent.forwarder = MQTTForwarder(cfg, agent.buffer)
    try:
        for i in range(50):
            await agent._put(telemetry(i))
        await agent._put(Event("nonconformance", now_us(), "sealer1", "sealer1", {"serial": "SN1"}))
        writer = asyncio.create_task(agent._writer())
        for _ in range(200):
            if await agent.buffer.last_seq("events") == 1:
                break
            await asyncio.sleep(0.01)
        assert await agent.buffer.last_seq("events") == 1, "the event was not committed"
        # Taken first and committed on its own; the telemetry queued before it goes in the next
        # flush (2 s here). Taken in arrival order, the 50 batches would have gone in with it.
        await asyncio.sleep(0.5)
        assert await agent.buffer.last_seq("telemetry") == 0, "the event was taken after the telemetry queued before it"
        await asyncio.wait_for(agent._queue.join(), 10)  # then the telemetry follows, nothing lost
        assert await agent.buffer.last_seq("telemetry") == 50 * 100
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    finally:
        await agent.buffer.close()
