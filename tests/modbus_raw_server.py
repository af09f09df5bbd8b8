"""A small Modbus TCP server written on raw asyncio streams (not pymodbus), for reply faults.

It serves the four read functions correctly from fixed tables, and on request answers wrongly
in one of the ways a broken PLC or gateway does. The values tell the tables apart: holding
register i holds `HOLDING_BASE + i`, input register i holds `INPUT_BASE + i`, coil i is
`i % 3 == 0`, discrete input i is `i % 3 != 0` (the opposite), so a reply from the wrong table
decodes to values a test can recognise as wrong.

Faults (`fault(mode, every=1)`: every Nth reply from now on; `fault(None)`: none):

    function     a well-formed reply of the neighbouring table: function 4 for 3, 3 for 4, 2 for 1, 1 for 2
    unit         the reply's unit id is the request's + 6
    transaction  the reply's transaction id is the request's + 1000 (never sent)
    tid_zero     the reply's transaction id is 0 (pymodbus takes that for any request)
    byte_count   a consistent frame whose byte count (and data) is 10 bytes, whatever was asked
    carries_less the byte count is right, the frame carries 10 data bytes (MBAP length matches)
    truncated    the MBAP header announces the whole reply, only its first 20 bytes are sent
    silence      no reply at all
    exception    exception 4 (server device failure) for the request's function
    exception_other  an exception reply for another function (0x84 to a function-3 request)
    garbage      16 bytes that are not a Modbus TCP frame (protocol id 0x4142)
    late         the right reply, `late_by` seconds late
    dribble      the right reply, one byte per TCP write (a slow serial gateway)
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

HOLDING_BASE = 1000
INPUT_BASE = 40000
SIZE = 1000
NEIGHBOUR = {3: 4, 4: 3, 1: 2, 2: 1}


def table_value(function: int, address: int) -> int | bool:
    if function == 3:
        return HOLDING_BASE + address
    if function == 4:
        return INPUT_BASE + address
    if function == 1:
        return address % 3 == 0
    return address % 3 != 0


class RawModbusServer:
    def __init__(self, unit_id: int = 1) -> None:
        self.unit_id = unit_id
        self.port = 0
        self.requests: list[tuple[int, int, int, int, int]] = []  # (tid, unit, function, address, count)
        self.connections = 0
        self.replies = 0
        self.late_by = 0.5
        self._mode: str | None = None
        self._every = 1
        self._counted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> RawModbusServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    def fault(self, mode: str | None, every: int = 1) -> None:
        self._mode, self._every, self._counted = mode, every, 0

    # -- serving ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(7)
                tid, protocol, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                function = pdu[0]
                address, count = struct.unpack(">HH", pdu[1:5]) if len(pdu) >= 5 else (0, 0)
                self.requests.append((tid, unit, function, address, count))
                await self._answer(writer, tid, unit, function, address, count)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _faulty(self) -> str | None:
        if self._mode is None:
            return None
        self._counted += 1
        return self._mode if self._counted % self._every == 0 else None

    async def _answer(self, writer, tid: int, unit: int, function: int, address: int, count: int) -> None:
        self.replies += 1
        mode = self._faulty()
        if unit != self.unit_id:
            writer.write(frame(tid, unit, bytes([function | 0x80, 11])))
            return
        if function not in (1, 2, 3, 4):
            writer.write(frame(tid, unit, bytes([function | 0x80, 1])))
            return
        if mode == "silence":
            return
        if mode == "late":
            await asyncio.sleep(self.late_by)
        reply_function = NEIGHBOUR[function] if mode == "function" else function
        body = data(reply_function, address, count)
        pdu = bytes([reply_function, len(body)]) + body
        if mode == "byte_count":
            pdu = bytes([reply_function, 10]) + body[:10]
        elif mode == "carries_less":
            pdu = pdu[:12]
        elif mode == "exception":
            pdu = bytes([function | 0x80, 4])
        elif mode == "exception_other":
            pdu = bytes([NEIGHBOUR[function] | 0x80, 4])
        reply_tid = {"transaction": (tid + 1000) & 0xFFFF, "tid_zero": 0}.get(mode or "", tid)
        reply_unit = unit + 6 if mode == "unit" else unit
        out = frame(reply_tid, reply_unit, pdu)
        if mode == "truncated":
            out = out[:20]
        elif mode == "garbage":
            out = b"\x00\x01AB\x00\x0a" + bytes(range(10))
        if mode == "dribble":
            for i in range(len(out)):
                writer.write(out[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0.001)
            return
        writer.write(out)
        await writer.drain()


def data(function: int, address: int, count: int) -> bytes:
    if function in (3, 4):
        return struct.pack(f">{count}H", *(table_value(function, address + i) & 0xFFFF for i in range(count)))
    out = bytearray((count + 7) // 8)
    for i in range(count):
        if table_value(function, address + i):
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu
