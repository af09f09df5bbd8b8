"""What every protocol driver is: connect, read (or subscribe), close. Nothing more.

Reconnection, backoff and device-state events live in `linetap.agent.runtime`, once for
all protocols. A driver raises only `DriverError` subclasses, never a library exception.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

import structlog

from linetap.drivers.samples import SampleBatch

log = structlog.get_logger("linetap.drivers")


class DriverError(Exception):
    """A device problem, worded for the engineer who has to fix it."""


class DeviceUnreachable(DriverError):
    """The connection is down (refused, reset, timed out at connect): the agent reconnects."""


class DeviceConfigError(DriverError):
    """The device answered, but the tag map does not fit it (e.g. illegal address at start-up)."""


# What a socket error means, in the words an engineer searches for (strerror is OS-specific).
_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by peer",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection closed by the peer (broken pipe)",
    errno.ETIMEDOUT: "timed out (no answer from the host)",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTDOWN: "host is down",
    errno.ENETDOWN: "network is down",
    errno.EADDRNOTAVAIL: "address not available",
}


def describe_os_error(err: BaseException | None, timeout: float | None = None, *, peer: str = "device") -> str:
    """What happened to a connection, in words: `connection refused`, `connection reset by peer`,
    `timed out after 2s`, `host unreachable`, ... `err` None: the peer closed the connection."""
    if err is None:
        return f"connection closed by the {peer}"
    if isinstance(err, TimeoutError | asyncio.TimeoutError | socket.timeout) and err.errno != errno.ETIMEDOUT:
        return f"timed out after {timeout:g}s" if timeout else "timed out"
    if isinstance(err, socket.gaierror):
        return f"host name not found ({err.strerror or err})"
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {err.verify_message or err.reason}"
    if isinstance(err, ssl.SSLError):
        return f"TLS handshake failed: {err.reason or err}"
    if isinstance(err, OSError):
        if err.errno in _ERRNO_WORDS:
            return _ERRNO_WORDS[err.errno]
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, ConnectionResetError):
            return "connection reset by peer"
        if err.strerror:
            return err.strerror[:1].lower() + err.strerror[1:]
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class Driver(ABC):
    """One device. `samples()` yields batches until the connection is lost (DeviceUnreachable)."""

    def __init__(self, name: str) -> None:
        self.name = name
        #: counts the agent shows in its status file (e.g. rejected replies), kept over reconnects
        self.counters: dict[str, int] = {}
        #: seconds the read behind the latest batch took (polled reads; None for notifications)
        self.read_seconds: float | None = None

    @property
    @abstractmethod
    def tag_names(self) -> list[str]:
        """Every tag this driver produces samples for (used for all-bad batches on loss)."""

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection; raise DeviceUnreachable when the device cannot be reached."""

    @abstractmethod
    def samples(self) -> AsyncIterator[SampleBatch]:
        """Yield sample batches; raise DeviceUnreachable when the connection is lost."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection; never raises."""


class PollingDriver(Driver):
    """A driver that reads all its tags every `interval` seconds."""

    def __init__(self, name: str, interval: float) -> None:
        super().__init__(name)
        self.interval = interval

    @abstractmethod
    async def read(self) -> SampleBatch:
        """One poll of every tag. Per-request failures give bad-quality samples, not exceptions."""

    async def samples(self) -> AsyncIterator[SampleBatch]:
        # Fixed-rate schedule: a slow read does not shift later polls. A slot whose time has come
        # while a read ran is polled at once, late; only slots that passed entirely are skipped.
        # (Skipping every late slot halved a device's rate when its reads took just over the
        # interval: 8 devices x 16 requests @ 25 ms, benchmarks/libmodbus.py.)
        next_at = time.monotonic()
        task = asyncio.current_task()
        while True:
            started = time.monotonic()
            batch = await self.read()
            self.read_seconds = time.monotonic() - started
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # a cancellation a library swallowed (3.11 wait_for)
            yield batch
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:
                skipped = int((now - next_at) // self.interval)
                if skipped:
                    log.debug("poll overrun", device=self.name, skipped=skipped)
                    next_at += skipped * self.interval
            await asyncio.sleep(max(0.0, next_at - now))
