"""Replies that do not answer their request: a raw-socket Modbus TCP server (asyncio, not
pymodbus) that serves a heat sealer's registers right, or is told to answer wrongly.

Never a good sample with a wrong value; the reason in words; a healthy device unaffected; a
device that keeps answering wrongly is reconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest

from linetap.agent.records import Quality, SampleBatch
from linetap.drivers import DeviceUnreachable, modbus_reply
from linetap.drivers.modbus import ModbusDeviceConfig, ModbusDriver

#: the sealer's holding registers: zone temperature (0.1 degC), pressure (mbar), dwell (ms), ...
HOLDING = {100 + i: v for i, v in enumerate([1853, 4200, 1250, 7, 0, 31])}
#: input registers at the same addresses hold other numbers: a function-4 reply is recognisable
INPUT = {100 + i: 9000 + i for i in range(62)}
COILS = {10: True, 11: False, 12: True}

SEALER_TAGS = [
    {"name": "seal_temperature", "table": "holding", "address": 100, "type": "uint16", "scale": 0.1, "unit": "degC"},
    {"name": "seal_pressure", "table": "holding", "address": 101, "type": "uint16", "unit": "mbar"},
    {"name": "dwell_time", "table": "holding", "address": 102, "type": "uint16", "unit": "ms"},
    {"name": "recipe_id", "table": "holding", "address": 103, "type": "uint16"},
    {"name": "heater_on", "table": "coil", "address": 10, "type": "bool"},
    {"name": "cycle_active", "table": "coil", "address": 12, "type": "bool"},
]
EXPECTED = {"seal_temperature": 1853 * 0.1, "seal_pressure": 4200, "dwell_time": 1250, "recipe_id": 7,
            "heater_on": True, "cycle_active": True}


class RawModbusServer:
    """Modbus TCP on 127.0.0.1 by hand: function codes 1-4, unit 1. `fault` says how to answer
    wrongly: None (right), "function", "unit", "transaction", "byte_count", "truncated",
    "silence", "garbage"; `every` = N makes only every Nth reply wrong."""

    def __init__(self, unit: int = 1) -> None:
        self.unit = unit
        self.fault: str | None = None
        self.every = 1
        self.replies = 0
        self.connections = 0
        self.functions: list[int] = []
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> RawModbusServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    def answer(self, fault: str | None, every: int = 1) -> None:
        self.fault, self.every, self.replies = fault, every, 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _proto, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                self.functions.append(pdu[0])
                frame = self._reply(tid, unit, pdu)
                if frame is not None:
                    writer.write(frame)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _reply(self, tid: int, unit: int, pdu: bytes) -> bytes | None:
        function, address, count = pdu[0], *struct.unpack(">HH", pdu[1:5])
        self.replies += 1
        fault = self.fault if self.replies % self.every == 0 else None
        if fault == "silence":
            return None
        if fault == "function" and function in (3, 4):
            function = 7 - function  # a function-4 reply (input registers) to a function-3 request
        if function in (1, 2):
            bits = [COILS.get(address + i, False) for i in range(count)]
            data = bytes(sum(1 << j for j in range(8) if i + j < count and bits[i + j])
                         for i in range(0, count, 8))
        else:
            table = HOLDING if function == 3 else INPUT
            data = b"".join(struct.pack(">H", table.get(address + i, 0)) for i in range(count))
        if fault == "byte_count":
            data = data[:-2] if len(data) > 2 else data + b"\0\0"
        body = bytes([function, len(data)]) + data
        if fault == "unit":
            unit = 7
        if fault == "transaction":
            tid = (tid + 1000) & 0xFFFF
        if fault == "garbage":
            return b"\x13\x37 not modbus at all\r\n"
        frame = struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
        if fault == "truncated":
            return frame[: len(frame) - 3]  # the header promises more than ever comes
        return frame


def sealer(port: int, name: str = "sealer1", **kw) -> ModbusDeviceConfig:
    kw.setdefault("timeout", 0.3)
    return ModbusDeviceConfig(protocol="modbus", name=name, host="127.0.0.1", port=port, unit_id=1,
                              addressing="zero_based", tags=SEALER_TAGS, **kw)


def by_name(batch: SampleBatch) -> dict[str, tuple]:
    return {t: (v, q, r) for t, v, q, r in zip(batch.tag, batch.value, batch.quality, batch.reason, strict=True)}


def assert_never_good_and_wrong(batch: SampleBatch) -> None:
    for tag, (value, quality, _reason) in by_name(batch).items():
        if quality == Quality.GOOD:
            assert value == pytest.approx(EXPECTED[tag]), (tag, value)


@contextlib.asynccontextmanager
async def connected(port: int, **kw):
    driver = ModbusDriver(sealer(port, **kw))
    await driver.connect()
    try:
        yield driver
    finally:
        await driver.close()


async def test_right_replies_give_good_values() -> None:
    async with RawModbusServer() as server, connected(server.port) as driver:
        got = by_name(await driver.read())
        assert {t: v for t, (v, _, _) in got.items()} == pytest.approx(EXPECTED)
        assert {q for _, q, _ in got.values()} == {Quality.GOOD}
        assert driver.counters["rejected_replies"] == 0


# fault -> the reason on the holding-register tags (a 4-register request at address 100)
REASONS = {
    "function": "reply for function 4 to a function 3 request",
    "unit": "reply from unit 7 to a request for unit 1",
    "transaction": "reply for transaction",
    "byte_count": "reply with 6 bytes for 4 registers",
    "truncated": "incomplete reply",
}


@pytest.mark.parametrize("fault", list(REASONS))
async def test_a_wrong_reply_is_a_bad_sample_with_the_reason(fault: str) -> None:
    async with RawModbusServer() as server, connected(server.port) as driver:
        server.answer(fault)
        got = by_name(await driver.read())
        for tag in ("seal_temperature", "seal_pressure", "dwell_time", "recipe_id"):
            value, quality, reason = got[tag]
            assert (value, quality) == (None, Quality.BAD), (tag, got[tag])
            assert REASONS[fault] in reason, reason
        assert driver.counters["rejected_replies"] >= 1
        server.answer(None)  # the device answers right again: good values, nothing carried over
        batch = await driver.read()
        assert by_name(batch)["seal_pressure"] == (4200, Quality.GOOD, None)
        assert_never_good_and_wrong(batch)


async def test_wrong_byte_count_on_a_coil_read() -> None:
    async with RawModbusServer() as server, connected(server.port) as driver:
        server.answer("byte_count")
        got = by_name(await driver.read())
        assert got["heater_on"][:2] == (None, Quality.BAD)
        assert "reply with 3 bytes for 3 bits" in got["heater_on"][2]


async def test_silence_is_a_timeout_never_good() -> None:
    async with RawModbusServer() as server, connected(server.port) as driver:
        server.answer("silence")
        got = by_name(await driver.read())
        assert {q for _, q, _ in got.values()} == {Quality.BAD}
        assert "timed out" in got["seal_pressure"][2]
        assert driver.counters["rejected_replies"] == 0  # silence is not a wrong answer


async def test_every_third_reply_wrong_never_gives_a_wrong_good_value() -> None:
    async with RawModbusServer() as server, connected(server.port) as driver:
        server.answer("function", every=3)
        good = bad = 0
        for _ in range(12):
            batch = await driver.read()
            assert_never_good_and_wrong(batch)
            for _, q, r in by_name(batch).values():
                good += q == Quality.GOOD
                bad += q == Quality.BAD
                if q == Quality.BAD:
                    assert r == REASONS["function"]
        assert good and bad
        assert server.connections == 1  # never 5 wrong in a row: no reset


async def test_the_first_rejection_is_loud_then_quiet_and_recovery_logged_once() -> None:
    from structlog.testing import capture_logs

    async with RawModbusServer() as server, connected(server.port) as driver:
        with capture_logs() as logs:
            server.answer("unit")
            for _ in range(2):  # 2 polls x 2 requests = 4 rejected, below the reset
                await driver.read()
            server.answer(None)
            await driver.read()
            await driver.read()
    rejected = [e for e in logs if e["event"].startswith("modbus reply rejected")]
    assert [e["log_level"] for e in rejected] == ["warning", "debug", "debug", "debug"]
    assert rejected[0]["reason"] == "reply from unit 7 to a request for unit 1"
    assert rejected[0]["device"] == "sealer1"
    assert [e["event"] for e in logs if e["log_level"] == "info"] == ["modbus replies answer the requests again"]
    assert driver.counters["rejected_replies"] == 4


async def test_persistent_garbage_resets_the_connection() -> None:
    async with RawModbusServer() as server, connected(server.port) as driver:
        server.answer("transaction")
        with pytest.raises(DeviceUnreachable, match="5 replies in a row did not answer"):
            for _ in range(5):
                assert_never_good_and_wrong(await driver.read())
        assert driver.counters["connection_resets"] == 1
        server.answer(None)
        await driver.connect()  # what the agent's reconnect does
        assert by_name(await driver.read())["recipe_id"] == (7, Quality.GOOD, None)
        assert server.connections == 2


async def test_a_stream_that_is_not_modbus_is_bad_never_a_crash() -> None:
    async with RawModbusServer() as server, connected(server.port) as driver:
        server.answer("garbage")
        try:
            batch = await driver.read()
        except DeviceUnreachable:
            return
        got = by_name(batch)
        assert {q for _, q, _ in got.values()} == {Quality.BAD}
        assert "not a Modbus TCP frame" in got["seal_pressure"][2]


async def test_a_healthy_device_is_unaffected_by_a_wrong_one() -> None:
    async with RawModbusServer() as bad_server, RawModbusServer() as good_server:
        bad_server.answer("function")
        async with connected(bad_server.port, name="sealer1") as bad, \
                connected(good_server.port, name="sealer2") as good:
            for _ in range(3):
                wrong, right = await asyncio.gather(bad.read(), good.read())
                assert_never_good_and_wrong(wrong)
                registers = {t: s for t, s in by_name(wrong).items() if t not in ("heater_on", "cycle_active")}
                assert {q for _, q, _ in registers.values()} == {Quality.BAD}
                assert {q for _, q, _ in by_name(right).values()} == {Quality.GOOD}
            assert good.counters["rejected_replies"] == 0


async def test_without_the_checks_a_wrong_function_reply_would_pass(monkeypatch) -> None:
    """The checks are what stops it: with them disabled, the function-4 reply is good and wrong."""
    monkeypatch.setattr(modbus_reply, "check_reply", lambda frame, tid, expected: None)
    monkeypatch.setattr("linetap.drivers.modbus_reply.check_reply", lambda frame, tid, expected: None)
    monkeypatch.setattr("linetap.drivers.modbus.check_response", lambda response, expected: None)
    async with RawModbusServer() as server, connected(server.port) as driver:
        server.answer("function")
        got = by_name(await driver.read())
        assert got["seal_pressure"] == (9001, Quality.GOOD, None)  # input register 101: wrong, yet good


async def test_in_process_agent_never_stores_a_wrong_good_value(tmp_path) -> None:
    from agent_helpers import line_config, running_agent

    from linetap.agent.runtime import Agent  # noqa: F401 (the agent the helpers run)

    class NoBroker:
        host, port = "127.0.0.1", 1

    async with RawModbusServer() as bad_server, RawModbusServer() as good_server:
        bad_server.answer("function")
        devices = [
            {**sealer(bad_server.port, name="sealer1", poll_interval=0.05).model_dump(), "tags": SEALER_TAGS},
            {**sealer(good_server.port, name="sealer2", poll_interval=0.05).model_dump(), "tags": SEALER_TAGS},
        ]
        cfg = line_config(tmp_path, NoBroker(), devices)
        async with running_agent(cfg) as agent:
            for _ in range(100):
                await asyncio.sleep(0.05)
                s1, s2 = agent.stats.devices["sealer1"], agent.stats.devices["sealer2"]
                if s1.samples >= 30 and s2.samples >= 30:
                    break
            s1, s2 = agent.stats.devices["sealer1"], agent.stats.devices["sealer2"]
            assert s1.counters["rejected_replies"] >= 1
            assert s2.counters["rejected_replies"] == 0
            for status in (s1, s2):
                assert status.last_batch is not None
                assert_never_good_and_wrong(status.last_batch)
            assert by_name(s2.last_batch)["seal_pressure"] == (4200, Quality.GOOD, None)
            assert by_name(s1.last_batch)["seal_pressure"][1] == Quality.BAD
