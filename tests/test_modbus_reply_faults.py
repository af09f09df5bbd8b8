"""Replies that do not answer their request: the real driver against a raw-socket server that
answers wrongly on demand (tests/modbus_raw_server.py). Never a good sample with a wrong value."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest
from agent_helpers import line_config, modbus_device, running_agent, telemetry_samples
from modbus_raw_server import RawModbusServer, table_value
from structlog.testing import capture_logs

from linetap.config.devices.modbus import ModbusDeviceConfig
from linetap.drivers import DeviceUnreachable
from linetap.drivers.modbus import ModbusDriver
from linetap.drivers.modbus import reply as modbus_reply
from linetap.drivers.samples import Quality, SampleBatch
from linetap.simulators import STATION_TAGS, ModbusStationServer, StationModel

# One 62-register holding block (100..161) and one 3-bit coil block: two requests per poll.
REGISTER_TAGS = [{"name": "ram_force", "address": 100, "type": "uint16"},
                 {"name": "ram-position", "address": 130, "type": "uint16"},
                 {"name": "die.temperature", "address": 161, "type": "uint16"}]
BIT_TAGS = [{"name": "guard_closed", "table": "coil", "address": 10, "type": "bool"},
            {"name": "clamp-engaged", "table": "coil", "address": 11, "type": "bool"},
            {"name": "two_hand.start", "table": "coil", "address": 12, "type": "bool"}]
FUNCTION = {"holding": 3, "input": 4, "coil": 1, "discrete": 2}
TRUE_VALUES = {t["name"]: table_value(FUNCTION[t.get("table", "holding")], t["address"])
               for t in REGISTER_TAGS + BIT_TAGS}
TIMEOUT = 0.3


def device(port: int, tags=None, name: str = "press-line-3", **kw) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(protocol="modbus", name=name, host="127.0.0.1", port=port, addressing="zero_based",
                              timeout=TIMEOUT, max_gap=40, tags=tags or REGISTER_TAGS + BIT_TAGS, **kw)


def by_name(batch: SampleBatch) -> dict[str, tuple]:
    return {t: (v, q, r) for t, v, q, r in zip(batch.tag, batch.value, batch.quality, batch.reason, strict=True)}


def never_wrong(batch: SampleBatch) -> tuple[int, int]:
    """(good, bad) counts; fails on a good sample with a wrong value or a bad one without a reason."""
    good = bad = 0
    for tag, (value, quality, reason) in by_name(batch).items():
        if quality == Quality.GOOD:
            assert (value, type(value)) == (TRUE_VALUES[tag], type(TRUE_VALUES[tag])), (tag, value)
            good += 1
        else:
            assert quality == Quality.BAD and value is None and reason, (tag, value, quality, reason)
            bad += 1
    return good, bad


@pytest.fixture
async def raw_server():
    async with RawModbusServer() as server:
        yield server


@pytest.fixture
async def driver(raw_server):
    d = ModbusDriver(device(raw_server.port))
    await d.connect()
    yield d
    await d.close()


async def test_healthy_raw_server_reads_the_right_values(raw_server, driver) -> None:
    assert [(b.table, b.address, b.count) for b in driver.blocks] == [("holding", 100, 62), ("coil", 10, 3)]
    assert never_wrong(await driver.read()) == (6, 0)
    assert driver.counters == {"rejected_replies": 0, "connection_resets": 0}


# mode -> (reason for the 62-register read, reason for the 3-coil read; None: that read is unaffected)
FAULTS = {
    "function": ("reply for function 4 to a function 3 request", "reply for function 2 to a function 1 request"),
    "unit": ("reply from unit 7 to a request for unit 1",) * 2,
    "transaction": (r"reply for transaction (\d+) to request (\d+)",) * 2,
    "tid_zero": (r"reply for transaction 0 to request \d+",) * 2,
    "byte_count": ("reply with 10 bytes for 62 registers", "reply with 10 bytes for 3 bits"),
    "carries_less": ("reply says 124 bytes but carries 10", None),
    "truncated": (f"incomplete reply: 20 of 133 bytes within {TIMEOUT:g}s", None),
    "silence": (f"timed out after {TIMEOUT:g}s",) * 2,
    "exception": ("modbus exception 4 (server device failure)",) * 2,
    "exception_other": ("exception reply for function 4 to a function 3 request",
                        "exception reply for function 2 to a function 1 request"),
    "garbage": (re.escape("reply is not a Modbus TCP frame (16 bytes starting 00 01 41 42 00 0a 00 01)"),) * 2,
}


@pytest.mark.parametrize("mode", list(FAULTS))
async def test_a_wrong_reply_is_bad_with_the_reason_and_the_next_right_one_is_good(raw_server, driver, mode) -> None:
    raw_server.fault(mode)
    batch = await driver.read()
    never_wrong(batch)
    got = by_name(batch)
    for tags, expected in ((REGISTER_TAGS, FAULTS[mode][0]), (BIT_TAGS, FAULTS[mode][1])):
        for tag in tags:
            value, quality, reason = got[tag["name"]]
            if expected is None:
                assert quality == Quality.GOOD, (tag, reason)
            else:
                assert quality == Quality.BAD and (reason == expected or re.fullmatch(expected, reason)), (tag, reason)
    if mode == "transaction":
        sent, answered = (int(x) for x in re.fullmatch(FAULTS[mode][0], got["ram_force"][2]).groups()[::-1])
        assert answered == sent + 1000
    rejected = {"silence": 0, "exception": 0, "carries_less": 1, "truncated": 1}.get(mode, 2)
    assert driver.counters["rejected_replies"] == rejected
    raw_server.fault(None)
    await asyncio.sleep(0.05)
    assert never_wrong(await driver.read()) == (6, 0), "the connection is usable after the wrong reply"
    assert raw_server.connections == 1


@pytest.mark.parametrize("mode", ["function", "unit", "transaction", "byte_count", "garbage"])
async def test_every_third_reply_wrong_gives_no_wrong_good_value(raw_server, mode) -> None:
    """The issue's case: 30 polls x 3 tags, every third reply from another table."""
    d = ModbusDriver(device(raw_server.port, REGISTER_TAGS))
    await d.connect()
    try:
        raw_server.fault(mode, every=3)
        good = bad = 0
        for _ in range(30):
            g, b = never_wrong(await d.read())
            good, bad = good + g, bad + b
    finally:
        await d.close()
    assert (good, bad) == (60, 30)
    assert d.counters == {"rejected_replies": 10, "connection_resets": 0}
    assert raw_server.connections == 1  # one wrong reply in three is not "keeps answering wrongly"


