"""Modbus TCP driver (pymodbus async client); its config model is `linetap.config.devices.modbus`.

The driver plans its reads once, at start-up (`plan_reads`): tags are grouped by table, sorted by
address and coalesced into as few requests as the limits allow. Each register block is decoded as
a whole: its bytes are permuted once (numpy index array) so that every field reads big-endian,
then one precompiled `struct.Struct` unpacks all its values (pad bytes for the gaps).

Byte/word order of multi-register values, for a value whose big-endian bytes are A B C D
(E F G H for 64-bit values):

- ABCD: big-endian, registers [AB, CD]            (64-bit: [AB, CD, EF, GH])
- CDAB: word-swapped, registers [CD, AB]          (64-bit: words in reverse order [GH, EF, CD, AB])
- BADC: byte-swapped in each word, [BA, DC]       (64-bit: [BA, DC, FE, HG])
- DCBA: little-endian, [DC, BA]                   (64-bit: [HG, FE, DC, BA])

16-bit values (and `bit` registers) only see the byte swap (BADC/DCBA); strings keep their words in
order, and BADC/DCBA swap the two characters of each register. Strings end at the first NUL;
trailing spaces are removed; bytes that are not UTF-8 are replaced and the sample is UNCERTAIN.
"""

from __future__ import annotations

import asyncio
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from linetap.config.devices.modbus import ModbusDeviceConfig, ModbusTag
from linetap.drivers.samples import Quality, SampleBatch, now_us, shortest_float32

from ..base import DeviceUnreachable, PollingDriver, describe_os_error
from .reply import RejectedReplies, ReplyGuard, ReplyRejected, check_response, expected_for

log = structlog.get_logger("linetap.drivers.modbus")

# --------------------------------------------------------------------------------------------
# Read planning (once, at start-up)
# --------------------------------------------------------------------------------------------

