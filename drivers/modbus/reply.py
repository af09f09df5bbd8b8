"""Does a Modbus TCP reply answer the request it is taken for? Checked on the raw frame.

pymodbus 3.16 matches a reply to its request only loosely: its framer skips (with an error log)
frames whose unit id or transaction id differ from the request's, so the request just times
out and the reason is lost; a transaction id of 0 is accepted for any request; and a reply for
another function code (a function-4 reply to a function-3 request) is decoded as that
function's response class and handed back as the answer. A PLC answering "read holding
registers" with its input registers would give good samples with wrong values.

`ReplyGuard` sits in front of pymodbus' frame handling (`TransactionManager.callback_data`): it
cuts the byte stream into MBAP frames itself, checks each against the request in flight
(transaction id, unit id, function code, byte count and the frame's own length), hands only a
frame that answers the request to pymodbus, and fails the request at once with `ReplyRejected`
and the reason otherwise. Late replies to requests that already timed out (a slow PLC) are
dropped quietly. This relies on pymodbus internals (`callback_data`, `response_future`,
`request_transaction_id`): pymodbus is pinned to 3.16.x, and `install` says when they are gone.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("linetap.drivers.modbus")

#: the read functions, by table: the only requests the driver ever sends (read-only)
READ_FUNCTION = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
FUNCTION_NAMES = {1: "read coils", 2: "read discrete inputs", 3: "read holding registers",
                  4: "read input registers"}
MBAP_SIZE = 7  # transaction id (2), protocol id (2), length (2), unit id (1)
MAX_FRAME = 260  # MBAP + 253-byte PDU


class ReplyRejected(Exception):
    """The device's reply does not answer the request (the words say how)."""


@dataclass(frozen=True, slots=True)
class Expected:
    """What the reply to one read request must look like."""

    function: int
    unit: int
    count: int  # registers, or bits for coils/discrete inputs
    bits: bool

    @property
    def byte_count(self) -> int:
        return (self.count + 7) // 8 if self.bits else 2 * self.count

    def what(self) -> str:
        return f"{self.count} {'bits' if self.bits else 'registers'}"


def expected_for(table: str, count: int, unit: int) -> Expected:
    return Expected(READ_FUNCTION[table], unit, count, table in ("coil", "discrete"))


def frame_size(buf: bytes) -> int | None:
    """Bytes of the MBAP frame at the start of `buf`, None while its header is incomplete."""
    if len(buf) < 6:
        return None
    return 6 + int.from_bytes(buf[4:6], "big")


def check_reply(frame: bytes, tid: int, expected: Expected) -> str | None:
    """Why `frame` (one whole MBAP frame) does not answer request `tid`, or None when it does.

    An exception reply (function code + 0x80) for the request's function answers it."""
    if len(frame) < MBAP_SIZE + 1:
        return f"reply of {len(frame)} bytes, too short for a Modbus TCP frame"
    got_tid = int.from_bytes(frame[0:2], "big")
    protocol = int.from_bytes(frame[2:4], "big")
    if protocol != 0:
        return f"reply with protocol id {protocol}, not Modbus (0)"
    if got_tid != tid:
        return f"reply for transaction {got_tid} to request {tid}"
    return check_pdu(frame[6], frame[7:], expected)


def check_pdu(unit: int, pdu: bytes, expected: Expected) -> str | None:
    """Why a reply from `unit` carrying `pdu` (function code onwards) does not answer the request, or
    None when it does: the checks every framing shares (TCP's MBAP, RTU's address and CRC)."""
    function = pdu[0]
    if unit != expected.unit:
        return f"reply from unit {unit} to a request for unit {expected.unit}"
    if function == expected.function | 0x80:
        if len(pdu) != 2:
            return f"exception reply of {len(pdu)} bytes (a Modbus exception is 2)"
        return None
    if function != expected.function:
        if function & 0x80:
            return (f"exception reply for function {function & 0x7F} to a function "
                    f"{expected.function} request")
        return f"reply for function {function} to a function {expected.function} request"
    if len(pdu) < 2:
        return "reply without a byte count"
    declared = pdu[1]
    if declared != expected.byte_count:
        return f"reply with {declared} bytes for {expected.what()}"
    if len(pdu) - 2 != declared:
        return f"reply says {declared} bytes but carries {len(pdu) - 2}"
    return None


