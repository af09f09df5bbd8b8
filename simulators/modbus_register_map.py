"""The Modbus simulator's register map: where the station's values live, how they are encoded, and
the known-value block.

Register map (protocol addresses, zero-based; add 1 for one-based documentation addresses).
Multi-register values are big-endian (ABCD) unless noted; strings are UTF-8, 2 characters per
register, first character in the high byte, NUL-padded.

Holding registers (function 3), the station:

    addr   regs  type     tag               meaning
    0      2     float32  temperature       seal temperature, degC
    2      2     float32  pressure          seal pressure, bar (0 while idle)
    4      2     float32  dwell             hold time of the last completed unit, s
    6      2     uint32   unit_count        completed units
    8      1     bit      status            bit 0 cycle_active, bit 1 ramping, bit 2 holding
    9      1     uint16   state             0 idle, 1 ramp, 2 hold
    10     10    string   serial            serial number of the current/last unit (20 chars)
    20     8     string   operator          operator badge id (16 chars)
    28     2     float32  setpoint          temperature setpoint, degC
    30     2     uint32   rejects           completed units made out of limits
    32     2     float32  temperature_low   limits (constants of the station model)
    34     2     float32  temperature_high
    36     2     float32  pressure_low
    38     2     float32  pressure_high
    40     2     float32  dwell_low
    42     2     float32  dwell_high
    44     8     string   film_lot          pouch-film lot of the current/next unit (16 chars)
    52..999             unused, read as 0 (reads may span them)
    1000..1099          known-value block (KNOWN_VALUES)
    1100..1999          not mapped: exception 2 (illegal data address)
    2000..3999          bulk block (BULK_ADDRESS): 1000 float32 values that change with time,
                        value i = i + sin(model time + i / 10), for load tests and the demo
    4000 and up         not mapped

Input registers (function 4), the same process values as a PLC's scaled integers:

    0      1     int16    temperature_x10   degC * 10
    1      1     uint16   pressure_x100     bar * 100
    2      1     uint16   dwell_ms          ms
    3      2     uint32   unit_count        CDAB (word-swapped)
    1000..1099          known-value block; 1100 and up not mapped

Coils (function 1): 0 cycle_active; 1000..1099 known bits.
Discrete inputs (function 2): 0 cycle_active, 1 ramping, 2 holding, 3 idle; 1000..1099 known bits.

The leak tester downstream (`leak_tester.py`) answers on unit id LEAK_TESTER_UNIT_ID (2) of the
same server; holding registers (function 3) 0..99, nothing else mapped:

    addr   regs  type     tag               meaning
    0      2     float32  pressure          live test pressure, mbar (0 while idle)
    2      2     float32  test_pressure     fill pressure of the last completed test, mbar
    4      2     float32  pressure_decay    pressure decay of the last completed test, mbar
    6      2     uint32   unit_count        completed tests
    8      1     bit      status            bit 0 cycle_active, bit 1 filling, bit 2 measuring
    9      1     uint16   state             0 idle, 1 fill, 2 measure
    10     10    string   serial            serial of the unit under test / last tested
    20     8     string   operator          operator badge id
    28     1     uint16   result            last test: 0 none yet, 1 pass, 2 fail
    29     1     -        (0)
    30     2     uint32   rejects           completed tests that failed
    32     2     float32  test_pressure_low limits (constants of the leak tester model)
    34     2     float32  test_pressure_high
    36     2     float32  decay_low
    38     2     float32  decay_high
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

HOLDING_SIZE = 1100
#: Bulk block: BULK_COUNT float32 (ABCD) values from holding register BULK_ADDRESS on.
BULK_ADDRESS = 2000
BULK_COUNT = 1000
INPUT_SIZE = 1100
BITS_SIZE = 1104  # a multiple of 16
KNOWN_BASE = 1000

# The station's tags as tag-config fields (zero-based addresses): for example configs and tests.
STATION_TAGS: list[dict[str, Any]] = [
    {"name": "temperature", "table": "holding", "address": 0, "type": "float32", "unit": "degC"},
    {"name": "pressure", "table": "holding", "address": 2, "type": "float32", "unit": "bar"},
    {"name": "dwell", "table": "holding", "address": 4, "type": "float32", "unit": "s"},
    {"name": "unit_count", "table": "holding", "address": 6, "type": "uint32"},
    {"name": "cycle_active", "table": "holding", "address": 8, "type": "bit", "bit": 0},
    {"name": "ramping", "table": "holding", "address": 8, "type": "bit", "bit": 1},
    {"name": "holding", "table": "holding", "address": 8, "type": "bit", "bit": 2},
    {"name": "state", "table": "holding", "address": 9, "type": "uint16"},
    {"name": "serial", "table": "holding", "address": 10, "type": "string", "length": 10},
    {"name": "operator", "table": "holding", "address": 20, "type": "string", "length": 8},
    {"name": "setpoint", "table": "holding", "address": 28, "type": "float32", "unit": "degC"},
    {"name": "rejects", "table": "holding", "address": 30, "type": "uint32"},
]

#: The sealer's pouch-film lot (a component of the unit), after the station tags above.
FILM_LOT_TAG: dict[str, Any] = {"name": "film_lot", "table": "holding", "address": 44, "type": "string",
                                "length": 8}

LEAK_TESTER_UNIT_ID = 2
LEAK_TESTER_SIZE = 100
LEAK_TESTER_TAGS: list[dict[str, Any]] = [
    {"name": "pressure", "table": "holding", "address": 0, "type": "float32", "unit": "mbar"},
    {"name": "test_pressure", "table": "holding", "address": 2, "type": "float32", "unit": "mbar"},
    {"name": "pressure_decay", "table": "holding", "address": 4, "type": "float32", "unit": "mbar"},
    {"name": "unit_count", "table": "holding", "address": 6, "type": "uint32"},
    {"name": "cycle_active", "table": "holding", "address": 8, "type": "bit", "bit": 0},
    {"name": "state", "table": "holding", "address": 9, "type": "uint16"},
    {"name": "serial", "table": "holding", "address": 10, "type": "string", "length": 10},
    {"name": "operator", "table": "holding", "address": 20, "type": "string", "length": 8},
    {"name": "result", "table": "holding", "address": 28, "type": "uint16"},
    {"name": "rejects", "table": "holding", "address": 30, "type": "uint32"},
]

# --------------------------------------------------------------------------------------------
# Encoding (written independently of the driver's decoder, so tests compare two implementations)
# --------------------------------------------------------------------------------------------

_CODES = {"int16": "h", "uint16": "H", "bit": "H", "int32": "i", "uint32": "I", "int64": "q",
          "uint64": "Q", "float32": "f", "float64": "d"}


def encode_registers(value: Any, type: str, order: str = "ABCD", length: int | None = None) -> list[int]:
    """The registers a device holding `value` as `type` in byte/word `order` puts on the wire."""
    if type == "string":
        assert length is not None
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if len(raw) > 2 * length:
            raise ValueError(f"{value!r} does not fit {length} registers")
        raw = raw.ljust(2 * length, b"\x00")
        words = [raw[i:i + 2] for i in range(0, len(raw), 2)]
        word_swap = False
    else:
        big = struct.pack(">" + _CODES[type], value)
        words = [big[i:i + 2] for i in range(0, len(big), 2)]
        word_swap = order in ("CDAB", "DCBA")
    if word_swap:
        words.reverse()
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def _as_float32(x: float) -> float:
    """What a float32 register holding `x` reads as: the shortest decimal that reads back as the
    same float32 (numpy's own repr of the float32, independent of linetap's decoder)."""
    return float(str(np.float32(struct.unpack(">f", struct.pack(">f", x))[0])))


# --------------------------------------------------------------------------------------------
# Known-value block
# --------------------------------------------------------------------------------------------

ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
_KNOWN_NUMBERS: list[tuple[str, int | float]] = [
    ("int16", -4660),  # 0xEDCC
    ("uint16", 0xABCD),
    ("int32", -305419896),  # 0xEDCBA988
    ("uint32", 0xA1B2C3D4),
    ("float32", -123.456),
    ("int64", -0x0123456789ABCDEF),
    ("uint64", 0xF1E2D3C4B5A69788),  # beyond 2**53
    ("float64", 12345.678901234567),
]
_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "int64": 4, "uint64": 4,
          "float64": 4}


def _build_known() -> tuple[list[tuple[dict[str, Any], Any]], dict[str, dict[int, int]],
                            tuple[dict[str, Any], str]]:
    known: list[tuple[dict[str, Any], Any]] = []
    regs: dict[str, dict[int, int]] = {"holding": {}, "input": {}, "coil": {}, "discrete": {}}

    def put(fields: dict[str, Any], wire_value: Any, expected: Any, table: str = "holding") -> None:
        fields = {"table": table, **fields}
        if table in ("coil", "discrete"):
            regs[table][fields["address"]] = int(wire_value)
        else:
            words = encode_registers(wire_value, fields["type"], fields.get("order", "ABCD"), fields.get("length"))
            for i, w in enumerate(words):
                regs[table][fields["address"] + i] = w
        known.append((fields, expected))

    addr = KNOWN_BASE
    for type_, value in _KNOWN_NUMBERS:
        expected = _as_float32(value) if type_ == "float32" else value
        for order in ORDERS:
            put({"name": f"kv_{type_}_{order}", "address": addr, "type": type_, "order": order}, value, expected)
            addr += _WIDTH[type_]
    # addr == 1080
    put({"name": "kv_string_ABCD", "address": 1080, "type": "string", "length": 5}, "Hello PLC", "Hello PLC")
    put({"name": "kv_string_BADC", "address": 1085, "type": "string", "length": 5, "order": "BADC"},
        "Hello PLC", "Hello PLC")
    put({"name": "kv_string_full", "address": 1090, "type": "string", "length": 4}, "ABCDEFGH", "ABCDEFGH")
    bad_fields = {"table": "holding", "name": "kv_string_bad", "address": 1094, "type": "string", "length": 2}
    for i, w in enumerate(encode_registers(b"OK\xff\xfe", "string", length=2)):
        regs["holding"][1094 + i] = w
    bad = (bad_fields, "OK\ufffd\ufffd")
    # Bits in registers: 0xA005 = bits 0, 2, 13, 15 set; the BADC register holds it byte-swapped.
    regs["holding"][1096] = 0xA005
    regs["holding"][1097] = 0x05A0
    for bit in (0, 1, 2, 13, 14, 15):
        expected = bool(0xA005 >> bit & 1)
        known.append(({"table": "holding", "name": f"kv_bit{bit}_ABCD", "address": 1096, "type": "bit",
                       "bit": bit}, expected))
        known.append(({"table": "holding", "name": f"kv_bit{bit}_BADC", "address": 1097, "type": "bit",
                       "bit": bit, "order": "BADC"}, expected))
    # 1098..1099 unused (zero)
    # Input registers.
    put({"name": "kv_in_uint16", "address": 1000, "type": "uint16"}, 0xABCD, 0xABCD, "input")
    put({"name": "kv_in_int32_CDAB", "address": 1001, "type": "int32", "order": "CDAB"},
        -305419896, -305419896, "input")
    put({"name": "kv_in_float32_DCBA", "address": 1003, "type": "float32", "order": "DCBA"},
        -123.456, _as_float32(-123.456), "input")
    put({"name": "kv_in_float64_BADC", "address": 1005, "type": "float64", "order": "BADC"},
        12345.678901234567, 12345.678901234567, "input")
    # Coils and discrete inputs.
    for i, bit in enumerate((True, False, True, True, False, False, True, False, False, True)):
        put({"name": f"kv_coil{i}", "address": KNOWN_BASE + i, "type": "bool"}, bit, bit, "coil")
        put({"name": f"kv_discrete{i}", "address": KNOWN_BASE + i, "type": "bool"}, not bit, not bit, "discrete")
    return known, regs, bad


#: Every known value: (tag config fields with zero-based `address`, expected decoded value).
#: Covers every numeric type x byte order, strings (ABCD, BADC, full length, padded), bits in
#: registers (ABCD and BADC), input registers, coils and discrete inputs.
KNOWN_VALUES: list[tuple[dict[str, Any], Any]]
#: A string with bytes that are not UTF-8: decoded with replacement, quality UNCERTAIN.
KNOWN_UNCERTAIN_STRING: tuple[dict[str, Any], str]
KNOWN_VALUES, KNOWN_REGISTERS, KNOWN_UNCERTAIN_STRING = _build_known()
