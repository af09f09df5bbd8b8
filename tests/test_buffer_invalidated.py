"""DuckDB invalidates a database whose checkpoint fails (found by the libmodbus benchmark with
`buffer.memory_limit: 8MiB`: "failed to pin block of size 256.0 KiB (7.9 MiB/8.0 MiB used)"); every
later statement on it fails until it is detached and attached again. The buffer reattaches it,
the failed write is a BufferWriteFailed (an operating state the agent retries), and nothing
committed is lost or written twice."""

from __future__ import annotations

import asyncio

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from linetap.buffers import AsyncBuffer, BufferWriteFailed, DuckDBBuffer
from linetap.buffers.records import Event
from linetap.drivers.samples import TELEMETRY_SCHEMA, VType

AGENT = "line-3-heat-sealer"
ROWS = 8 * 992  # one poll of the benchmark's 8 connections x 992 float32
POLLS_PER_COMMIT = 8


@pytest.fixture
def buffer_path(tmp_path):
    folder = tmp_path / "line 3 buffers"
    folder.mkdir()
    return folder / "heat-sealer-buffer.duckdb"


def polls(rng: np.random.Generator, ts: int) -> pa.Table:
    n = ROWS * POLLS_PER_COMMIT
    tags = pa.array([f"bulk.f{i:04d}" for i in range(992)] * (n // 992))
    return pa.table({
        "device": pa.array([f"press-{i // 992 % 8}" for i in range(n)]), "tag": tags,
        "num": pa.array(rng.random(n)), "text": pa.nulls(n, pa.string()),
        "quality": pa.array(np.zeros(n, np.uint8)), "reason": pa.nulls(n, pa.string()),
        "source_ts": pa.nulls(n, pa.int64()), "agent_ts": pa.array(np.full(n, ts, np.int64)),
        "vtype": pa.array(np.full(n, VType.FLOAT32, np.uint8))}, schema=TELEMETRY_SCHEMA)


def all_seqs(buf: DuckDBBuffer) -> list[int]:
    return [r[0] for r in buf._con.execute("SELECT seq FROM telemetry ORDER BY seq").fetchall()]


def test_a_checkpoint_that_invalidates_the_buffer_is_survived(buffer_path) -> None:
    rng = np.random.default_rng(5)
    buf = DuckDBBuffer(buffer_path, AGENT, memory_limit=8 * 2**20)  # below the config's floor, on purpose
    committed, cursor, failure, table = 0, 0, None, None
    try:
        for i in range(400):  # it fails after ~15 commits on this machine
            table = polls(rng, 1_000 + i)
            try:
                first, last = buf.append_telemetry(table)
            except BufferWriteFailed as exc:
                failure = exc
                break
            assert first == committed + 1
            committed = last
            read = buf.read_telemetry(cursor, 50_000)  # the forwarder reads while the agent writes
            if read.num_rows:
                cursor = read.column("seq")[-1].as_py()
                buf.ack("mqtt", "telemetry", cursor)
        if failure is None:
            pytest.fail("DuckDB no longer invalidates the buffer at 8 MiB under this load: "
                        "this test needs another way to make a checkpoint fail")
        assert "invalidated" in str(failure) and failure.cause == "write_failed"
        # The agent retries the same rows; with room for the checkpoint they land, right after the last commit
        buf._con.execute("SET memory_limit = '64MiB'")
        first, last = buf.append_telemetry(table)
        assert (first, last) == (committed + 1, committed + table.num_rows)
        stored, _ = buf.append_records([Event("alarm", 1, data={"alarm": "test"})])
        assert stored[0].seq == 1
        assert all_seqs(buf) == list(range(1, last + 1))
    finally:
        buf.close()
    reopened = DuckDBBuffer(buffer_path, AGENT)
    try:
        assert reopened.last_seq("telemetry") == last and reopened.last_seq("events") == 1
        assert len(all_seqs(reopened)) == last
    finally:
        reopened.close()


INVALIDATED = ('IO Error: Database "{}" has been invalidated because checkpointing failed. Detach and '
               'reattach it before using it again. Original error: failed to pin block of size 256.0 KiB')


@pytest.mark.parametrize("database", ["linetap_buffer", "linetap_records"])
def test_the_size_cap_on_an_invalidated_database_is_a_write_failure_not_a_crash(buffer_path, monkeypatch,
                                                                                database) -> None:
    """The housekeeping task once died on it: the cap's size check ran outside the error mapping."""
    buf = DuckDBBuffer(buffer_path, AGENT)
    try:
        buf.append_telemetry(polls(np.random.default_rng(1), 1_000))

        def invalidated():
            raise duckdb.IOException(INVALIDATED.format(database))
        monkeypatch.setattr(buf, "used_bytes", invalidated)
        with pytest.raises(BufferWriteFailed, match="invalidated"):
            buf.enforce_cap(2 * 10**9, "mqtt")
        monkeypatch.undo()
        assert buf.enforce_cap(2 * 10**9, "mqtt").gaps == []  # reattached, in use again
        buf.append_records([Event("alarm", 2, data={"alarm": "test"})])
        assert buf.last_seq("events") == 1 and len(all_seqs(buf)) == ROWS * POLLS_PER_COMMIT
    finally:
        buf.close()


def test_a_read_of_an_invalidated_database_is_a_write_failure(buffer_path, monkeypatch) -> None:
    """The forwarder's reads go through AsyncBuffer, which waits and reads again on BufferWriteFailed."""
    async def scenario() -> None:
        abuf = await AsyncBuffer.open(buffer_path, AGENT)
        try:
            await abuf.append(polls(np.random.default_rng(2), 1_000))
            real = abuf._buffer.read_telemetry
            calls = []

            def fails_once(*args):
                calls.append(args)
                if len(calls) == 1:
                    raise duckdb.IOException(INVALIDATED.format("linetap_buffer"))
                return real(*args)
            monkeypatch.setattr(abuf._buffer, "read_telemetry", fails_once)
            with pytest.raises(BufferWriteFailed, match="invalidated"):
                await abuf.read_telemetry(0, 100)
            assert (await abuf.read_telemetry(0, 100)).column("seq").to_pylist() == list(range(1, 101))
        finally:
            await abuf.close()
    asyncio.run(scenario())
