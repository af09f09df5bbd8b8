"""Decoding one block's reply into typed value columns (`ValueColumns`), without a Python object per
value: the registers become one big-endian byte array; for each value type of the block one
precomputed index array gathers every tag's bytes in big-endian order, and one numpy view reads them
as that type (e.g. `>f4`), straight into the block's float64 `num` column. Measured with
`python -m benchmarks.modbus_decode`.

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

import struct
from dataclasses import dataclass, field

import numpy as np

from linetap.config.devices.modbus import ModbusTag
from linetap.drivers.samples import ValueColumns, VType, shortest_float32

from .plan import BIT_TABLES, ReadBlock, protocol_address

# big-endian numpy type of each register type (`bit`: the register, then the bit is masked out)
NUMPY_TYPE = {"int16": ">i2", "uint16": ">u2", "int32": ">i4", "uint32": ">u4", "int64": ">i8", "uint64": ">u8",
              "float32": ">f4", "float64": ">f8", "bit": ">u2"}
_MAX_EXACT_INT = 2**53  # integers beyond travel as text (a double holds them inexactly)


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
class _Group:
    """The tags of one register block that share a value type and a conversion: one gather, one view."""

    dtype: np.dtype
    index: np.ndarray  # byte indices into the block: each tag's bytes in big-endian order, tag after tag
    pos: np.ndarray  # the tags' positions in the block
    bit: np.ndarray | None = None  # `bit` tags: the bit of the register
    scale: np.ndarray | None = None  # scaled tags: value * scale + offset (float64)
    offset: np.ndarray | None = None
    shortest32: bool = False  # scaled float32s: scale the PLC's 1.743, not 1.7430000305175781
    wide_int: bool = False  # 64-bit integers: those beyond 2**53 become text


@dataclass(slots=True)
class DecodePlan:
    """How one block turns into values: everything per tag is precomputed here."""

    block: ReadBlock
    first: int  # index of the block's first tag in the batch
    names: list[str]
    vtype: np.ndarray  # VType per tag (a 64-bit integer beyond 2**53 turns TEXT at decode time)
    groups: list[_Group] = field(default_factory=list)
    strings: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (position, byte indices)
    bit_offsets: np.ndarray | None = None  # coil/discrete blocks: each tag's bit in the reply
    bit_scale: list[tuple[int, float, float]] = field(default_factory=list)  # scaled coil tags
    registers: struct.Struct | None = None  # the reply's registers -> big-endian bytes


def _vtype(tag: ModbusTag) -> VType:
    if tag.type == "string":
        return VType.TEXT
    if tag.scale != 1.0 or tag.offset != 0.0:
        return VType.FLOAT64  # arithmetic done here: a float64
    if tag.type == "float32":
        return VType.FLOAT32
    if tag.type == "float64":
        return VType.FLOAT64
    return VType.BOOL if tag.type == "bit" or tag.table in BIT_TABLES else VType.INT


def build_decode_plan(block: ReadBlock, first: int, addressing: str) -> DecodePlan:
    tags = block.tags
    plan = DecodePlan(block=block, first=first, names=[t.name for t in tags],
                      vtype=np.array([_vtype(t) for t in tags], dtype=np.uint8))
    offsets = [protocol_address(t, addressing) - block.address for t in tags]
    if block.table in BIT_TABLES:
        plan.bit_offsets = np.asarray(offsets, dtype=np.intp)
        plan.bit_scale = [(i, t.scale, t.offset) for i, t in enumerate(tags) if t.scale != 1.0 or t.offset != 0.0]
        return plan
    plan.registers = struct.Struct(f">{block.count}H")
    by_kind: dict[tuple[str, bool, bool], list[int]] = {}
    for i, (tag, off) in enumerate(zip(tags, offsets, strict=True)):
        if tag.type == "string":
            order = "BADC" if tag.order in ("BADC", "DCBA") else "ABCD"  # strings: only bytes in a word
            perm = [j for w in range(tag.width) for j in _byte_permutation(2 * (off + w), 1, order)]
            plan.strings.append((i, np.asarray(perm, dtype=np.intp)))
            continue
        scaled = tag.scale != 1.0 or tag.offset != 0.0
        by_kind.setdefault((tag.type, scaled, tag.type == "bit"), []).append(i)
    for (typ, scaled, is_bit), members in by_kind.items():
        index = [j for i in members for j in _byte_permutation(2 * offsets[i], tags[i].width, tags[i].order)]
        group = _Group(np.dtype(NUMPY_TYPE[typ]), np.asarray(index, dtype=np.intp), np.asarray(members, np.intp))
        if is_bit:
            group.bit = np.asarray([tags[i].bit or 0 for i in members], dtype=np.uint16)
        if scaled:
            group.scale = np.asarray([tags[i].scale for i in members], dtype=np.float64)
            group.offset = np.asarray([tags[i].offset for i in members], dtype=np.float64)
            group.shortest32 = typ == "float32"
        group.wide_int = typ in ("int64", "uint64") and not scaled
        plan.groups.append(group)
    return plan


def _decode_string(raw: bytes) -> tuple[str, str | None]:
    """PLC strings: NUL-padded (or space-padded); the value ends at the first NUL."""
    raw = raw.split(b"\x00", 1)[0]
    try:
        return raw.decode("utf-8").rstrip(" "), None
    except UnicodeDecodeError as err:
        text = raw.decode("utf-8", errors="replace").rstrip(" ")
        return text, f"undecodable bytes in string (UTF-8, at byte {err.start}); replaced with U+FFFD"


def decode_block(plan: DecodePlan, response) -> tuple[ValueColumns, list[tuple[int, str]]]:
    """The block's values (positions within the block) and the UNCERTAIN ones with the reason."""
    block = plan.block
    uncertain: list[tuple[int, str]] = []
    n = len(block.tags)
    if block.table in BIT_TABLES:
        bits = response.bits
        if len(bits) < block.count:
            raise BlockFailure("rejected", f"reply with {len(bits) // 8} bytes for {block.count} bits")
        num = np.asarray(bits[:block.count], dtype=np.float64)[plan.bit_offsets]
        for i, scale, offset in plan.bit_scale:
            num[i] = num[i] * scale + offset
        return ValueColumns(num, plan.vtype), uncertain
    if (data := getattr(response, "register_bytes", None)) is not None:  # words.py: as sent
        if len(data) != 2 * block.count:
            raise BlockFailure("rejected", f"reply with {len(data)} bytes for {block.count} registers")
        raw = np.frombuffer(data, np.uint8)
    else:
        regs = response.registers
        if len(regs) != block.count:
            raise BlockFailure("rejected", f"reply with {2 * len(regs)} bytes for {block.count} registers")
        try:  # struct checks every register fits 16 bits; measured the cheapest way into numpy (~1 us / 124)
            raw = np.frombuffer(plan.registers.pack(*regs), np.uint8)
        except struct.error as err:
            raise BlockFailure("malformed", f"bad register values: {err}") from None
    num = np.empty(n, dtype=np.float64)
    vtype = plan.vtype
    text: dict[int, str | int] | None = None
    for g in plan.groups:
        values = raw[g.index].view(g.dtype)
        if g.bit is not None:
            values = (values >> g.bit) & 1
        if g.wide_int and (wide := (values > _MAX_EXACT_INT) | (values < -_MAX_EXACT_INT)).any():
            vtype = vtype.copy() if vtype is plan.vtype else vtype
            text = text if text is not None else {}
            for i, v in zip(g.pos[wide].tolist(), values[wide].tolist(), strict=True):
                text[i] = v  # stored as its decimal text
                vtype[i] = VType.TEXT
            values = np.where(wide, 0, values)
        if g.scale is not None:
            if g.shortest32:
                values = np.asarray(shortest_float32(values), dtype=np.float64)
            values = values * g.scale + g.offset
        num[g.pos] = values
    for i, index in plan.strings:
        text = text if text is not None else {}
        text[i], why = _decode_string(raw[index].tobytes())
        if why is not None:
            uncertain.append((i, why))
    if text:
        num[list(text)] = np.nan
    return ValueColumns(num, vtype, None, text), uncertain
