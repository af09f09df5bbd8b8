"""One serial port shared by every device (unit id) on its RS-485 bus.

A serial port opens once (pyserial locks it exclusively) and an RTU bus carries one request at a
time: the devices on one port share one `SerialBus`, with one pymodbus serial client, one reply guard
and one lock. A driver `attach()`es at connect and `detach()`es at close (the last one out closes the
port); each request runs in a `turn()`: the lock, and before the request the silence the Modbus serial
spec asks between two frames (3.5 character times; 1.75 ms above 19200 baud), which pymodbus 3.16
does not keep itself. A unit that does not answer only costs its own timeout; a port that fails (an
adapter unplugged) is seen by every device on it, and the next `open()` opens it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import structlog
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.framer import FramerType

from linetap.config.devices.modbus import SerialLine

from ..base import DeviceUnreachable, describe_os_error
from .rtu_reply import RtuReplyGuard
from .words import register_word_replies

log = structlog.get_logger("linetap.drivers.modbus")

#: the longest RTU frame (bytes): pymodbus' own reply timeout is a backstop behind ours
MAX_FRAME = 256


class SerialBus:
    """The shared client of one serial port (see the module text). Get it with `SerialBus.attach()`."""

    _buses: dict[tuple[int, str], SerialBus] = {}  # (event loop, port) -> bus

    def __init__(self, line: SerialLine, key: tuple[int, str]) -> None:
        self.line = line
        self._key = key
        self.users = 0
        self.client: AsyncModbusSerialClient | None = None
        self.guard: RtuReplyGuard | None = None
        self._lock = asyncio.Lock()
        self._opening = asyncio.Lock()
        self._quiet_from = 0.0  # monotonic time from which the line is quiet long enough for a frame

    @classmethod
    def attach(cls, line: SerialLine) -> SerialBus:
        key = (id(asyncio.get_running_loop()), line.port)
        bus = cls._buses.get(key)
        if bus is None:
            bus = cls._buses[key] = SerialBus(line, key)
        elif bus.line != line:  # the config check forbids it; two agents in one process could not
            raise DeviceUnreachable(f"serial port {line.port} is already open at other settings")
        bus.users += 1
        return bus

    def detach(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self._buses.pop(self._key, None)
            self._close()

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected

    async def open(self, timeout: float) -> AsyncModbusSerialClient:
        """The open client; opens the port when it is not (first device, or after a failure)."""
        async with self._opening:
            if self.client is not None and self.client.connected:
                return self.client
            self._close()
            line = self.line
            client = AsyncModbusSerialClient(
                line.port, framer=FramerType.RTU, baudrate=line.baudrate, bytesize=line.bytesize,
                parity=line.parity, stopbits=line.stopbits, timeout=timeout + 1.0 + line.wire_time(2 * MAX_FRAME),
                retries=0, reconnect_delay=0, name=f"linetap-{line.port}",
            )
            register_word_replies(client)
            guard = RtuReplyGuard.install(client)
            if guard is None:
                log.warning("pymodbus internals changed: RTU replies are checked only after pymodbus decoded "
                            "them", port=line.port)
            error: BaseException | None = None
            ctx = getattr(client, "ctx", None)
            create = getattr(ctx, "call_create", None)
            if create is not None:  # pymodbus logs and swallows why the port did not open: keep it
                async def call_create():
                    nonlocal error
                    try:
                        return await create()
                    except BaseException as err:
                        error = err
                        raise

                ctx.call_create = call_create
            try:
                async with asyncio.timeout(timeout):
                    ok = await client.connect()
            except Exception as err:  # never let a library exception escape
                ok, error = False, err
            if ok:  # pymodbus reports a port it could not open as connected == False, shortly after
                await asyncio.sleep(0)
                ok = client.connected
            if not ok:
                with contextlib.suppress(Exception):
                    client.close()
                raise DeviceUnreachable(f"cannot open serial port {line.port}: {_why(error, line.port)}")
            self.client, self.guard = client, guard
            self._quiet_from = time.monotonic() + line.frame_gap
            log.info("modbus serial port open", port=line.port, baudrate=line.baudrate,
                     settings=f"{line.bytesize}{line.parity}{line.stopbits}", devices=self.users)
            return client

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """One request on the bus: nobody else's, and after the spec's silence since the last frame."""
        async with self._lock:
            wait = self._quiet_from - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                yield
            finally:
                self._quiet_from = time.monotonic() + self.line.frame_gap

    def _close(self) -> None:
        client, self.client, self.guard = self.client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
            log.info("modbus serial port closed", port=self.line.port)


def _why(error: BaseException | None, port: str) -> str:
    if error is None:
        return f"pymodbus could not open it (does {port} exist, and may this user open it?)"
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error) if type(error).__name__ == "SerialException" else describe_os_error(error)
    if "ermission denied" in text or getattr(error, "errno", None) == 13:
        return (f"{text}: the user running linetap needs the dialout group (sudo usermod -aG dialout USER, "
                "then log in again)")
    if "No such file" in text or getattr(error, "errno", None) == 2:
        return f"{text}: is the adapter plugged in? (ls /dev/ttyUSB* /dev/serial/by-id/)"
    if "ould not exclusively lock" in text or "busy" in text.lower():
        return f"{text}: another program has the port open"
    return text