REGISTER_TABLES = ("holding", "input")
BIT_TABLES = ("coil", "discrete")
TABLE_ORDER = {"holding": 0, "input": 1, "coil": 2, "discrete": 3}
STRUCT_CODE = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
               "float32": "f", "float64": "d", "bit": "H"}
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


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One request of the read plan: `count` registers/bits from protocol address `address`."""

    table: str
    address: int  # protocol (zero-based) address
    count: int
    tags: tuple[ModbusTag, ...]  # in address order

    @property
    def end(self) -> int:
        return self.address + self.count

    def describe(self) -> str:
        return f"{self.table} {self.address}..{self.end - 1}"


def protocol_address(tag: ModbusTag, addressing: str) -> int:
    """The zero-based address on the wire."""
    return tag.address - 1 if addressing == "one_based" else tag.address


def plan_reads(config: ModbusDeviceConfig) -> list[ReadBlock]:
    """Group the tags by table, sort by address and coalesce neighbours into as few requests as
    possible: at most `max_registers_per_read` registers (`max_bits_per_read` bits) per request,
    spanning at most `max_gap` unused addresses between two tags. Tags may overlap (e.g. several
    `bit` tags on one register)."""
    by_table: dict[str, list[tuple[int, ModbusTag]]] = {}
    for tag in config.tags:
        by_table.setdefault(tag.table, []).append((protocol_address(tag, config.addressing), tag))
    blocks: list[ReadBlock] = []
    for table in sorted(by_table, key=TABLE_ORDER.__getitem__):
        limit = config.max_bits_per_read if table in BIT_TABLES else config.max_registers_per_read
        entries = sorted(by_table[table], key=lambda e: (e[0], e[1].width))
        start = end = -1
        members: list[ModbusTag] = []
        for addr, tag in entries:
            tag_end = addr + tag.width
            if members and addr - end <= config.max_gap and max(end, tag_end) - start <= limit:
                end = max(end, tag_end)
                members.append(tag)
                continue
            if members:
                blocks.append(ReadBlock(table, start, end - start, tuple(members)))
            start, end, members = addr, tag_end, [tag]
        if members:
            blocks.append(ReadBlock(table, start, end - start, tuple(members)))
    return blocks


def split_block(block: ReadBlock, addressing: str) -> list[ReadBlock]:
    """Smaller requests for a block the device rejected with "illegal data address": first the
    runs without unused addresses, else one request per tag (overlapping tags stay together).
    A single element means the block cannot be split."""

    def runs(max_gap: int) -> list[ReadBlock]:
        out: list[ReadBlock] = []
        members: list[ModbusTag] = []
        start = end = -1
        for tag in block.tags:
            addr = protocol_address(tag, addressing)
            if members and addr - end <= max_gap:
                end = max(end, addr + tag.width)
                members.append(tag)
                continue
            if members:
                out.append(ReadBlock(block.table, start, end - start, tuple(members)))
            start, end, members = addr, addr + tag.width, [tag]
        out.append(ReadBlock(block.table, start, end - start, tuple(members)))
        return out

    parts = runs(0)
    return parts if len(parts) > 1 else runs(-1)


def _byte_permutation(offset: int, words: int, order: str) -> list[int]:
    """Source byte index (in the block) of each big-endian byte of a field at byte `offset`."""
    word_reverse = order in ("CDAB", "DCBA") and words > 1
    byte_swap = order in ("BADC", "DCBA")
    out = []
    for j in range(2 * words):
        w, b = divmod(j, 2)
        src_w = words - 1 - w if word_reverse else w
        src_b = 1 - b if byte_swap else b
        out.append(offset + 2 * src_w + src_b)
    return out


@dataclass(slots=True)
class _Lane:
    """Non-overlapping fields of a register block, decoded by one struct after one permutation."""

    perm: np.ndarray | None  # None: the block's bytes are already big-endian for every field
    unpacker: struct.Struct
    end: int  # register offset where the last field ends (for placing the next one)
    fmt: list[str]
    perm_list: list[int]
    n_fields: int = 0


@dataclass(slots=True)
class _DecodePlan:
    """How one block turns into values: everything per-tag is precomputed here."""

    block: ReadBlock
    first: int  # index of the block's first tag in the batch
    names: list[str]
    raw_count: int  # registers or bits the response must hold
    lanes: list[_Lane] = field(default_factory=list)
    pick: Callable[[Any], Any] | None = None  # raw fields -> per-tag values (tuple), None: identity
    single: bool = False  # pick returns a scalar (one tag)
    fixups: list[tuple[int, Callable[[Any], Any]]] = field(default_factory=list)
    strings: list[int] = field(default_factory=list)  # tag positions holding raw bytes to decode
    float32: list[int] = field(default_factory=list)  # tag positions of float32 values (shortest decimal)
    all_float32: bool = False  # every tag of the block is a float32 (one conversion for the block)
    regs_struct: struct.Struct | None = None


def _identity_fixups(tag: ModbusTag) -> Callable[[Any], Any] | None:
    """Per-value conversion after the struct decode (bits, scale/offset), or None."""
    scaled = tag.scale != 1.0 or tag.offset != 0.0
    scale, offset = tag.scale, tag.offset
    if tag.type == "bit":
        mask = 1 << (tag.bit or 0)
        if scaled:
            return lambda v: (1.0 if v & mask else 0.0) * scale + offset
        return lambda v: bool(v & mask)
    if tag.type == "string" or not scaled:
        return None
    return lambda v: v * scale + offset


def _build_decode_plan(block: ReadBlock, first: int, addressing: str) -> _DecodePlan:
    plan = _DecodePlan(block=block, first=first, names=[t.name for t in block.tags], raw_count=block.count)
    if block.table in BIT_TABLES:
        offsets = [protocol_address(t, addressing) - block.address for t in block.tags]
        plan.pick = operator.itemgetter(*offsets)
        plan.single = len(offsets) == 1
        for i, tag in enumerate(block.tags):
            if tag.scale != 1.0 or tag.offset != 0.0:
                s, o = tag.scale, tag.offset
                plan.fixups.append((i, lambda v, s=s, o=o: (1.0 if v else 0.0) * s + o))
        return plan

    # Register block: place each field in the first lane where it does not overlap; bit tags on
    # the same register (and byte order) share one field.
    lanes: list[_Lane] = []
    field_index: dict[tuple, tuple[int, int]] = {}  # field key -> (lane, position in lane)
    tag_field: list[tuple[int, int]] = []
    for tag in block.tags:
        off = protocol_address(tag, addressing) - block.address
        key = (off, tag.width, "bit" if tag.type == "bit" else tag.type, tag.order)
        if key in field_index:
            tag_field.append(field_index[key])
            continue
        li = next((i for i, lane in enumerate(lanes) if lane.end <= off), None)
        if li is None:
            lanes.append(_Lane(None, struct.Struct(">"), 0, [], []))
            li = len(lanes) - 1
        lane = lanes[li]
        gap = off - lane.end
        if gap:
            lane.fmt.append(f"{2 * gap}x")
        if tag.type == "string":
            lane.fmt.append(f"{2 * tag.width}s")
            order = "BADC" if tag.order in ("BADC", "DCBA") else "ABCD"  # strings: only bytes in a word
            # A string's words are in order: swap bytes within each word.
            perm = []
            for w in range(tag.width):
                perm += _byte_permutation(2 * (off + w), 1, order)
        else:
            lane.fmt.append(STRUCT_CODE[tag.type])
            perm = _byte_permutation(2 * off, tag.width, tag.order)
        lane.perm_list.extend(range(2 * lane.end, 2 * off))  # gap bytes stay where they are
        lane.perm_list.extend(perm)
        lane.end = off + tag.width
        field_index[key] = (li, lane.n_fields)
        tag_field.append((li, lane.n_fields))
        lane.n_fields += 1

    lane_base = []
    base = 0
    for lane in lanes:
        lane_base.append(base)
        base += lane.n_fields
        lane.unpacker = struct.Struct(">" + "".join(lane.fmt))
        if lane.perm_list != list(range(len(lane.perm_list))):
            lane.perm = np.asarray(lane.perm_list, dtype=np.intp)
    plan.lanes = lanes
    plan.regs_struct = struct.Struct(f">{block.count}H")

    indices = [lane_base[li] + pos for li, pos in tag_field]
    if indices != list(range(base)) or base != len(block.tags):
        plan.pick = operator.itemgetter(*indices)
        plan.single = len(indices) == 1
    for i, tag in enumerate(block.tags):
        if tag.type == "string":
            plan.strings.append(i)
        elif (fix := _identity_fixups(tag)) is not None:
            plan.fixups.append((i, fix))
        if tag.type == "float32":  # scaled ones too: scale the PLC's 1.743, not 1.7430000305175781
            plan.float32.append(i)
    plan.all_float32 = len(plan.float32) == len(block.tags)
    return plan


def _decode_string(raw: bytes) -> tuple[str, str | None]:
    """PLC strings: NUL-padded (or space-padded); the value ends at the first NUL."""
    raw = raw.split(b"\x00", 1)[0]
    try:
        return raw.decode("utf-8").rstrip(" "), None
    except UnicodeDecodeError as err:
        text = raw.decode("utf-8", errors="replace").rstrip(" ")
        return text, f"undecodable bytes in string (UTF-8, at byte {err.start}); replaced with U+FFFD"


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


class _BlockFailure(Exception):
    """A failed request: every tag of the block gets BAD quality with `reason`."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class ModbusDriver(PollingDriver):
    """Polls one Modbus TCP device: every tag, in as few requests as the plan allows.

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
        self._plans: list[_DecodePlan] = []
        names: list[str] = []
        for block in self.blocks:
            self._plans.append(_build_decode_plan(block, len(names), config.addressing))
            names.extend(t.name for t in block.tags)
        self._names = names
        self._good = [Quality.GOOD] * len(names)
        # samples written as float32s (`SampleBatch.float32`): the device's own float32 values;
        # a scaled one is arithmetic done here, a float64
        float32 = [t.type == "float32" and t.scale == 1.0 and t.offset == 0.0 for b in self.blocks for t in b.tags]
        self._float32 = float32 if any(float32) else None
        self._client: AsyncModbusTcpClient | None = None
        self._connect_error: BaseException | None = None
        self._lost_cause: str | None = None  # what ended the connection, as pymodbus saw it
        self._failures: dict[tuple[str, int, int], str] = {}  # block -> failure kind being reported
        self._silent_polls = 0
        self._where = f"{config.host}:{config.port}"
        self._guard: ReplyGuard | None = None
        self.rejects = RejectedReplies(config.name, self._where, self.counters)

    @property
    def tag_names(self) -> list[str]:
        return list(self._names)

    # --- connection ----------------------------------------------------------------------

    async def connect(self) -> None:
        await self.close()
        cfg = self.config
        # pymodbus' own timeout is a backstop; ours (asyncio.wait_for) fires first and is exact.
        client = AsyncModbusTcpClient(
            cfg.host, port=cfg.port, timeout=cfg.timeout + 1.0, retries=0, reconnect_delay=0,
            name=f"linetap-{cfg.name}",
        )
        self._capture_errors(client)
        self._guard = ReplyGuard.install(client)
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
        log.info("modbus connected", device=cfg.name, endpoint=self._where, requests_per_poll=len(self.blocks))

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
        client, self._client = self._client, None
        if client is not None:
            _safe_close(client)

    def _lost(self, cause: str) -> DeviceUnreachable:
        client, self._client = self._client, None
        if client is not None:
            _safe_close(client)
        return DeviceUnreachable(f"connection to {self._where} (device {self.name}) lost: {cause}")

    # --- polling -------------------------------------------------------------------------

    async def read(self) -> SampleBatch:
        client = self._client
        if client is None or not client.connected:
            raise self._lost(self._lost_cause or "not connected")
        agent_ts = now_us()
        n = len(self._names)
        values: list[Any] = [None] * n
        quality = self._good.copy()
        reason: list[str | None] = [None] * n
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
                quality[first:last] = [Quality.BAD] * (last - first)
                reason[first:last] = [skip_reason] * (last - first)
                continue
            try:
                raw = await self._request(client, block)
                decoded = self._decode(plan, raw)
            except _BlockFailure as failure:
                if failure.kind == "exception 2" and len(block.tags) > 1 and self._split(bi):
                    bi -= 1  # read the smaller blocks now, in this poll
                    answered += 1
                    continue
                if failure.kind == "rejected":
                    answered += 1  # the device answered, but not this request
                    timeouts_in_row = 0
                    if self.rejects.rejected(block.describe(), failure.reason):
                        raise self._lost(self.rejects.reset_reason(failure.reason)) from None
                    quality[first:last] = [Quality.BAD] * (last - first)
                    reason[first:last] = [failure.reason] * (last - first)
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
                quality[first:last] = [Quality.BAD] * (last - first)
                reason[first:last] = [failure.reason] * (last - first)
                continue
            answered += 1
            timeouts_in_row = 0
            self.rejects.answered()
            if self._failures and (key := (block.table, block.address, block.count)) in self._failures:
                log.info("modbus block recovered", device=self.name, block=block.describe(),
                         after=self._failures.pop(key))
            block_values, uncertain = decoded
            values[first:last] = block_values
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
        return SampleBatch(device=self.name, tag=list(self._names), value=values, quality=quality,
                           reason=reason, agent_ts=agent_ts, float32=self._float32)

    def _split(self, bi: int) -> bool:
        """Replace plan `bi` by smaller requests (for the rest of this connection's life and after)."""
        block = self._plans[bi].block
        parts = split_block(block, self.config.addressing)
        if len(parts) == 1:
            return False
        first = self._plans[bi].first
        plans = []
        for part in parts:
            plans.append(_build_decode_plan(part, first, self.config.addressing))
            first += len(part.tags)
        self._plans[bi:bi + 1] = plans
        self.blocks = [p.block for p in self._plans]
        log.warning("modbus device rejects a coalesced read; reading its parts separately "
                    "(set max_gap: 0 if the device has holes in its map)", device=self.name,
                    block=block.describe(), parts=[p.describe() for p in parts])
        return True

    async def _request(self, client: AsyncModbusTcpClient, block: ReadBlock):
        cfg = self.config
        kwargs = {"count": block.count, "device_id": cfg.unit_id}
        table = block.table
        expected = expected_for(table, block.count, cfg.unit_id)
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
            async with asyncio.timeout(cfg.timeout):
                response = await call
        except TimeoutError:
            if guard is None:
                raise _BlockFailure("timeout", f"timed out after {cfg.timeout:g}s") from None
            guard.timed_out()
            if guard.partial is not None:
                got, size = guard.partial
                of = f" of {size}" if size else ""
                raise _BlockFailure("rejected", f"incomplete reply: {got}{of} bytes within {cfg.timeout:g}s") from None
            late = " (only a late reply to an earlier request came)" if guard.late_reply is not None else ""
            raise _BlockFailure("timeout", f"timed out after {cfg.timeout:g}s{late}") from None
        except ReplyRejected as err:
            raise _BlockFailure("rejected", str(err)) from None
        except _Disconnected as err:
            raise self._lost(f"{err} while waiting for {block.describe()}") from None
        except ConnectionException as err:
            raise self._lost(self._lost_cause or f"{err}") from None
        except ModbusIOException as err:
            if not client.connected:
                raise self._lost(self._lost_cause or str(err)) from None
            raise _BlockFailure("malformed", f"bad response: {err}") from None
        except (ModbusException, ValueError, struct.error) as err:
            raise _BlockFailure("malformed", f"bad response: {err}") from None
        except OSError as err:
            raise self._lost(_describe_os_error(err, cfg.timeout)) from None
        if response is None:
            raise _BlockFailure("malformed", "no response object")
        if (why := check_response(response, expected)) is not None:
            raise _BlockFailure("rejected", why)
        if response.isError():
            code = getattr(response, "exception_code", 0)
            name = EXCEPTION_NAMES.get(code, "unknown exception code")
            raise _BlockFailure(f"exception {code}", f"modbus exception {code} ({name})")
        return response

    def _decode(self, plan: _DecodePlan, response) -> tuple[list[Any], list[tuple[int, str]]]:
        block = plan.block
        uncertain: list[tuple[int, str]] = []
        if block.table in BIT_TABLES:
            bits = response.bits
            if len(bits) < block.count:
                raise _BlockFailure("rejected", f"reply with {len(bits) // 8} bytes for {block.count} bits")
            picked = plan.pick(bits)
            out = [picked] if plan.single else list(picked)
            out = [bool(v) for v in out] if not isinstance(out[0], bool) else out
        else:
            regs = response.registers
            if len(regs) != block.count:
                raise _BlockFailure("rejected", f"reply with {2 * len(regs)} bytes for {block.count} registers")
            try:
                data = plan.regs_struct.pack(*regs)
            except struct.error as err:
                raise _BlockFailure("malformed", f"bad register values: {err}") from None
            lanes = plan.lanes
            if len(lanes) == 1:
                lane = lanes[0]
                buf = data if lane.perm is None else np.frombuffer(data, np.uint8)[lane.perm].tobytes()
                fields = lane.unpacker.unpack_from(buf)
            else:
                fields = ()
                arr = np.frombuffer(data, np.uint8)
                for lane in lanes:
                    buf = data if lane.perm is None else arr[lane.perm].tobytes()
                    fields += lane.unpacker.unpack_from(buf)
            if plan.pick is None:
                out = list(fields)
            else:
                picked = plan.pick(fields)
                out = [picked] if plan.single else list(picked)
            if plan.all_float32:
                out = shortest_float32(out)
            elif plan.float32:
                for i, v in zip(plan.float32, shortest_float32([out[i] for i in plan.float32]), strict=True):
                    out[i] = v
            for i in plan.strings:
                out[i], why = _decode_string(out[i])
                if why is not None:
                    uncertain.append((i, why))
        for i, fix in plan.fixups:
            out[i] = fix(out[i])
        return out, uncertain

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
