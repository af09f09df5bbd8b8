"""Read planning (once, at start-up): tags grouped by table, sorted by address and coalesced into
as few requests as the limits allow; and the smaller requests for a block a device rejects."""

from __future__ import annotations

from dataclasses import dataclass

from linetap.config.devices.modbus import ModbusDeviceConfig, ModbusTag

REGISTER_TABLES = ("holding", "input")
BIT_TABLES = ("coil", "discrete")
TABLE_ORDER = {"holding": 0, "input": 1, "coil": 2, "discrete": 3}


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
