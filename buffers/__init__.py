"""The local store-and-forward buffer."""

from .async_buffer import AsyncBuffer
from .duckdb_buffer import AppendResult, CapResult, DuckDBBuffer, StreamStats
from .errors import BufferCorrupt, BufferDamaged, BufferError, BufferWriteFailed
from .schema import STREAMS, keep_copies

__all__ = ["STREAMS", "AppendResult", "AsyncBuffer", "BufferCorrupt", "BufferDamaged", "BufferError", "BufferWriteFailed", "CapResult", "DuckDBBuffer", "StreamStats", "keep_copies"]
