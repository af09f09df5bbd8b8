"""The buffer for asyncio code (`AsyncBuffer`): `DuckDBBuffer` on two threads of its own."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from linetap.buffers.duckdb_buffer import AppendResult, CapResult, DuckDBBuffer, StreamStats
from linetap.buffers.errors import _WRITE_FAILURES, BufferDamaged, BufferWriteFailed, _first_line, _is_damage
from linetap.buffers.records import Event, StoredRecord
from linetap.buffers.schema import DEFAULT_MEMORY_LIMIT, RECORD_STREAMS


class AsyncBuffer:
    """The buffer for asyncio code: telemetry and housekeeping run on one thread, record appends
    and reads on another, so an event never waits for a telemetry insert or checkpoint."""

    def __init__(self, executor: ThreadPoolExecutor, buffer: DuckDBBuffer) -> None:
        self._executor = executor
        self._records_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="linetap-records")
        self._buffer = buffer
        self.path = buffer.path
        self.agent_id = buffer.agent_id

    @classmethod
    async def open(cls, path: str | Path, agent_id: str, *, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> AsyncBuffer:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="linetap-buffer")
        loop = asyncio.get_running_loop()
        try:
            buffer = await loop.run_in_executor(
                executor, functools.partial(DuckDBBuffer, path, agent_id, memory_limit=memory_limit))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, buffer)

    async def _call(self, fn, *args):
        return await self._run(self._executor, fn, *args)

    async def _call_records(self, fn, *args):
        return await self._run(self._records_executor, fn, *args)

    async def _run(self, executor: ThreadPoolExecutor, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except duckdb.Error as exc:
            if _is_damage(exc):  # at any time, not only at open: the agent must stop in order
                raise BufferDamaged(f"buffer {self.path} is damaged: {_first_line(exc)}") from None
            # A read spills to `<buffer>.tmp` beside the buffer: on a full disk a read fails the way a
            # commit does, and is an operating state like it (found by the soak: a records read on a
            # full disk killed the forwarder)
            text = str(exc)
            if "has been invalidated" in text or self._buffer.reattach_pending():  # e.g. a read after a
                # checkpoint failed on the other thread, or while a reattach the disk refused is pending
                await asyncio.get_running_loop().run_in_executor(executor, self._buffer.reattach_invalidated, exc)
                raise BufferWriteFailed(f"cannot use buffer {self.path}: {_first_line(exc)}", "write_failed") from None
            cause = next((cause for marker, cause in _WRITE_FAILURES if marker in text), None)
            if cause is not None and isinstance(exc, duckdb.IOException):
                raise BufferWriteFailed(f"cannot use buffer {self.path}: {_first_line(exc)}", cause) from None
            raise

    async def append(self, telemetry: pa.Table | None = None, events: Sequence[Event] = (),
                     units: Sequence[dict[str, Any]] = ()) -> AppendResult:
        stored_events, stored_units = [], []
        if events or units:
            stored_events, stored_units = await self._call_records(self._buffer.append_records, events, units)
        span = await self._call(self._buffer.append_telemetry, telemetry) if telemetry is not None else None
        return AppendResult(span, stored_events, stored_units)

    async def skip_telemetry(self, count: int) -> tuple[int, int]:
        return await self._call(self._buffer.skip_telemetry, count)

    async def retry_records(self) -> None:
        """Commit the events and unit records a failed commit left held in memory."""
        await self._call_records(self._buffer.append_records)

    def held_records(self) -> int:
        return self._buffer.held_records()

    def held(self) -> list[StoredRecord]:
        """The chained records a failed commit left in memory (for a sidecar file)."""
        return [r for stream in RECORD_STREAMS for r in self._buffer._held[stream]]

    async def read_telemetry(self, after_seq: int, limit: int, align: int = 1) -> pa.Table:
        return await self._call(self._buffer.read_telemetry, after_seq, limit, align)

    async def open_units(self) -> list[dict[str, Any]]:
        return await self._call_records(self._buffer.open_units)

    async def last_reading(self, device: str) -> int | None:
        return await self._call(self._buffer.last_reading, device)

    async def read_records(self, stream: str, after_seq: int, limit: int) -> list[StoredRecord]:
        return await self._call_records(self._buffer.read_records, stream, after_seq, limit)

    async def cursor(self, sink: str, stream: str) -> int:
        return await self._call(self._buffer.cursor, sink, stream)

    async def ack(self, sink: str, stream: str, seq: int) -> None:
        await self._call(self._buffer.ack, sink, stream, seq)

    async def last_seq(self, stream: str) -> int:
        # Read without a thread hop: a plain dict lookup of an int is atomic under the GIL.
        return self._buffer.last_seq(stream)

    async def stats(self, sink: str = "mqtt") -> list[StreamStats]:
        return await self._call(self._buffer.stats, sink)

    async def gaps(self) -> tuple[int, int]:
        return await self._call(self._buffer.gaps)

    async def purge_delivered(self, sink: str, older_than_us: int) -> dict[str, int]:
        return await self._call(self._buffer.purge_delivered, sink, older_than_us)

    async def enforce_cap(self, max_bytes: int, sink: str) -> CapResult:
        return await self._call(self._buffer.enforce_cap, max_bytes, sink)

    async def file_size(self) -> int:
        return await self._call(self._buffer.file_size)

    async def close(self) -> None:
        try:
            await asyncio.to_thread(self._records_executor.shutdown, wait=True)
            await self._call(self._buffer.close)
        finally:
            self._executor.shutdown(wait=True)
