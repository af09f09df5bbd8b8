"""The buffer's errors, and how DuckDB's and the file system's errors map onto them."""

from __future__ import annotations

from linetap.buffers.records import StoredRecord


class BufferError(Exception):
    """The buffer cannot be used; the message says what to do."""


class BufferCorrupt(BufferError):
    """The file exists but cannot be opened as a linetap buffer."""


class BufferDamaged(BufferCorrupt):
    """DuckDB found damage while the agent ran (a block that fails its checksum, a torn page):
    the agent stops in order, keeps what it holds in memory and copies of the files."""


class BufferWriteFailed(BufferError):
    """A commit failed for a reason outside the data (disk full, read-only or vanished folder):
    nothing of it was written, the buffer is still usable, the same write can be tried again.
    `cause` is one of disk_full, read_only, permission_denied, folder_missing, write_failed."""

    def __init__(self, message: str, cause: str, records: tuple[list[StoredRecord], list[StoredRecord]] = ([], [])):
        super().__init__(message)
        self.cause = cause
        self.records = records  # append_records: what was chained and is held in memory (events, units)


# DuckDB's words for a file whose bytes are wrong (a torn write, a scribbled block, not a
# database at all). Every other error at open is the environment's or ours, never damage.
_DAMAGE_MARKERS = ("corrupt", "checksum", "not a valid duckdb", "replaying wal", "replay wal", "wal file",
                   "could not read enough bytes", "truncated", "serializ", "invalid block", "magic")


# The file system's words (strerror) for a write it refused, and the alarm each one raises.
_WRITE_FAILURES = (("No space left", "disk_full"), ("Disk quota exceeded", "disk_full"),
                   ("Read-only file system", "read_only"), ("Permission denied", "permission_denied"),
                   ("No such file", "folder_missing"))


def _is_damage(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in _DAMAGE_MARKERS)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