async def test_rejections_are_logged_once_loudly_then_quietly_and_the_recovery_once(raw_server, driver) -> None:
    with capture_logs() as logs:
        raw_server.fault("unit")
        for _ in range(2):
            await driver.read()  # 4 rejected replies (2 per poll), fewer than the 5 that reset
        raw_server.fault(None)
        await driver.read()
        await driver.read()
    mine = [e for e in logs if "repl" in e["event"]]
    warnings = [e for e in mine if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["reason"] == "reply from unit 7 to a request for unit 1"
    assert warnings[0]["device"] == "press-line-3" and warnings[0]["block"] == "holding 100..161"
    assert warnings[0]["endpoint"] == f"127.0.0.1:{raw_server.port}"
    assert [e["event"] for e in mine if e["log_level"] == "debug"] == ["modbus reply rejected"] * 3
    infos = [e for e in mine if e["log_level"] == "info"]
    assert [(e["event"], e["rejected"]) for e in infos] == [("modbus replies answer the requests again", 4)]
    assert driver.counters["rejected_replies"] == 4


async def test_persistent_garbage_resets_the_connection(raw_server, driver) -> None:
    raw_server.fault("garbage")
    for _ in range(2):
        never_wrong(await driver.read())  # 2 polls x 2 requests: 4 rejected
    with pytest.raises(DeviceUnreachable, match=r"5 replies in a row did not answer their requests "
                                                r"\(last: reply is not a Modbus TCP frame .*\); reconnecting"):
        await driver.read()
    assert driver.counters == {"rejected_replies": 5, "connection_resets": 1}
    await driver.connect()  # what the agent's device loop does next
    assert raw_server.connections == 2
    raw_server.fault(None)
    assert never_wrong(await driver.read()) == (6, 0)


async def test_late_reply_to_a_timed_out_request_is_dropped_not_taken(raw_server) -> None:
    """A slow PLC: the answer to request 1 arrives while request 2 waits; it must not be request 2's."""
    d = ModbusDriver(device(raw_server.port, REGISTER_TAGS))
    await d.connect()
    try:
        raw_server.late_by = TIMEOUT + 0.15
        raw_server.fault("late")
        batch = await d.read()
        assert set(batch.reason) == {f"timed out after {TIMEOUT:g}s"}
        raw_server.fault(None)
        assert never_wrong(await d.read()) == (3, 0)  # request 1's reply came first, and was dropped
        assert [r[0] for r in raw_server.requests] == [1, 2]
        assert d.counters["rejected_replies"] == 0
    finally:
        await d.close()


async def test_a_device_on_a_healthy_server_is_unaffected(raw_server) -> None:
    async with RawModbusServer() as healthy_server:
        faulty = ModbusDriver(device(raw_server.port, name="press-line-3"))
        healthy = ModbusDriver(device(healthy_server.port, name="press-line-4"))
        await faulty.connect()
        await healthy.connect()
        raw_server.fault("garbage")
        resets = 0

        async def poll_faulty():
            nonlocal resets
            try:
                never_wrong(await faulty.read())
            except DeviceUnreachable:
                resets += 1
                await faulty.connect()

        try:
            for _ in range(6):
                batch, _ = await asyncio.gather(healthy.read(), poll_faulty())
                assert never_wrong(batch) == (6, 0)
        finally:
            await faulty.close()
            await healthy.close()
        assert resets == 2 and faulty.counters["connection_resets"] == 2
        assert healthy.counters == {"rejected_replies": 0, "connection_resets": 0}


async def test_without_the_checks_pymodbus_takes_the_wrong_replies(raw_server, monkeypatch) -> None:
    """The checks are what stands between these faults and wrong good values: with them disabled
    (the driver as it was), pymodbus hands back a function-4 reply and a transaction-0 reply as
    the answer to a function-3 request."""
    monkeypatch.setattr(modbus_reply.ReplyGuard, "install", staticmethod(lambda client: None))
    monkeypatch.setattr("linetap.drivers.modbus.driver.check_response", lambda response, expected: None)
    d = ModbusDriver(device(raw_server.port, REGISTER_TAGS))
    await d.connect()
    try:
        for mode in ("function", "tid_zero"):
            raw_server.fault(mode)
            got = by_name(await d.read())
            wrong = 40000 + 100 if mode == "function" else TRUE_VALUES["ram_force"]
            assert got["ram_force"] == (wrong, Quality.GOOD, None), mode
    finally:
        await d.close()


async def test_agent_end_to_end_wrong_replies_never_arrive_as_good(tmp_path, broker, capture) -> None:
    """The in-process agent, two devices: one on a server where every third reply is from the
    wrong table, one on the station simulator. What reaches the MES is never a wrong good value."""
    folder = tmp_path / "Line 3 - Presses"
    folder.mkdir()
    async with RawModbusServer() as press_server, ModbusStationServer(StationModel(seed=3), port=0) as sim:
        press_server.fault("function", every=3)
        press = modbus_device(press_server.port, name="press-line-3", tags=REGISTER_TAGS, max_gap=40,
                              poll_interval="50ms")
        sealer = modbus_device(sim.port, name="sealer-2", tags=STATION_TAGS, poll_interval="50ms")
        cfg = line_config(folder, broker, [press, sealer], buffer={"path": str(folder / "press line buffer.duckdb")})

        def enough(msgs) -> bool:
            return sum(1 for s in telemetry_samples(msgs) if s["device"] == "press-line-3") >= 90

        async with running_agent(cfg) as agent:
            await capture.until(enough, timeout=20)
        counters = agent.stats.devices["press-line-3"].counters
    samples = telemetry_samples(capture.messages)
    press_samples = [s for s in samples if s["device"] == "press-line-3"]
    good = [s for s in press_samples if s["quality"] == "good"]
    bad = [s for s in press_samples if s["quality"] != "good"]
    assert all(s["value"] == TRUE_VALUES[s["tag"]] for s in good), "a wrong value arrived as good"
    assert bad and {(s["quality"], s["value"], s["reason"]) for s in bad} == {
        ("bad", None, "reply for function 4 to a function 3 request")}
    assert len(good) >= 2 * len(bad) - 3  # two right replies for every wrong one
    assert all(s["quality"] == "good" for s in samples if s["device"] == "sealer-2")
    assert counters["rejected_replies"] >= len(bad) // 3 and counters["connection_resets"] == 0
    status = orjson.loads(agent.status_file.read_bytes())
    assert status["devices"]["press-line-3"]["counters"]["rejected_replies"] == counters["rejected_replies"]
    assert "counters" not in status["devices"]["sealer-2"] or \
        status["devices"]["sealer-2"]["counters"]["rejected_replies"] == 0


async def test_a_reply_in_one_byte_pieces_is_good(raw_server, driver) -> None:
    raw_server.fault("dribble")
    assert never_wrong(await driver.read()) == (6, 0)
    assert driver.counters["rejected_replies"] == 0


async def test_the_guard_fits_this_pymodbus() -> None:
    """The guard sits on pymodbus internals; a pymodbus that moved them fails here, not silently."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=1)
    guard = modbus_reply.ReplyGuard.install(client)
    assert guard is not None and client.ctx.callback_data == guard.callback_data
    assert client.ctx.max_buffer_size >= 1 << 16