class ReplyGuard:
    """Checks every frame the device sends before pymodbus sees it (see the module text).

    `expect()` before each request, `timed_out()` when the driver gives up waiting for it. A
    rejected reply fails the request in flight with `ReplyRejected`; bytes that arrive while no
    request waits are dropped (debug log).
    """

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self._inner = ctx.callback_data
        # pymodbus' transport drops its whole receive buffer once it holds more than one frame's
        # size (264 bytes): a late reply and the current one arriving together (two 133-byte
        # frames) would both be lost. This guard consumes every whole frame at once, so the
        # buffer only ever holds one partial frame plus what the socket just read.
        if getattr(ctx, "max_buffer_size", 0) < 1 << 16:
            ctx.max_buffer_size = 1 << 16
        self.expected: Expected | None = None
        self._stale: deque[int] = deque(maxlen=16)  # requests given up on: their late replies are dropped
        self.late_reply: int | None = None  # tid of a late reply dropped while the current request waited
        self.partial: tuple[int, int] | None = None  # (bytes received, frame size) of an incomplete reply
        ctx.callback_data = self.callback_data

    @staticmethod
    def install(client: Any) -> ReplyGuard | None:
        """Put a guard in front of `client`'s frame handling; None if pymodbus changed inside."""
        ctx = getattr(client, "ctx", None)
        if not all(hasattr(ctx, a) for a in ("callback_data", "response_future", "request_transaction_id")):
            return None
        return ReplyGuard(ctx)

    def expect(self, expected: Expected) -> None:
        self.expected = expected
        self.late_reply = None
        self.partial = None

    def timed_out(self) -> None:
        self._stale.append(self._ctx.request_transaction_id)

    def _pending(self):
        future = self._ctx.response_future
        return future if self.expected is not None and not future.done() else None

    def _fail(self, reason: str) -> None:
        if (future := self._pending()) is not None:
            self._stale.append(self._ctx.request_transaction_id)  # its real reply may still come
            future.set_exception(ReplyRejected(reason))
        else:
            log.debug("modbus bytes without a request dropped", reason=reason)

    def callback_data(self, data: bytes, addr: Any = None) -> int:
        used = 0
        while used < len(data):
            buf = data[used:]
            size = frame_size(buf)
            if size is not None and (buf[2:4] != b"\0\0" or not MBAP_SIZE + 1 <= size <= MAX_FRAME):
                # not a Modbus TCP frame: nothing in the stream can be trusted up to here
                self.partial = None
                self._fail(f"reply is not a Modbus TCP frame ({len(buf)} bytes starting {buf[:8].hex(' ')})")
                return len(data)
            if size is None or len(buf) < size:
                if self._pending() is not None:
                    self.partial = (len(buf), size or 0)
                return used  # wait for the rest of the frame
            self.partial = None
            frame = buf[:size]
            used += size
            tid = int.from_bytes(frame[0:2], "big")
            current = self._ctx.request_transaction_id
            pending = self._pending()
            if tid != current and tid in self._stale:
                self._stale.remove(tid)
                if pending is not None:
                    self.late_reply = tid
                log.debug("modbus late reply dropped", transaction=tid, waiting_for=current if pending else None)
                continue
            if pending is None:
                log.debug("modbus reply without a request dropped", transaction=tid, bytes=size)
                continue
            assert self.expected is not None
            if (reason := check_reply(frame, current, self.expected)) is not None:
                self._fail(reason)
                continue
            try:
                taken = self._inner(frame, addr)
            except Exception as err:  # pymodbus raises from its decoder inside the protocol callback
                self._fail(f"undecodable reply: {err}")
                continue
            if not taken and not pending.done():
                self._fail(f"reply not understood ({frame.hex(' ')})")
        return used


def check_response(response: Any, expected: Expected) -> str | None:
    """Checks on the response pymodbus decoded, behind the raw-frame checks (and in their place
    should the guard not be installed): the function code of the response class pymodbus chose,
    and the unit id."""
    function = getattr(response, "function_code", None)
    if function != expected.function and function != expected.function | 0x80:
        return f"reply for function {function} to a function {expected.function} request"
    unit = getattr(response, "dev_id", expected.unit)
    if unit != expected.unit:
        return f"reply from unit {unit} to a request for unit {expected.unit}"
    return None


class RejectedReplies:
    """Rejected replies of one device: counted (`counters`, shown in the status file), logged
    loudly for the first one, then quietly until the device answers right again (logged once).

    `rejected()` says when the connection should be reset: after `reset_after` in a row.
    """

    #: replies in a row that do not answer their requests after which the connection is reset
    reset_after = 5

    def __init__(self, device: str, endpoint: str, counters: dict[str, int]) -> None:
        self.device = device
        self.endpoint = endpoint
        self.counters = counters
        counters.setdefault("rejected_replies", 0)
        counters.setdefault("connection_resets", 0)
        self.in_row = 0
        self._since_loud: int | None = None  # rejected since the loud one; None: the device answers right

    def rejected(self, block: str, reason: str) -> bool:
        self.counters["rejected_replies"] += 1
        self.in_row += 1
        if self._since_loud is None:
            self._since_loud = 1
            log.warning("modbus reply rejected: it does not answer the request; the tags are bad until the "
                        "device answers right (a wrong unit id? a gateway mixing up clients?)",
                        device=self.device, block=block, reason=reason, endpoint=self.endpoint)
        else:
            self._since_loud += 1
            log.debug("modbus reply rejected", device=self.device, block=block, reason=reason)
        if self.in_row >= self.reset_after:
            self.in_row = 0
            self.counters["connection_resets"] += 1
            return True
        return False

    def reset_reason(self, reason: str) -> str:
        return f"{self.reset_after} replies in a row did not answer their requests (last: {reason}); reconnecting"

    def answered(self) -> None:
        """The device answered a request as it should (with data or a Modbus exception)."""
        self.in_row = 0
        if self._since_loud is not None:  # (cheap when nothing was rejected: it runs for every reply)
            log.info("modbus replies answer the requests again", device=self.device, rejected=self._since_loud)
            self._since_loud = None
