"""Decode cost of one Modbus reply, the driver's hot path: the frame's PDU into a response object
(pymodbus' own class, and linetap's `drivers/modbus/words.py` that keeps the bytes), then the
response into typed columns (`decode_block`). 124 registers = 62 float32, word-swapped.

    python -m benchmarks.modbus_decode [CALLS]

MEASURED.md: struct on a whole block ~2 us; pymodbus convert_from_registers 46-107 us.
"""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Callable

from pymodbus.pdu import DecodePDU

from linetap.config.devices.modbus import ModbusDeviceConfig
from linetap.drivers.modbus import ModbusDriver
from linetap.drivers.modbus.decode import decode_block
from linetap.drivers.modbus.words import HoldingRegisterBytes

VALUES = 62


def per_call(fn: Callable[[], object], n: int) -> float:
    for _ in range(n // 20):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main(n: int = 20_000) -> None:
    config = ModbusDeviceConfig.model_validate({
        "protocol": "modbus", "name": "bench", "host": "127.0.0.1", "addressing": "zero_based",
        "tags": [{"name": f"f{i}", "address": 2 * i, "type": "float32", "order": "CDAB"}
                 for i in range(VALUES)]})
    plan = ModbusDriver(config)._plans[0]
    registers = [0x4000, 0x3F80] * VALUES
    pdu = bytes([3, 4 * VALUES]) + struct.pack(f">{2 * VALUES}H", *registers)
    theirs = DecodePDU(False)
    ours = DecodePDU(False)
    ours.register(HoldingRegisterBytes)
    rows = []
    for name, decoder in (("pymodbus ReadHoldingRegistersResponse", theirs),
                          ("linetap HoldingRegisterBytes", ours)):
        response = decoder.decode(pdu)
        reply_s = per_call(lambda d=decoder: d.decode(pdu), n)
        block_s = per_call(lambda r=response: decode_block(plan, r), n)
        rows.append((name, reply_s, block_s))
        print(f"{name}: reply {reply_s * 1e6:.1f} us + decode_block {block_s * 1e6:.1f} us per "
              f"{2 * VALUES}-register reply = {(reply_s + block_s) / VALUES * 1e9:.0f} ns per float32")
    (_, r0, b0), (_, r1, b1) = rows
    print(f"linetap / pymodbus reply path: {(r1 + b1) / (r0 + b0):.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
