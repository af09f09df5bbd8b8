"""Values as the device holds them: integers stay integers, a float32 is the shortest decimal that
reads back as the same float32, booleans are booleans, non-finite floats are named, from the
decode through the buffer to the JSON a message carries (and in unit records)."""

from __future__ import annotations

import csv
import math
import struct

import duckdb
import numpy as np
import orjson
import pytest

from linetap.agent.encoders import json_envelope as P
from linetap.agent.station_capture import StationAssembler
from linetap.agent.topics import Topics
from linetap.buffers import DuckDBBuffer
from linetap.config.capture import StationCapture
from linetap.config.devices.modbus import ModbusDeviceConfig
from linetap.drivers.modbus import ModbusDriver
from linetap.drivers.samples import Quality, SampleBatch, VType, shortest_float32
from linetap.simulators import KNOWN_VALUES

AGENT = "sealing-line-1"
TOPICS = Topics("acme/site/area/line", AGENT)


def widened(x: float) -> float:
    """What struct gives for a float32 register: the float32 as a Python float."""
    return struct.unpack(">f", struct.pack(">f", x))[0]


def messages_of(buf: DuckDBBuffer) -> list[dict]:
    table = buf.read_telemetry(0, 100_000, align=500)
    return [orjson.loads(body) for _, _, _, body in P.iter_telemetry_messages(AGENT, table, 500, TOPICS, 0)]


def json_values_of(buf: DuckDBBuffer) -> dict[str, object]:
    out = {}
    for m in messages_of(buf):
        out.update(zip(m["samples"]["tag"], m["samples"]["value"], strict=True))
    return out


@pytest.fixture
def buffer_path(tmp_path):
    folder = tmp_path / "line pc-1"
    folder.mkdir()
    return folder / "heat-sealer-buffer.duckdb"


# --- pure logic -------------------------------------------------------------------------------


def test_shortest_float32_reads_back_bit_for_bit():
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, 20_000, dtype=np.uint64).astype(np.uint32)
    f32 = bits.view(np.float32)
    f32 = f32[np.isfinite(f32)]
    got = shortest_float32(f32.astype(np.float64).tolist())
    assert np.array_equal(np.asarray(got, dtype=np.float32).view(np.uint32), f32.view(np.uint32))
    # and shortest: numpy's own repr of the float32 (Dragon4, unique) has the same value
    sample = f32[:2000]
    assert got[:2000] == [float(str(x)) for x in sample]
    assert shortest_float32([widened(1.743), widened(0.1), widened(-123.456)]) == [1.743, 0.1, -123.456]
    nan, inf = shortest_float32([math.nan, -math.inf])
    assert math.isnan(nan) and inf == -math.inf


def test_every_kind_of_value_is_written_as_its_type(buffer_path):
    values = [1111, -32768, 2**53, 2**53 + 1, 2**64 - 1, -(2**63), True, False, 1.743, 0.1 + 0.2,
              math.nan, math.inf, -math.inf, "SN-000001", b"\x01\xff", None]
    f32 = [False] * len(values)
    f32[8] = True  # the driver marks (and converts) its float32 values
    tags = [f"v{i}" for i in range(len(values))]
    quality = [Quality.GOOD] * (len(values) - 1) + [Quality.BAD]
    buf = DuckDBBuffer(buffer_path, AGENT)
    try:
        buf.append(SampleBatch("sealer1", tags, values, quality, [None] * len(values), 42, float32=f32).to_arrow())
        stored = buf.read_telemetry(0, 100).column("vtype").to_pylist()
        got = json_values_of(buf)
    finally:
        buf.close()
    assert stored[:9] == [VType.INT] * 3 + [VType.TEXT] * 3 + [VType.BOOL] * 2 + [VType.FLOAT32]
    expect = [1111, -32768, 2**53, "9007199254740993", "18446744073709551615", "-9223372036854775808",
              True, False, 1.743, 0.30000000000000004, "NaN", "Infinity", "-Infinity", "SN-000001", "01ff", None]
    assert [got[t] for t in tags] == expect
    assert [type(got[t]) for t in tags[:3]] == [int] * 3  # 1111, not 1111.0
    # the bytes on the wire, not only the parsed values
    raw = P.encode_telemetry(AGENT, P.telemetry_chunk(_table(buffer_path), 500), 0, 3, "sealer1", 0)
    assert b'"value":[1111,-32768,9007199254740992]' in raw


def _table(path):
    buf = DuckDBBuffer(path, AGENT)
    try:
        return buf.read_telemetry(0, 100, align=500)
    finally:
        buf.close()


def test_plain_float_telemetry_is_unchanged():
    """The bulk case (floats and nulls only) takes the column as it is."""
    import pyarrow as pa

    num = pa.chunked_array([pa.array([1.5, None, 2.25])])
    text = pa.chunked_array([pa.nulls(3, pa.string())])
    assert P.json_values(num, text, np.zeros(3, np.uint8)) == [1.5, None, 2.25]


# --- unit records --------------------------------------------------------------------------------

STATION = {
    "name": "sealer1", "device": "plc1", "serial": {"tag": "serial"},
    "start": {"tag": "cycle_active", "on": "rising"}, "timeout": "10s",
    "parameters": [
        {"name": "temp_max", "tag": "temperature", "reduce": "max", "limits": {"low": 175, "high": 185}},
        {"name": "temp_last", "tag": "temperature", "reduce": "last", "limits": {"low": 175, "high": 185}},
        {"name": "count", "tag": "count", "reduce": "end"},
        {"name": "ok", "tag": "seal_ok", "reduce": "end"},
        {"name": "trace", "tag": "temperature", "reduce": "trace", "points": 5},
    ],
}
TAGS = ["cycle_active", "serial", "temperature", "count", "seal_ok"]


