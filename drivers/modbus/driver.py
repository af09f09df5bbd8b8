"""Modbus driver (pymodbus async client) for Modbus TCP, RTU on a serial line and RTU through a
serial gateway's TCP port; its config model is `linetap.config.devices.modbus`.

The reads are planned once, at start-up (`plan.plan_reads`); each reply is checked against its request
(`reply`) and decoded as a whole block (`decode`). This module is the transport: connect, request,
failure handling per block, and the poll that puts the blocks together into one batch. RTU replies
have their own guard (`rtu_reply`); the devices on one serial port share it, with one client and one
request at a time (`serial_bus`).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

import numpy as np
import structlog
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from linetap.config.devices.modbus import ModbusDeviceConfig
from linetap.drivers.samples import Quality, SampleBatch, TagNames, ValueColumns, now_us

from ..base import DeviceUnreachable, PollingDriver, describe_os_error
from .decode import BlockFailure, DecodePlan, build_decode_plan, decode_block
from .plan import ReadBlock, plan_reads, split_block
from .reply import RejectedReplies, ReplyGuard, ReplyRejected, check_response, expected_for
from .rtu_reply import RtuReplyGuard
from .serial_bus import SerialBus
from .words import register_word_replies

log = structlog.get_logger("linetap.drivers.modbus")

# --------------------------------------------------------------------------------------------
# Read planning (once, at start-up)
# --------------------------------------------------------------------------------------------

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}



# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------



class ModbusDriver(PollingDriver):
    """Polls one Modbus device: every tag, in as few requests as the plan allows.

    Samples come in plan order (table, then address), the order of `tag_names`.
    """

    #: polls in a row in which no request got any answer before the device counts as unreachable
    unreachable_after_silent_polls = 3
    #: timeouts in a row within one poll after which the rest of that poll is skipped
    skip_after_timeouts = 2

    def __init__(self, config: ModbusDeviceConfig) -> None:
        super().__init__(config.name, config.poll_interval)
        self.config = config
        self.blocks = plan_reads(config)
        self._plans: list[DecodePlan] = []
        names: list[str] = []
        for block in self.blocks:
            self._plans.append(build_decode_plan(block, len(names), config.addressing))
            names.extend(t.name for t in block.tags)
        self._names = TagNames(names)
        self._good = [Quality.GOOD] * len(names)
        self._vtype = np.concatenate([p.vtype for p in self._plans]) if self._plans else np.zeros(0, np.uint8)
        self._client: AsyncModbusTcpClient | None = None
        self._connect_error: BaseException | None = None
        self._lost_cause: str | None = None  # what ended the connection, as pymodbus saw it
        self._failures: dict[tuple[str, int, int], str] = {}  # block -> failure kind being reported
        self._silent_polls = 0
        self._where = config.endpoint
        self._guard: ReplyGuard | RtuReplyGuard | None = None
        self._bus: SerialBus | None = None
        self.rejects = RejectedReplies(config.name, self._where, self.counters)

    @property
    def tag_names(self) -> list[str]:
        return list(self._names)

    # --- connection ----------------------------------------------------------------------

    async def connect(self) -> None:
        await self.close()
        cfg = self.config
        if cfg.transport == "rtu":
            await self._connect_serial()
            return
        # pymodbus' own timeout is a backstop; ours (asyncio.wait_for) fires first and is exact.
        rtu = cfg.transport == "rtu-over-tcp"
        client = AsyncModbusTcpClient(
            cfg.host, port=cfg.port, timeout=cfg.timeout + 1.0, retries=0, reconnect_delay=0,
            name=f"linetap-{cfg.name}", framer=FramerType.RTU if rtu else FramerType.SOCKET,
        )
        self._capture_errors(client)
        if not register_word_replies(client):
            log.info("pymodbus refused linetap's register reply classes: decoding through pymodbus' own "
                     "(the same values, more CPU per reply)", device=cfg.name)
        self._guard = RtuReplyGuard.install(client) if rtu else ReplyGuard.install(client)
        if self._guard is None:
            log.warning("pymodbus internals changed: replies are checked only after pymodbus decoded them "
                        "(unit and transaction ids unchecked)", device=cfg.name)
        self._connect_error = None
        self._lost_cause = None
        try:
            async with asyncio.timeout(cfg.timeout):  # not wait_for: it can swallow a cancel on 3.11
                ok = await client.connect()
        except TimeoutError:
            ok = False
            self._connect_error = TimeoutError()
        except Exception as err:  # never let a library exception escape
            ok = False
            self._connect_error = err
        if not ok:
            _safe_close(client)
            raise DeviceUnreachable(f"cannot connect to {self._where} (device {cfg.name}): "
                                    f"{_describe_os_error(self._connect_error, cfg.timeout)}")
        self._client = client
        self._silent_polls = 0
        log.info("modbus connected", device=cfg.name, endpoint=self._where, requests_per_poll=len(self.blocks),
                 transport=cfg.transport)

    async def _connect_serial(self) -> None:
        """Open (or share) the serial port, then ask the unit for the first block: on a bus the port
        being open says nothing about the device, so the device counts as connected once it answers
        (with data, a Modbus exception or even a wrong reply: something is there)."""
        cfg = self.config
        bus = SerialBus.attach(cfg.serial)
        try:
            client = await bus.open(cfg.timeout)
        except BaseException:
            bus.detach()
            raise
        self._bus, self._client, self._guard = bus, client, bus.guard
        self._lost_cause = None
        if self._plans:
            try:
                await self._request(client, self._plans[0].block)
            except BlockFailure as failure:
                if failure.kind == "timeout":
                    raise self._lost(f"unit {cfg.unit_id} does not answer ({failure.reason}); is the unit id "
                                     f"right, is it powered, are the line settings {cfg.serial.baudrate} "
                                     f"{cfg.serial.bytesize}{cfg.serial.parity}{cfg.serial.stopbits} its own, "
                                     "are A/B wired the right way round?") from None
        self._silent_polls = 0
        log.info("modbus connected", device=cfg.name, endpoint=self._where, requests_per_poll=len(self.blocks),
                 transport="rtu", baudrate=cfg.serial.baudrate, devices_on_port=bus.users)

    def _capture_errors(self, client: AsyncModbusTcpClient) -> None:
        """pymodbus logs and swallows the OSError of a failed connect, and reports a lost connection
        only as `connected == False` (a request in flight just waits for its timeout). Keep both
        causes for our messages, and fail the request in flight at once with the cause."""
        ctx = getattr(client, "ctx", None)
        create = getattr(ctx, "call_create", None)
        if create is not None:
            async def call_create():
                try:
                    return await create()
                except BaseException as err:
                    self._connect_error = err
                    raise

            ctx.call_create = call_create
        disconnected = getattr(ctx, "callback_disconnected", None)
        if disconnected is not None:
            def callback_disconnected(exc: Exception | None) -> None:
                # pymodbus calls this for losses it did not cause itself (not for our close())
                if self._client is client:
                    self._lost_cause = describe_os_error(exc)
                    future = getattr(ctx, "response_future", None)
                    if future is not None and not future.done():
                        future.set_exception(_Disconnected(self._lost_cause))
                return disconnected(exc)

            ctx.callback_disconnected = callback_disconnected

    async def close(self) -> None:
        self._drop_client()

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        bus, self._bus = self._bus, None
        if bus is not None:  # the port stays open while other devices on it use it
            self._guard = None
            bus.detach()
        elif client is not None:
            _safe_close(client)

    def _lost(self, cause: str) -> DeviceUnreachable:
        self._drop_client()
        return DeviceUnreachable(f"connection to {self._where} (device {self.name}) lost: {cause}")

    # --- polling -------------------------------------------------------------------------

    async def read(self) -> SampleBatch:
        client = self._client
        if client is None or not client.connected:
            raise self._lost(self._lost_cause or "not connected")
        agent_ts = now_us()
        n = len(self._names)
        num = np.full(n, np.nan)
        vtype = self._vtype.copy()
        missing: np.ndarray | None = None
        text: dict[int, str | int] = {}
        quality = self._good.copy()
        reason: list[str | None] = [None] * n

        def bad(first: int, last: int, why: str) -> None:
            nonlocal missing
            if missing is None:
                missing = np.zeros(n, dtype=bool)
            missing[first:last] = True
            quality[first:last] = [Quality.BAD] * (last - first)
            reason[first:last] = [why] * (last - first)
        answered = 0
        timeouts_in_row = 0
        skip_reason: str | None = None
        bi = -1
        while bi + 1 < len(self._plans):
            bi += 1
            plan = self._plans[bi]
            block = plan.block
            first, last = plan.first, plan.first + len(block.tags)
            if skip_reason is not None:
                bad(first, last, skip_reason)
                continue
            try:
                raw = await self._request(client, block)
                decoded = decode_block(plan, raw)
            except BlockFailure as failure:
                if failure.kind == "exception 2" and len(block.tags) > 1 and self._split(bi):
                    bi -= 1  # read the smaller blocks now, in this poll
                    answered += 1
                    continue
                if failure.kind == "rejected":
                    answered += 1  # the device answered, but not this request
                    timeouts_in_row = 0
                    if self.rejects.rejected(block.describe(), failure.reason):
                        raise self._lost(self.rejects.reset_reason(failure.reason)) from None
                    bad(first, last, failure.reason)
                    continue
                if failure.kind == "timeout":
                    timeouts_in_row += 1
                    if not client.connected:
                        raise self._lost(f"{self._lost_cause or 'connection closed'} "
                                         f"while waiting for {block.describe()}") from None
                    if timeouts_in_row >= self.skip_after_timeouts:
                        skip_reason = f"not read: device not responding ({failure.reason})"
                else:
                    answered += 1  # the device did answer, with an error
                    timeouts_in_row = 0
                    self.rejects.answered()
                self._report(block, failure.kind, failure.reason)
                bad(first, last, failure.reason)
                continue
            answered += 1
            timeouts_in_row = 0
            self.rejects.answered()
            if self._failures and (key := (block.table, block.address, block.count)) in self._failures:
                log.info("modbus block recovered", device=self.name, block=block.describe(),
                         after=self._failures.pop(key))
            block_values, uncertain = decoded
            num[first:last] = block_values.num
            if block_values.text:
                vtype[first:last] = block_values.vtype
                text.update((first + i, t) for i, t in block_values.text.items())
            for i, why in uncertain:
                quality[first + i] = Quality.UNCERTAIN
                reason[first + i] = why
        if answered == 0 and self._plans:
            self._silent_polls += 1
            if self._silent_polls >= self.unreachable_after_silent_polls:
                self._silent_polls = 0
                raise self._lost(f"no answer to any request for {self.unreachable_after_silent_polls} polls "
                                 f"(timeout {self.config.timeout:g}s)")
        else:
            self._silent_polls = 0
        return SampleBatch(device=self.name, tag=self._names, value=ValueColumns(num, vtype, missing, text or None),
                           quality=quality, reason=reason, agent_ts=agent_ts)

    def _split(self, bi: int) -> bool:
        """Replace plan `bi` by smaller requests (for the rest of this connection's life and after)."""
        block = self._plans[bi].block
        parts = split_block(block, self.config.addressing)
        if len(parts) == 1:
            return False
        first = self._plans[bi].first
        plans = []
        for part in parts:
            plans.append(build_decode_plan(part, first, self.config.addressing))
            first += len(part.tags)
        self._plans[bi:bi + 1] = plans
        self.blocks = [p.block for p in self._plans]
        log.warning("modbus device rejects a coalesced read; reading its parts separately "
                    "(set max_gap: 0 if the device has holes in its map)", device=self.name,
                    block=block.describe(), parts=[p.describe() for p in parts])
        return True

    async def _request(self, client: AsyncModbusTcpClient, block: ReadBlock):
        bus = self._bus
        async with bus.turn() if bus is not None else contextlib.nullcontext():
            return await self._request_now(client, block)

    async def _request_now(self, client: AsyncModbusTcpClient, block: ReadBlock):
        cfg = self.config
        kwargs = {"count": block.count, "device_id": cfg.unit_id}
        table = block.table
        expected = expected_for(table, block.count, cfg.unit_id)
        timeout = cfg.timeout
        if cfg.serial is not None:  # plus the time the request (8 bytes) and its reply take on the line
            timeout += cfg.serial.wire_time(8 + 5 + expected.byte_count)
        guard = self._guard
        if guard is not None:
            guard.expect(expected)
        if table == "holding":
            call = client.read_holding_registers(block.address, **kwargs)
        elif table == "input":
            call = client.read_input_registers(block.address, **kwargs)
        elif table == "coil":
            call = client.read_coils(block.address, **kwargs)
        else:
            call = client.read_discrete_inputs(block.address, **kwargs)
        try:
            async with asyncio.timeout(timeout):
                response = await call
        except TimeoutError:
            if guard is None:
                raise BlockFailure("timeout", f"timed out after {timeout:.3g}s") from None
            guard.timed_out()
            if guard.partial is not None:
                got, size = guard.partial
                of = f" of {size}" if size else ""
                raise BlockFailure("rejected", f"incomplete reply: {got}{of} bytes within {timeout:.3g}s") from None
            late = " (only a late reply to an earlier request came)" if guard.late_reply is not None else ""
            raise BlockFailure("timeout", f"timed out after {timeout:.3g}s{late}") from None
        except ReplyRejected as err:
            raise BlockFailure("rejected", str(err)) from None
        except _Disconnected as err:
            raise self._lost(f"{err} while waiting for {block.describe()}") from None
        except ConnectionException as err:
            raise self._lost(self._lost_cause or f"{err}") from None
        except ModbusIOException as err:
            if not client.connected:
                raise self._lost(self._lost_cause or str(err)) from None
            raise BlockFailure("malformed", f"bad response: {err}") from None
        except (ModbusException, ValueError, struct.error) as err:
            raise BlockFailure("malformed", f"bad response: {err}") from None
        except OSError as err:
            raise self._lost(_describe_os_error(err, cfg.timeout)) from None
        if response is None:
            raise BlockFailure("malformed", "no response object")
        if (why := check_response(response, expected)) is not None:
            raise BlockFailure("rejected", why)
        if response.isError():
            code = getattr(response, "exception_code", 0)
            name = EXCEPTION_NAMES.get(code, "unknown exception code")
            raise BlockFailure(f"exception {code}", f"modbus exception {code} ({name})")
        return response

    def _report(self, block: ReadBlock, kind: str, reason: str) -> None:
        """Loudly once per failure kind and block, then quietly until it recovers."""
        key = (block.table, block.address, block.count)
        if self._failures.get(key) == kind:
            log.debug("modbus read failed", device=self.name, block=block.describe(), reason=reason)
            return
        self._failures[key] = kind
        log.warning("modbus read failed", device=self.name, block=block.describe(), reason=reason,
                    tags=len(block.tags), endpoint=self._where)


def _safe_close(client: AsyncModbusTcpClient) -> None:
    try:
        client.close()
    except Exception as err:  # close never raises
        log.debug("modbus close failed", error=repr(err))


def _describe_os_error(err: BaseException | None, timeout: float | None = None) -> str:
    if err is None:
        return "connection refused or host unreachable"
    text = describe_os_error(err, timeout)
    if text == "connection refused":
        return "connection refused (is the device on, and is the port right?)"
    return text


class _Disconnected(ConnectionError):
    """The connection ended while a request waited for its answer (the words say how)."""

