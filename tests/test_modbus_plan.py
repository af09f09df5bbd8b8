"""Read planning and block decoding of the Modbus driver: pure unit tests (no sockets)."""

from __future__ import annotations

import struct

import pytest
from pydantic import ValidationError

from linetap.config.devices.modbus import ModbusDeviceConfig, ModbusTag
from linetap.drivers.modbus import ModbusDriver, plan_reads
from linetap.drivers.modbus.decode import decode_block
from linetap.simulators import KNOWN_VALUES, encode_registers


def cfg(tags, **kw) -> ModbusDeviceConfig:
    kw.setdefault("addressing", "zero_based")
    return ModbusDeviceConfig(protocol="modbus", name="dev", host="127.0.0.1", tags=tags, **kw)


def overlapping_cfg(tags, **kw) -> ModbusDeviceConfig:
    """A device whose tags overlap as different types: a config error since issue 12 (the config
    refuses it), built unchecked here to show that the read plan and the decoder still cope."""
    kw.setdefault("addressing", "zero_based")
    return ModbusDeviceConfig.model_construct(protocol="modbus", name="dev", host="127.0.0.1",
                                              tags=[ModbusTag(**t) for t in tags], **kw)


def test_overlapping_types_are_a_config_error() -> None:
    with pytest.raises(ValidationError, match="overlaps tag 'word'"):
        cfg([u16("word", 8), {"name": "dword", "address": 7, "type": "uint32"}])
    cfg([u16("word", 8), u16("word_again", 8, scale=0.1), {"name": "b0", "address": 8, "type": "bit", "bit": 0}])


def spans(config: ModbusDeviceConfig) -> list[tuple[str, int, int]]:
    return [(b.table, b.address, b.count) for b in plan_reads(config)]


def u16(name: str, address: int, **kw) -> dict:
    return {"name": name, "address": address, "type": "uint16", **kw}


def test_neighbours_coalesce_and_gaps_split() -> None:
    tags = [u16("a", 0), {"name": "b", "address": 1, "type": "float32"}, u16("c", 3 + 8),  # gap 8: merged
            u16("d", 12 + 9)]  # gap 9: new block
    assert spans(cfg(tags)) == [("holding", 0, 12), ("holding", 21, 1)]
    assert spans(cfg(tags, max_gap=0)) == [("holding", 0, 3), ("holding", 11, 1), ("holding", 21, 1)]


def test_sorted_by_address_whatever_the_config_order() -> None:
    tags = [u16("z", 10), u16("y", 0), u16("x", 5)]
    blocks = plan_reads(cfg(tags))
    assert [(b.address, b.count) for b in blocks] == [(0, 11)]
    assert [t.name for t in blocks[0].tags] == ["y", "x", "z"]


def test_tables_are_planned_separately_in_a_fixed_order() -> None:
    tags = [{"name": "d", "table": "discrete", "address": 0, "type": "bool"},
            {"name": "c", "table": "coil", "address": 0, "type": "bool"},
            u16("i", 0, table="input"), u16("h", 0)]
    assert spans(cfg(tags)) == [("holding", 0, 1), ("input", 0, 1), ("coil", 0, 1), ("discrete", 0, 1)]


def test_register_limit_125_and_custom_limit() -> None:
    tags = [u16(f"t{i}", i) for i in range(300)]
    assert spans(cfg(tags)) == [("holding", 0, 125), ("holding", 125, 125), ("holding", 250, 50)]
    assert spans(cfg(tags, max_registers_per_read=100)) == [("holding", 0, 100), ("holding", 100, 100),
                                                            ("holding", 200, 100)]


def test_a_value_never_straddles_two_requests() -> None:
    tags = [{"name": f"f{i}", "address": 4 * i, "type": "float64"} for i in range(40)]  # 160 registers
    blocks = plan_reads(cfg(tags))
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 36)]


def test_bit_limit_2000_and_gaps_in_bits() -> None:
    coils = [{"name": f"c{i}", "table": "coil", "address": i, "type": "bool"} for i in range(2500)]
    assert spans(cfg(coils)) == [("coil", 0, 2000), ("coil", 2000, 500)]
    assert spans(cfg(coils, max_bits_per_read=1000)) == [("coil", 0, 1000), ("coil", 1000, 1000),
                                                         ("coil", 2000, 500)]
    sparse = [{"name": f"d{i}", "table": "discrete", "address": a, "type": "bool"} for i, a in
              enumerate((0, 9, 30))]
    assert spans(cfg(sparse)) == [("discrete", 0, 10), ("discrete", 30, 1)]


def test_one_based_addresses_are_shifted_to_the_protocol() -> None:
    tags = [u16("first", 1), {"name": "flag", "table": "coil", "address": 1, "type": "bool"}]
    assert spans(cfg(tags, addressing="one_based")) == [("holding", 0, 1), ("coil", 0, 1)]
    with pytest.raises(ValidationError, match="below 1"):
        cfg([u16("zero", 0)], addressing="one_based")


def test_overlapping_tags_share_a_block() -> None:
    tags = [{"name": f"b{i}", "address": 8, "type": "bit", "bit": i} for i in range(16)]
    tags += [u16("word", 8), {"name": "dword", "address": 7, "type": "uint32"}]
    assert spans(overlapping_cfg(tags)) == [("holding", 7, 2)]


def test_a_tag_wider_than_the_request_limit_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="max_registers_per_read"):
        cfg([{"name": "s", "address": 0, "type": "string", "length": 100}], max_registers_per_read=50)


