"""Decode cost of one Modbus block (62 float32, word-swapped), the driver's hot path.

    python -m benchmarks.modbus_decode

MEASURED.md: struct on a whole block ~2 us; pymodbus convert_from_registers 46-107 us.
"""

from __future__ import annotations

import time

from linetap.config.devices.modbus import ModbusDeviceConfig
from linetap.drivers.modbus import ModbusDriver
from linetap.drivers.modbus.decode import decode_block


class _Response:
    def __init__(self, registers):
        self.registers = list(registers)
        self.bits = []


def main(n: int = 20_000) -> None:
    config = ModbusDeviceConfig.model_validate({
        "protocol": "modbus", "name": "bench", "host": "127.0.0.1", "addressing": "zero_based",
        "tags": [{"name": f"f{i}", "address": 2 * i, "type": "float32", "order": "CDAB"} for i in range(62)]})
    driver = ModbusDriver(config)
    plan = driver._plans[0]
    response = _Response([0x4000, 0x3F80] * 62)
    for _ in range(1000):
        decode_block(plan, response)
    t = time.perf_counter()
    for _ in range(n):
        decode_block(plan, response)
    per_block = (time.perf_counter() - t) / n
    print(f"modbus block decode: {per_block * 1e6:.2f} us per block of 62 float32 (CDAB), "
          f"{per_block / 62 * 1e9:.0f} ns per value")


if __name__ == "__main__":
    main()
