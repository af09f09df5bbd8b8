"""Register replies kept as the bytes the device sent.

pymodbus decodes a register reply into a list of ints, one `struct.unpack` per register, and logs
`str(pdu)` (the whole list) for every reply at debug level, evaluated even when debug is off;
we then packed the list back into bytes for numpy. `python -m benchmarks.modbus_decode`, for a
124-register reply: 21.2 us in pymodbus plus 3.0 us into columns, against 1.3 + 2.1 us with these
response classes. Registered on each client (`register_word_replies`), they keep the register
bytes (`register_bytes`) and build the int list only when something asks for `registers`.
"""

from __future__ import annotations

import struct
from typing import Any

from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse


class _RegisterBytes:
    """Mixin for the two register reply classes: `register_bytes` holds the reply's data bytes."""

    function_code: int
    register_bytes: bytes | None = None
    _registers: list[int] | None = None

    @property
    def registers(self) -> list[int]:
        if self._registers is None:
            data = self.register_bytes or b""
            self._registers = list(struct.unpack(f">{len(data) // 2}H", data[:len(data) // 2 * 2]))
        return self._registers

    @registers.setter
    def registers(self, values) -> None:
        self._registers = list(values) if values else []
        self.register_bytes = None if values else b""

    def decode(self, data: bytes) -> None:
        if (size := int(data[0])) >= len(data):  # pymodbus' own check, same words
            raise ModbusIOException(f"byte_count {size} > length of packet {len(data)}",
                                    function_code=self.function_code)
        if size % 2:
            raise ModbusIOException(f"byte_count {size} is odd: not whole registers",
                                    function_code=self.function_code)
        self.register_bytes = bytes(data[1:1 + size])
        self._registers = None

    def __str__(self) -> str:  # pymodbus logs this for every reply: no list of ints
        size = len(self.register_bytes) if self.register_bytes is not None else 2 * len(self.registers)
        return (f"{type(self).__name__}(dev_id={self.dev_id}, transaction_id={self.transaction_id}, "  # type: ignore[attr-defined]
                f"registers=<{size // 2} words>)")


class HoldingRegisterBytes(_RegisterBytes, ReadHoldingRegistersResponse):
    """A read-holding-registers reply (function 3) kept as bytes."""


class InputRegisterBytes(_RegisterBytes, ReadInputRegistersResponse):
    """A read-input-registers reply (function 4) kept as bytes."""


def register_word_replies(client: Any) -> bool:
    """Decode this client's register replies with the classes above; False if pymodbus refused."""
    try:
        client.register(HoldingRegisterBytes)
        client.register(InputRegisterBytes)
    except Exception:  # an API change: pymodbus' own classes still work, only slower
        return False
    return True
