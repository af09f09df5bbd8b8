"""The local store-and-forward buffer."""

from .duckdb_buffer import (
    STREAMS,
    AppendResult,
    AsyncBuffer,
    BufferCorrupt,
    BufferDamaged,
    BufferError,
    BufferWriteFailed,
    CapResult,
    DuckDBBuffer,
    StreamStats,
    keep_copies,
)

__all__ = ["STREAMS", "AppendResult", "AsyncBuffer", "BufferCorrupt", "BufferDamaged", "BufferError", "BufferWriteFailed", "CapResult", "DuckDBBuffer", "StreamStats", "keep_copies"]
