"""The local store-and-forward buffer."""

from .duckdb_buffer import (
    STREAMS,
    AppendResult,
    AsyncBuffer,
    BufferCorrupt,
    BufferError,
    BufferWriteFailed,
    CapResult,
    DuckDBBuffer,
    StreamStats,
)

__all__ = ["STREAMS", "AppendResult", "AsyncBuffer", "BufferCorrupt", "BufferError", "BufferWriteFailed", "CapResult", "DuckDBBuffer", "StreamStats"]
