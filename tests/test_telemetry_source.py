"""The forwarder's telemetry source: messages made from a fresh commit in memory are the messages a
read of the buffer makes from the same rows (real DuckDB buffer, no broker needed)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from linetap.agent.encoders.json_envelope import JsonEnvelope
from linetap.agent.telemetry_source import TelemetrySource
from linetap.agent.topics import Topics
from linetap.buffers import AsyncBuffer
from linetap.drivers.samples import Quality, SampleBatch, TagNames, ValueColumns, VType

AGENT = "sealing-line-2"
TOPICS = Topics("acme/plant1/assembly/line2", AGENT, {"sealer-1": "sealer1"})
BULK = TagNames([f"bulk_{i:04d}" for i in range(300)])


def modbus_like(device: str, poll: int) -> SampleBatch:
    """A decoder's typed columns: float32 bulk values, an int, a PLC string, a failed block."""
    n = len(BULK)
    num = np.float32(np.sin(np.arange(n) + poll)).astype(np.float64)
    vtype = np.full(n, VType.FLOAT32, np.uint8)
    vtype[0], num[0] = VType.INT, 1000 + poll
    vtype[1] = VType.TEXT
    missing = np.zeros(n, bool)
    missing[-5:] = True
    quality = [Quality.GOOD] * (n - 5) + [Quality.BAD] * 5
    reason = [None] * (n - 5) + ["modbus exception 2 (illegal data address)"] * 5
    return SampleBatch(device, BULK, ValueColumns(num, vtype, missing, {1: f"SN-{poll:06d}"}), quality, reason,
                       agent_ts=1_765_000_000_000_000 + poll * 25_000)


def opcua_like(poll: int) -> SampleBatch:
    return SampleBatch("oven-2", ["zone1.temp", "zone1.ok", "recipe"], [180.5 + poll, True, "R-17"],
                       [Quality.GOOD] * 3, [None] * 3, agent_ts=1_765_000_000_000_000 + poll * 25_000 + 7,
                       source_ts=[1_765_000_000_000_000 + poll, None, None])


async def drain(source: TelemetrySource, after: int) -> tuple[list[tuple[int, int, str, bytes]], int]:
    out = []
    while await source.load(after):
        while source.has_messages:
            out.append(source.next_message(sent_at=42))
            after = out[-1][1]
    return out, after


async def test_messages_from_a_fresh_commit_are_the_messages_of_a_buffer_read(tmp_path):
    buf = await AsyncBuffer.open(tmp_path / "line 2" / "sealing-line-2.duckdb", AGENT)
    try:
        encoder = JsonEnvelope(AGENT, TOPICS, batch=128)
        live = TelemetrySource(buf, encoder, chunk_rows=20_000)
        reads = []
        real_read = buf.read_telemetry

        async def counted(*args):
            reads.append(args)
            return await real_read(*args)

        buf.read_telemetry = counted
        from_memory, after = [], 0
        for commit in range(12):
            if commit == 5:
                await buf.skip_telemetry(7)  # a gap: seqs no row will ever hold
            table = pa.concat_tables([modbus_like("sealer-1", commit).to_arrow(), opcua_like(commit).to_arrow(),
                                      modbus_like("press-3", commit).to_arrow()])
            first, _last = (await buf.append(table)).telemetry
            live.offer(first, table)
            got, after = await drain(live, after)
            from_memory += got
        assert len(reads) == 1, "after a gap the buffer is read once; every other commit comes from memory"
        buf.read_telemetry = real_read
        from_buffer, _ = await drain(TelemetrySource(buf, encoder, chunk_rows=1000), 0)
        assert [m[:3] for m in from_memory] == [m[:3] for m in from_buffer]
        assert from_memory == from_buffer, "byte for byte"
        assert from_memory[-1][1] == await buf.last_seq("telemetry")
    finally:
        await buf.close()


async def test_an_offer_that_does_not_continue_the_stream_is_not_used(tmp_path):
    buf = await AsyncBuffer.open(tmp_path / "sealing-line-2.duckdb", AGENT)
    try:
        source = TelemetrySource(buf, JsonEnvelope(AGENT, TOPICS, batch=500), chunk_rows=20_000)
        tables = [modbus_like("sealer-1", k).to_arrow() for k in range(3)]
        spans = [(await buf.append(t)).telemetry for t in tables]
        source.offer(spans[2][0], tables[2])  # the first two commits were never offered (not connected)
        msgs, after = await drain(source, 0)
        assert [(m[0], m[1]) for m in msgs][0][0] == 1 and after == spans[2][1]
        assert sum(m[1] - m[0] + 1 for m in msgs) == 3 * len(BULK), "every row once, none twice"
    finally:
        await buf.close()
