"""Register replies kept as bytes (drivers/modbus/words.py): the same registers as pymodbus' own
classes, the same refusals, and the driver really uses them against the simulator."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from agent_helpers import modbus_device
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from linetap.config.devices.modbus import ModbusDeviceConfig
from linetap.drivers.modbus import ModbusDriver
from linetap.drivers.modbus.decode import decode_block
from linetap.drivers.modbus.words import HoldingRegisterBytes, InputRegisterBytes, register_word_replies
from linetap.drivers.samples import Quality
from linetap.simulators import ModbusStationServer, StationModel


def decoders() -> tuple[DecodePDU, DecodePDU]:
    """pymodbus' client-side decoder as shipped, and one with linetap's classes registered."""
    ours = DecodePDU(False)
    ours.register(HoldingRegisterBytes)
    ours.register(InputRegisterBytes)
    return DecodePDU(False), ours


def frame(function: int, registers: list[int]) -> bytes:
    return bytes([function, 2 * len(registers)]) + struct.pack(f">{len(registers)}H", *registers)


@pytest.mark.parametrize("function, cls, theirs_cls", [(3, HoldingRegisterBytes, ReadHoldingRegistersResponse),
                                                       (4, InputRegisterBytes, ReadInputRegistersResponse)])
@pytest.mark.parametrize("count", [1, 2, 62, 124, 125])
def test_same_registers_as_pymodbus(function, cls, theirs_cls, count) -> None:
    rng = random.Random(count * function)
    registers = [rng.randrange(0, 1 << 16) for _ in range(count)]
    registers[0] = 0xFFFF  # the edges of 16 bits
    registers[-1] = 0x0000
    theirs, ours = decoders()
    a, b = theirs.decode(frame(function, registers)), ours.decode(frame(function, registers))
    assert type(a) is theirs_cls and type(b) is cls and isinstance(b, theirs_cls)
    assert b.register_bytes == struct.pack(f">{count}H", *registers)
    assert a.registers == b.registers == registers
    assert (a.function_code, a.dev_id, a.transaction_id) == (b.function_code, b.dev_id, b.transaction_id)


@pytest.mark.parametrize("data", [bytes([3, 10, 0, 1]), bytes([3, 4]), bytes([3, 3, 0, 1, 2]), bytes([4, 5, 1, 2, 3, 4, 5])],
                         ids=["says-10-carries-2", "says-4-carries-0", "odd-3", "odd-5"])
def test_short_or_odd_byte_counts_are_no_reply(data) -> None:
    """pymodbus returns None for a frame it cannot decode; so do we, also for half a register."""
    theirs, ours = decoders()
    assert ours.decode(data) is None
    if data[1] % 2 == 0:  # pymodbus takes an odd count's whole registers and drops the last byte
        assert theirs.decode(data) is None


def test_str_names_the_count_not_every_register() -> None:
    """pymodbus formats str(pdu) for every reply even with debug logging off."""
    _, ours = decoders()
    reply = ours.decode(frame(3, list(range(124))))
    text = str(reply)
    assert "registers=<124 words>" in text and "123" not in text.replace("transaction_id=0", "")
    assert "HoldingRegisterBytes" in text


def test_registers_can_be_set_like_pymodbus() -> None:
    """Requests' own code (and tests, and the simulator) build replies with registers=[...]."""
    reply = HoldingRegisterBytes(registers=[1, 2, 0xFFFF])
    assert reply.registers == [1, 2, 0xFFFF] and reply.register_bytes is None
    assert reply.encode() == ReadHoldingRegistersResponse(registers=[1, 2, 0xFFFF]).encode()
    assert "registers=<3 words>" in str(reply)
    assert InputRegisterBytes().registers == []


class _IntReply:
    def __init__(self, registers: list[int]) -> None:
        self.registers = registers


MIXED = ModbusDeviceConfig.model_validate(modbus_device(502, name="press-2", tags=[
    {"name": "force.kN", "address": 0, "type": "float32"},
    {"name": "cycle-count", "address": 2, "type": "uint32", "order": "CDAB"},
    {"name": "offset_mm", "address": 4, "type": "int16", "scale": 0.01},
    {"name": "recipe", "address": 5, "type": "string", "length": 4},
    {"name": "energy", "address": 9, "type": "float64", "order": "DCBA"}]))


def test_decode_from_bytes_equals_decode_from_ints() -> None:
    plan = ModbusDriver(MIXED)._plans[0]
    rng = random.Random(7)
    for _ in range(200):
        registers = [rng.randrange(0, 1 << 16) for _ in range(13)]
        registers[5:9] = [0x4142, 0x4344, 0x2000, 0x0000]
        from_ints, uncertain_a = decode_block(plan, _IntReply(registers))
        reply = HoldingRegisterBytes()
        reply.decode(bytes([26]) + struct.pack(">13H", *registers))
        from_bytes, uncertain_b = decode_block(plan, reply)
        assert uncertain_a == uncertain_b
        np.testing.assert_array_equal(from_bytes.vtype, from_ints.vtype)
        np.testing.assert_array_equal(from_bytes.num, from_ints.num)  # NaN == NaN here
        np.testing.assert_array_equal(from_bytes.missing, from_ints.missing)
        assert from_bytes.text == from_ints.text and from_bytes.text == {3: "ABCD"}


async def test_register_word_replies_refused_is_false() -> None:
    class Refusing:
        def register(self, cls):
            raise TypeError("not a ModbusPDU")
    assert register_word_replies(Refusing()) is False
    assert register_word_replies(AsyncModbusTcpClient("127.0.0.1", port=1)) is True


async def test_the_driver_decodes_simulator_replies_from_bytes(monkeypatch) -> None:
    """Against the real simulator over TCP: both register tables arrive as our classes and decode right."""
    model = StationModel(seed=3)
    server = ModbusStationServer(model, host="127.0.0.1", port=0)
    await server.start()
    try:
        config = ModbusDeviceConfig.model_validate(modbus_device(server.port, name="seal-station", tags=[
            {"name": "seal.temperature", "address": 0, "type": "float32"},
            {"name": "cycle_count", "table": "input", "address": 0, "type": "uint16"}]))
        driver = ModbusDriver(config)
        snap = server.snapshot()
        seen: list[type] = []
        original = ModbusDriver._request

        async def spy(self, client, block):
            raw = await original(self, client, block)
            seen.append(type(raw))
            return raw
        monkeypatch.setattr(ModbusDriver, "_request", spy)
        await driver.connect()
        try:
            batch = await driver.read()
        finally:
            await driver.close()
    finally:
        await server.stop()
    assert set(seen) == {HoldingRegisterBytes, InputRegisterBytes}
    assert list(batch.quality) == [Quality.GOOD, Quality.GOOD]
    assert batch.value[0] == pytest.approx(snap.temperature, abs=0.5) and isinstance(batch.value[1], int)