def test_encoder_matches_hand_written_registers() -> None:
    """The simulator's encoder, anchored on values worked out by hand (0x3F800000 is 1.0f)."""
    assert encode_registers(1.0, "float32", "ABCD") == [0x3F80, 0x0000]
    assert encode_registers(1.0, "float32", "CDAB") == [0x0000, 0x3F80]
    assert encode_registers(1.0, "float32", "BADC") == [0x803F, 0x0000]
    assert encode_registers(1.0, "float32", "DCBA") == [0x0000, 0x803F]
    v = 0x0102030405060708
    assert encode_registers(v, "uint64", "ABCD") == [0x0102, 0x0304, 0x0506, 0x0708]
    assert encode_registers(v, "uint64", "CDAB") == [0x0708, 0x0506, 0x0304, 0x0102]
    assert encode_registers(v, "uint64", "BADC") == [0x0201, 0x0403, 0x0605, 0x0807]
    assert encode_registers(v, "uint64", "DCBA") == [0x0807, 0x0605, 0x0403, 0x0201]
    assert encode_registers(0x1234, "uint16", "CDAB") == [0x1234]
    assert encode_registers(0x1234, "uint16", "DCBA") == [0x3412]
    assert encode_registers("ABC", "string", "ABCD", 2) == [0x4142, 0x4300]
    assert encode_registers("ABC", "string", "BADC", 2) == [0x4241, 0x0043]


class _Response:
    def __init__(self, registers=(), bits=()):
        self.registers = list(registers)
        self.bits = list(bits)


def decode(config: ModbusDeviceConfig, registers: list[int]):
    driver = ModbusDriver(config)
    assert len(driver._plans) == 1
    plan = driver._plans[0]
    return dict(zip(plan.names, decode_block(plan, _Response(registers))[0], strict=True))


def test_every_known_value_decodes_from_its_registers_offline() -> None:
    """The whole holding known-value block as one request, decoded by one plan."""
    holding = [(f, v) for f, v in KNOWN_VALUES if f["table"] == "holding"]
    config = cfg([f for f, _ in holding], max_gap=8)
    blocks = plan_reads(config)
    assert len(blocks) == 1
    regs = [0] * blocks[0].count
    base = blocks[0].address
    from linetap.simulators.modbus_register_map import KNOWN_REGISTERS
    for addr, word in KNOWN_REGISTERS["holding"].items():
        if base <= addr < base + len(regs):
            regs[addr - base] = word
    got = decode(config, regs)
    for fields, expected in holding:
        assert got[fields["name"]] == expected, fields
        assert type(got[fields["name"]]) is type(expected), fields


def test_gaps_and_mixed_orders_in_one_block() -> None:
    tags = [{"name": "a", "address": 0, "type": "int32", "order": "DCBA"},
            {"name": "b", "address": 5, "type": "float32", "order": "CDAB"},
            {"name": "c", "address": 7, "type": "uint16", "order": "BADC"}]
    regs = [0xFFFF] * 8
    regs[0:2] = encode_registers(-2, "int32", "DCBA")
    regs[5:7] = encode_registers(2.5, "float32", "CDAB")
    regs[7:8] = encode_registers(0x1234, "uint16", "BADC")
    assert decode(cfg(tags), regs) == {"a": -2, "b": 2.5, "c": 0x1234}


def test_overlapping_fields_decode_independently() -> None:
    tags = [{"name": "dword", "address": 0, "type": "uint32"}, u16("hi", 0), u16("lo", 1),
            {"name": "lo_swapped", "address": 1, "type": "uint16", "order": "BADC"},
            {"name": "bit0", "address": 1, "type": "bit", "bit": 0},
            {"name": "bit15", "address": 0, "type": "bit", "bit": 15}]
    got = decode(overlapping_cfg(tags), [0x8001, 0x0203])
    assert got == {"dword": 0x80010203, "hi": 0x8001, "lo": 0x0203, "lo_swapped": 0x0302,
                   "bit0": True, "bit15": True}


def test_scale_and_offset() -> None:
    tags = [{"name": "t", "address": 0, "type": "int16", "scale": 0.1},
            {"name": "p", "address": 1, "type": "uint16", "offset": -100},
            {"name": "raw", "address": 2, "type": "uint16"},
            {"name": "f", "address": 3, "type": "float32", "scale": 2.0, "offset": 1.0},
            {"name": "flag", "address": 5, "type": "bit", "bit": 1, "scale": 10.0}]
    regs = [struct.unpack(">H", struct.pack(">h", -1234))[0], 150, 7, *encode_registers(1.5, "float32"), 0b10]
    got = decode(cfg(tags), regs)
    assert got["t"] == pytest.approx(-123.4) and isinstance(got["t"], float)
    assert got["p"] == 50.0 and isinstance(got["p"], float)
    assert got["raw"] == 7 and isinstance(got["raw"], int)
    assert got["f"] == 4.0
    assert got["flag"] == 10.0


def test_nan_is_a_value() -> None:
    got = decode(cfg([{"name": "f", "address": 0, "type": "float32"}]), [0x7FC0, 0x0000])
    assert got["f"] != got["f"]


def test_strings_strip_padding() -> None:
    tags = [{"name": "s", "address": 0, "type": "string", "length": 4}]
    assert decode(cfg(tags), encode_registers("SN-1  ", "string", "ABCD", 4)) == {"s": "SN-1"}
    assert decode(cfg(tags), encode_registers("AB\x00CD", "string", "ABCD", 4)) == {"s": "AB"}