def _poll(t: float, active: bool, temp: float, count: int = 3) -> SampleBatch:
    return SampleBatch("plc1", list(TAGS), [active, "SN-9", temp, count, True], [Quality.GOOD] * 5, [None] * 5,
                       int(t * 1e6), float32=[False, False, True, False, False])


def test_unit_record_values_keep_their_types_and_name_nan():
    st = StationAssembler(StationCapture.model_validate(STATION), "sha256:test")
    units = []
    for b in [_poll(0, False, 180.0), _poll(1, True, 180.0), _poll(1.5, True, math.nan), _poll(2, False, 180.0)]:
        units += st.feed(b)[0]
    [unit] = units
    p = {x["name"]: x for x in unit["parameters"]}
    assert p["count"]["value"] == 3 and type(p["count"]["value"]) is int
    assert p["ok"]["value"] is True
    # a NaN is never a pass: `last` saw it and cannot be judged; `max` ignores it with a reason
    assert p["temp_last"]["value"] == "NaN" and p["temp_last"]["verdict"] == "incomplete"
    assert "not a number" in p["temp_last"]["reason"]
    assert p["temp_max"]["verdict"] == "incomplete"
    assert [v for _, v in p["trace"]["value"]] == [180.0, "NaN"]
    assert unit["verdict"] != "pass"
    orjson.loads(orjson.dumps(unit))  # plain JSON, no NaN token


# --- the driver, through the buffer, to JSON ---------------------------------------------------


async def test_every_modbus_type_reaches_the_json_exactly(modbus_sim, buffer_path):
    cfg = ModbusDeviceConfig(protocol="modbus", name="sealer1", host="127.0.0.1", port=modbus_sim.port,
                             addressing="zero_based", timeout=0.5, tags=[f for f, _ in KNOWN_VALUES])
    driver = ModbusDriver(cfg)
    await driver.connect()
    try:
        batch = await driver.read()
    finally:
        await driver.close()
    buf = DuckDBBuffer(buffer_path, AGENT)
    try:
        buf.append(batch.to_arrow())
        got = json_values_of(buf)
        export = buffer_path.with_name("heat-sealer-export.csv")
        buf.write_file(*buf.export_query("telemetry"), export, "csv")
    finally:
        buf.close()
    with open(export, newline="") as f:
        exported = {row["tag"]: row["num"] for row in csv.DictReader(f)}
    for fields, device_value in KNOWN_VALUES:
        if fields["type"] == "float32" and fields.get("scale", 1) == 1 and fields.get("offset", 0) == 0:
            # the CSV holds the float32's shortest decimal too, not the widened double
            assert exported[fields["name"]] in (repr(device_value), str(device_value)), (fields, exported[fields["name"]])
    checked = {"float32": 0, "int": 0, "bool": 0}
    for fields, device_value in KNOWN_VALUES:
        value = got[fields["name"]]
        kind = fields["type"]
        scaled = fields.get("scale", 1) != 1 or fields.get("offset", 0) != 0
        if type(device_value) is int and abs(device_value) > 2**53:
            assert value == str(device_value), fields
        elif kind == "float32" and not scaled:
            assert np.float32(value) == np.float32(device_value) and value == device_value, fields
            assert len(repr(value)) <= len(repr(widened(device_value))), fields
            checked["float32"] += 1
        else:
            assert (value, type(value)) == (device_value, type(device_value)), fields
            if type(device_value) is int:
                checked["int"] += 1
            if type(device_value) is bool:
                checked["bool"] += 1
    assert all(checked.values()), checked


# --- an older buffer --------------------------------------------------------------------------------


def test_a_version_2_buffer_is_upgraded_and_its_rows_sent_as_they_were(buffer_path):
    buf = DuckDBBuffer(buffer_path, AGENT)
    buf.append(SampleBatch("sealer1", ["count", "temp"], [1111, 1.5], [0, 0], [None, None], 10).to_arrow())
    buf.close()
    # what linetap wrote before telemetry.vtype existed
    con = duckdb.connect(str(buffer_path))
    con.execute("ALTER TABLE telemetry DROP COLUMN vtype")
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.close()

    buf = DuckDBBuffer(buffer_path, AGENT)
    try:
        assert buf._con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [("3",)]
        buf.append(SampleBatch("sealer1", ["count", "temp"], [1112, 2.5], [0, 0], [None, None], 20).to_arrow())
        old, new = messages_of(buf)
    finally:
        buf.close()
    assert old["samples"]["value"] == [1111.0, 1.5] and type(old["samples"]["value"][0]) is float
    assert new["samples"]["value"] == [1112, 2.5] and type(new["samples"]["value"][0]) is int
    assert old["seq"] == 1 and new["seq"] == 3


def test_a_buffer_of_an_unknown_version_is_refused(buffer_path):
    DuckDBBuffer(buffer_path, AGENT).close()
    con = duckdb.connect(str(buffer_path))
    con.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    con.close()
    from linetap.buffers import BufferError

    with pytest.raises(BufferError, match="schema version 9"):
        DuckDBBuffer(buffer_path, AGENT)
