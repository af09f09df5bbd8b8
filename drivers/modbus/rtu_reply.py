"""Does a Modbus RTU reply answer the request it is taken for? The RTU counterpart of `reply.ReplyGuard`.

An RTU frame has no length field and no transaction id: `address, function, data, CRC-16`. The size of
a reply to a read follows from its function code and byte count (exception replies are 5 bytes), so the
guard cuts frames for the one request in flight, checks the CRC (a bad one is noise on the line, or a
wrong baud rate or parity), then the unit id, function code and byte count (`reply.check_pdu`, the
checks Modbus TCP gets too), and hands only a frame that answers the request to pymodbus' framer.
Without transaction ids a late reply is recognised by its unit and function: those of a request that
timed out (another unit on the same bus, answering after its time) are dropped quietly. Used for
serial lines and for RTU through a serial gateway's TCP port alike.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import structlog
from pymodbus.framer import FramerRTU

from .reply import Expected, ReplyRejected, check_pdu

log = structlog.get_logger("linetap.drivers.modbus")

READ_FUNCTIONS = (1, 2, 3, 4)


def rtu_frame_size(buf: bytes) -> int | None:
    """Bytes of the reply frame at the start of `buf` (a read reply or an exception), None while too
    little has arrived to tell, 0 when it is no reply to a read request."""
    if len(buf) < 2:
        return None
    function = buf[1]
    if function & 0x80:
        return 5  # address, function | 0x80, exception code, CRC (2)
    if function not in READ_FUNCTIONS:
        return 0
    if len(buf) < 3:
        return None
    return 5 + buf[2]  # address, function, byte count, data, CRC (2)


def crc_ok(frame: bytes) -> bool:
    return FramerRTU.compute_CRC(frame[:-2]) == int.from_bytes(frame[-2:], "big")


class RtuReplyGuard:
    """Checks every RTU frame before pymodbus sees it; the same interface as `reply.ReplyGuard`:
    `expect()` before each request, `timed_out()` when the driver gives up waiting for it, and
    `partial` / `late_reply` for the words of a timeout."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self._inner = ctx.callback_data
        if getattr(ctx, "max_buffer_size", 0) < 1 << 16:  # see reply.ReplyGuard
            ctx.max_buffer_size = 1 << 16
        self.expected: Expected | None = None
        self._stale: deque[tuple[int, int]] = deque(maxlen=16)  # (unit, function) of requests given up on
        self.late_reply: int | None = None  # unit of a late reply dropped while the current request waited
        self.partial: tuple[int, int] | None = None
        ctx.callback_data = self.callback_data

    @staticmethod
    def install(client: Any) -> RtuReplyGuard | None:
        """Put a guard in front of `client`'s frame handling; None if pymodbus changed inside."""
        ctx = getattr(client, "ctx", None)
        if not all(hasattr(ctx, a) for a in ("callback_data", "response_future")):
            return None
        return RtuReplyGuard(ctx)

    def expect(self, expected: Expected) -> None:
        self.expected = expected
        self.late_reply = None
        self.partial = None

    def timed_out(self) -> None:
        if self.expected is not None:
            self._stale.append((self.expected.unit, self.expected.function))

    def _pending(self):
        future = self._ctx.response_future
        return future if self.expected is not None and not future.done() else None

    def _fail(self, reason: str) -> None:
        if (future := self._pending()) is not None:
            future.set_exception(ReplyRejected(reason))
        else:
            log.debug("modbus bytes without a request dropped", reason=reason)

    def callback_data(self, data: bytes, addr: Any = None) -> int:
        used = 0
        while used < len(data):
            buf = data[used:]
            pending = self._pending()
            if pending is None:
                log.debug("modbus bytes without a request dropped", bytes=len(buf), start=buf[:8].hex(" "))
                return len(data)
            assert self.expected is not None
            size = rtu_frame_size(buf)
            if size == 0:
                self.partial = None
                self._fail(f"reply is not a Modbus RTU reply to a read ({len(buf)} bytes starting "
                           f"{buf[:8].hex(' ')}): noise on the line, or a wrong baud rate or parity?")
                return len(data)
            if size is None or len(buf) < size:
                self.partial = (len(buf), size or 0)
                return used  # wait for the rest of the frame
            self.partial = None
            frame = buf[:size]
            used += size
            if not crc_ok(frame):
                self._fail(f"reply with a bad CRC ({size} bytes starting {frame[:8].hex(' ')}): noise on the "
                           "line, or a wrong baud rate or parity?")
                return len(data)  # nothing after a garbled frame can be trusted
            key = (frame[0], frame[1] & 0x7F)
            if key != (self.expected.unit, self.expected.function) and key in self._stale:
                self._stale.remove(key)
                self.late_reply = frame[0]
                log.debug("modbus late reply dropped", unit=frame[0], waiting_for=self.expected.unit)
                continue
            if (reason := check_pdu(frame[0], frame[1:-2], self.expected)) is not None:
                self._fail(reason)
                continue
            try:
                self._inner(frame, addr)
            except Exception as err:  # pymodbus raises from its decoder inside the protocol callback
                self._fail(f"undecodable reply: {err}")
                continue
            if not pending.done():
                self._fail(f"reply not understood ({frame.hex(' ')})")
        return used
