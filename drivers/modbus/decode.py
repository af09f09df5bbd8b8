"""Decoding one block's reply into values. Each register block is decoded as
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

import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from linetap.config.devices.modbus import ModbusTag
from linetap.drivers.samples import shortest_float32

from .plan import BIT_TABLES, ReadBlock, protocol_address

STRUCT_CODE = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
               "float32": "f", "float64": "d", "bit": "H"}


class BlockFailure(Exception):
    """A failed request: every tag of the block gets BAD quality with `reason`."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason



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
class DecodePlan:
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


def build_decode_plan(block: ReadBlock, first: int, addressing: str) -> DecodePlan:
    plan = DecodePlan(block=block, first=first, names=[t.name for t in block.tags], raw_count=block.count)
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


def decode_block(plan: DecodePlan, response) -> tuple[list[Any], list[tuple[int, str]]]:
    block = plan.block
    uncertain: list[tuple[int, str]] = []
    if block.table in BIT_TABLES:
        bits = response.bits
        if len(bits) < block.count:
            raise BlockFailure("rejected", f"reply with {len(bits) // 8} bytes for {block.count} bits")
        picked = plan.pick(bits)
        out = [picked] if plan.single else list(picked)
        out = [bool(v) for v in out] if not isinstance(out[0], bool) else out
    else:
        regs = response.registers
        if len(regs) != block.count:
            raise BlockFailure("rejected", f"reply with {2 * len(regs)} bytes for {block.count} registers")
        try:
            data = plan.regs_struct.pack(*regs)
        except struct.error as err:
            raise BlockFailure("malformed", f"bad register values: {err}") from None
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
