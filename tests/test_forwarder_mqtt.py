"""The MQTT forwarder against a real Mosquitto and a real DuckDB buffer (no mocks).

Each test starts its own broker (`broker` fixture) and a persistent QoS 1 subscriber
(`capture`), fills a buffer file in tmp_path and checks what the subscriber got: every
record once (or re-sent identical), in seq order per stream, valid against the shipped
JSON Schemas, and the cursor where it must be.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
from fixtures_broker import Broker, MQTTCapture, Msg, find_mosquitto
from jsonschema import Draft202012Validator

import linetap.config
from linetap.agent.forwarder import MQTTForwarder
from linetap.agent.topics import Topics
from linetap.buffers import AsyncBuffer
from linetap.buffers.records import Event
from linetap.config.models import LineConfig
from linetap.drivers.samples import TELEMETRY_SCHEMA, Quality, SampleBatch

AGENT = "line1-agent"
ROOT = "acme/plant1/assembly/line1"
SCHEMAS = Path(linetap.config.__file__).parent / "schemas"
VALIDATORS = {
    name: Draft202012Validator(json.loads((SCHEMAS / f"{name}.json").read_text()))
    for name in ("telemetry", "unit", "event", "status")
}
SCHEMA_FILE = {"telemetry": "telemetry", "units": "unit", "events": "event"}


# -- helpers --------------------------------------------------------------------------------


def line_config(broker, **mqtt) -> LineConfig:
    mqtt = {"host": broker.host, "port": broker.port, "reconnect_min": 0.05, "reconnect_max": 0.5, **mqtt}
    tag = {"name": "t0", "address": 0}
    return LineConfig.model_validate({
        "agent": {"id": AGENT, "enterprise": "acme", "site": "plant1", "area": "assembly", "line": "line1"},
        "mqtt": mqtt,
        "devices": [
            {"protocol": "modbus", "name": "press1", "station": "sealer1", "host": "127.0.0.1",
             "addressing": "zero_based", "tags": [tag]},
            {"protocol": "modbus", "name": "oven2", "host": "127.0.0.1", "addressing": "zero_based",
             "tags": [tag]},
        ],
    })


def big_table(device: str, n: int, first_value: float = 0.0) -> pa.Table:
    """n good float samples of one device, built column-wise (fast enough for 100k+ rows): polls
    of 50 tags every 100 ms, one agent_ts per poll as the drivers make them."""
    ts = 1_700_000_000_000_000 + np.arange(n, dtype=np.int64) // 50 * 100_000
    return pa.Table.from_arrays(
        [
            pa.array([device] * n, pa.string()),
            pa.array([f"t{i % 50}" for i in range(n)], pa.string()),
            pa.array(np.arange(n, dtype=np.float64) + first_value),
            pa.nulls(n, pa.string()),
            pa.array(np.zeros(n, dtype=np.uint8)),
            pa.nulls(n, pa.string()),
            pa.array(ts - 7 + np.arange(n, dtype=np.int64) % 50),
            pa.array(ts),
            pa.array(np.zeros(n, dtype=np.uint8)),
        ],
        schema=TELEMETRY_SCHEMA,
    )


def mixed_batch(device: str, i: int) -> pa.Table:
    """A small batch with every kind of value: float, bool, text, big int, none (bad)."""
    return SampleBatch(
        device=device,
        tag=["temp", "ok", "serial", "counter", "pressure"],
        value=[20.5 + i, True, f"SN{i:05d}", 2**60 + i, None],
        quality=[Quality.GOOD, Quality.GOOD, Quality.GOOD, Quality.UNCERTAIN, Quality.BAD],
        reason=[None, None, None, "stale", "timeout"],
        agent_ts=1_700_000_000_000_000 + i,
        source_ts=[1_700_000_000_000_000 + i, None, None, None, None],
    ).to_arrow()


CONFIG_VERSION = "sha256:" + "5e" * 32


def unit(i: int, station: str | None = "sealer1") -> dict:
    """A unit record body of the shape agent/capture.py writes (tests/test_e2e_units.py checks the
    real ones against the same schema)."""
    started = 1_700_000_000_000_000 + i * 3_000_000
    temp = 180.0 + i % 10
    return {
        "kind": "unit", "serial": f"SN-{i:06d}", "lot": "LOT-2024-17", "station": station, "device": "press1",
        "operator": "OP-1107", "started_at": started, "ended_at": started + 2_050_000, "cycle_time": 2.05,
        "parameters": [
            {"name": "seal_temperature_max", "reduce": "max", "tag": "seal_temperature", "value": temp,
             "unit": "degC", "low": 175.0, "high": 185.0, "spec": "WI-SEAL-007 rev B",
             "verdict": "fail" if temp > 185.0 else "pass",
             "reason": "high limit 185 breached" if temp > 185.0 else None},
            {"name": "temperature_trace", "reduce": "trace", "tag": "seal_temperature",
             "value": [[0.0, 150.0], [1.0, temp], [2.05, temp - 1]], "unit": None, "low": None, "high": None,
             "spec": None, "verdict": "recorded", "reason": None},
            {"name": "cycle_time", "reduce": "cycle_time", "tag": None, "value": 2.05, "unit": "s", "low": None,
             "high": None, "spec": None, "verdict": "recorded", "reason": None},
        ],
        "verdict": "fail" if temp > 185.0 else "pass", "reasons": [], "config_version": CONFIG_VERSION,
    }


def event(i: int, station: str | None = None) -> Event:
    """A non-conformance of the shape agent/capture.py raises."""
    return Event("nonconformance", 1_700_000_000_000_000 + i, "press1", station, {
        "serial": f"SN-{i:06d}", "operator": "OP-1107", "parameter": "seal_temperature_max", "reduce": "max",
        "value": 200.0 + i, "limit": "high", "limit_value": 185.0, "unit": "degC", "spec": "WI-SEAL-007 rev B",
        "unit_started_at": 1_700_000_000_000_000 + i - 500_000, "during_cycle": True})


@contextlib.asynccontextmanager
async def forwarding(config: LineConfig, buf: AsyncBuffer):
    fwd = MQTTForwarder(config, buf)
    task = asyncio.create_task(fwd.run(), name="forwarder")
    try:
        yield fwd
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=10)
        assert task.done(), "the forwarder did not stop within 10 s of being cancelled"
        with contextlib.suppress(asyncio.CancelledError):
            await task


@functools.cache
def decode(payload: bytes) -> dict:
    """Parsed once per message: the wait predicates run on the event loop, beside the forwarder."""
    return orjson.loads(payload)


def data(msgs: list[Msg]) -> dict[str, list[tuple[Msg, dict]]]:
    out: dict[str, list[tuple[Msg, dict]]] = {"events": [], "units": [], "telemetry": []}
    for m in msgs:
        if m.topic.endswith("/status"):
            continue
        d = decode(m.payload)
        out[d["stream"]].append((m, d))
    return out


def samples_received(msgs: list[Msg]) -> int:
    """Distinct telemetry samples received (seq ranges, duplicates counted once)."""
    seen: set[str] = set()
    n = 0
    for _, d in data(msgs)["telemetry"]:
        if d["id"] not in seen:
            seen.add(d["id"])
            n += d["count"]
    return n


def last_of(msgs: list[Msg], stream: str) -> int:
    items = data(msgs)[stream]
    return max((d.get("seq_last", d["seq"]) for _, d in items), default=0)


def have_all(last: dict[str, int]):
    return lambda msgs: all(last_of(msgs, s) >= n for s, n in last.items())


def check_stream(items: list[tuple[Msg, dict]], stream: str, last_seq: int, *, allow_duplicates: bool,
                 validate: int | None = 50) -> int:
    """Every seq 1..last_seq exactly once in first-delivery order; duplicates identical. Returns duplicates.

    The first `validate` messages (None: all) are checked against the JSON Schema (jsonschema
    needs ~10 ms for a message of 500 samples)."""
    expected = 1
    first: dict[str, dict] = {}
    dups = 0
    for i, (m, d) in enumerate(items):
        if validate is None or i < validate:
            VALIDATORS[SCHEMA_FILE[stream]].validate(d)
        assert d["agent"] == AGENT and d["stream"] == stream
        content = {k: v for k, v in d.items() if k != "sent_at"}
        if d["id"] in first:
            dups += 1
            assert content == first[d["id"]], f"{stream}: duplicate {d['id']} differs from the first delivery"
            continue
        assert d["seq"] == expected, f"{stream}: expected seq {expected}, got {d['seq']} ({d['id']})"
        first[d["id"]] = content
        if stream == "telemetry":
            assert d["seq_last"] == d["seq"] + d["count"] - 1
            assert all(len(col) == d["count"] for col in d["samples"].values())
            assert d["id"] == f"{AGENT}/telemetry/{d['seq']}-{d['seq_last']}"
            assert m.topic == f"{ROOT}/{ {'press1': 'sealer1', 'oven2': 'oven2'}[d['device']] }/telemetry"
            expected = d["seq_last"] + 1
        else:
            assert d["id"] == f"{AGENT}/{stream}/{d['seq']}"
            assert m.topic == f"{ROOT}/{d['body'].get('station') or '_line'}/{stream}"
            expected = d["seq"] + 1
    assert expected == last_seq + 1, f"{stream}: received up to {expected - 1}, buffer has {last_seq}"
    if not allow_duplicates:
        assert dups == 0, f"{stream}: {dups} duplicates without any reconnect"
    return dups


async def cursors(buf: AsyncBuffer) -> dict[str, int]:
    return {s: await buf.cursor("mqtt", s) for s in ("events", "units", "telemetry")}


async def last_seqs(buf: AsyncBuffer) -> dict[str, int]:
    return {s: await buf.last_seq(s) for s in ("events", "units", "telemetry")}


def statuses(msgs: list[Msg]) -> list[str]:
    return [orjson.loads(m.payload)["state"] for m in msgs if m.topic.endswith("/status")]


@pytest.fixture
async def buf(tmp_path):
    b = await AsyncBuffer.open(tmp_path / "buffer.duckdb", AGENT)
    try:
        yield b
    finally:
        await b.close()


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_prefilled_buffer_is_delivered_once_in_order(broker, capture, buf, protocol):
    for i in range(40):
        device = "press1" if i % 3 else "oven2"
        await buf.append(
            telemetry=pa.concat_tables([mixed_batch(device, i), big_table(device, 97 + i, i * 1000.0)]),
            events=[event(i, station=None if i % 2 else "sealer1")] if i % 4 == 0 else (),
            units=[unit(i, station=None if i % 5 == 0 else "sealer1")] if i % 2 == 0 else (),
        )
    expected = await last_seqs(buf)
    assert expected["events"] == 10 and expected["units"] == 20
    cfg = line_config(broker, protocol=protocol, telemetry_batch=64, max_inflight=16)

    async with forwarding(cfg, buf) as fwd:
        msgs = await capture.until(have_all(expected), timeout=20)
        await capture.until(lambda ms: "online" in statuses(ms), timeout=5)
        assert fwd.stats.connected and fwd.stats.reconnects == 0
    msgs = await capture.until(lambda ms: statuses(ms)[-1:] == ["offline"], timeout=5)

    streams = data(msgs)
    for stream in ("events", "units", "telemetry"):
        check_stream(streams[stream], stream, expected[stream], allow_duplicates=False, validate=None)
    tele = [d for _, d in streams["telemetry"]]
    assert max(d["count"] for d in tele) <= 64
    assert {d["device"] for d in tele} == {"press1", "oven2"}
    assert sum(d["count"] for d in tele) == expected["telemetry"]
    # the mixed values made it through: text, big ints as text, null for no value, quality names
    s = tele[0]["samples"]
    assert s["value"][:5] == [20.5, 1.0, "SN00000", str(2**60), None]
    assert s["quality"][:5] == ["good", "good", "good", "uncertain", "bad"]
    assert s["reason"][:5] == [None, None, None, "stale", "timeout"]
    for m in msgs:
        if m.topic.endswith("/status"):
            assert m.topic == f"{ROOT}/_agent/{AGENT}/status"
            VALIDATORS["status"].validate(orjson.loads(m.payload))
    assert await cursors(buf) == expected
    assert fwd.stats.acked == expected and fwd.stats.inflight == 0


@pytest.mark.timeout(60)
async def test_event_overtakes_telemetry_backlog(broker, capture, buf):
    total = 200_000
    for i in range(20):
        await buf.append(telemetry=big_table("press1" if i % 2 else "oven2", total // 20, i * 1e4))
    cfg = line_config(broker, telemetry_batch=500, max_inflight=32)
    async with forwarding(cfg, buf) as fwd:
        t0 = time.monotonic()
        await capture.until(lambda ms: samples_received(ms) >= 5_000, timeout=10)
        await buf.append(events=[event(1, station="sealer1")])
        fwd.notify()
        msgs = await capture.until(lambda ms: len(data(ms)["events"]) == 1, timeout=10)
        at_event = samples_received(msgs)
        msgs = await capture.until(lambda ms: samples_received(ms) >= total, timeout=30)
        drain = time.monotonic() - t0
    assert at_event < total, "the event waited for the whole telemetry backlog"
    check_stream(data(msgs)["telemetry"], "telemetry", total, allow_duplicates=False)
    check_stream(data(msgs)["events"], "events", 1, allow_duplicates=False)
    assert await cursors(buf) == {"events": 1, "units": 0, "telemetry": total}
    print(f"\ndrained {total} samples in {drain:.2f}s: {total / drain:,.0f} samples/s "
          f"(500 per message, window 32); event arrived after {at_event} samples")


@pytest.mark.timeout(60)
async def test_broker_restart_mid_drain_loses_nothing(broker, capture, buf):
    total = 120_000
    for i in range(12):
        await buf.append(telemetry=big_table("press1" if i % 2 else "oven2", total // 12, i * 1e4),
                         events=[event(i)], units=[unit(i)])
    cfg = line_config(broker, telemetry_batch=200, max_inflight=32)
    async with forwarding(cfg, buf) as fwd:
        await capture.until(lambda ms: samples_received(ms) >= 20_000, timeout=15)
        await asyncio.to_thread(broker.stop)
        # appended while the broker is down: delivered after it comes back
        await buf.append(telemetry=big_table("press1", 1000, 9e9), events=[event(99)])
        fwd.notify()
        await asyncio.sleep(0.5)
        assert not fwd.stats.connected
        await asyncio.to_thread(broker.start)
        expected = await last_seqs(buf)
        msgs = await capture.until(have_all(expected), timeout=30)
        assert fwd.stats.reconnects >= 1
        await capture.until(lambda ms: statuses(ms)[-1:] == ["online"], timeout=5)
    streams = data(msgs)
    dups = {s: check_stream(streams[s], s, expected[s], allow_duplicates=True) for s in streams}
    assert await cursors(buf) == expected
    print(f"\nduplicates after the broker restart: {dups}; re-sent by the forwarder: {fwd.stats.resent}")


@pytest.mark.timeout(60)
async def test_broker_unreachable_at_start(broker, capture, buf):
    await asyncio.to_thread(broker.stop)
    await buf.append(telemetry=big_table("press1", 1000), events=[event(1)], units=[unit(1)])
    async with forwarding(line_config(broker), buf) as fwd:
        await asyncio.sleep(1.0)  # several failed attempts (reconnect_max 0.5 s), no crash
        assert not fwd.stats.connected and fwd.stats.last_error
        await asyncio.to_thread(broker.start)
        expected = await last_seqs(buf)
        msgs = await capture.until(have_all(expected), timeout=15)
    streams = data(msgs)
    for s in streams:
        check_stream(streams[s], s, expected[s], allow_duplicates=False)
    assert await cursors(buf) == expected


@pytest.mark.timeout(60)
async def test_cursor_follows_new_data_and_restart_resumes_from_it(broker, capture, buf):
    """Live appends with notify(); a second forwarder (agent restart) sends only what is new."""
    cfg = line_config(broker, telemetry_batch=100)
    async with forwarding(cfg, buf) as fwd:
        for i in range(10):
            await buf.append(telemetry=mixed_batch("press1", i), events=[event(i)])
            fwd.notify()
            await asyncio.sleep(0.02)
        expected = await last_seqs(buf)
        await capture.until(have_all(expected), timeout=10)
        # the cursor is stored without waiting for the stop (batched, ~100 ms)
        deadline = time.monotonic() + 3
        while await cursors(buf) != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await cursors(buf) == expected
    await buf.append(telemetry=mixed_batch("oven2", 99), units=[unit(1)])
    async with forwarding(cfg, buf):
        expected = await last_seqs(buf)
        msgs = await capture.until(have_all(expected), timeout=10)
    streams = data(msgs)
    for s in streams:
        check_stream(streams[s], s, expected[s], allow_duplicates=False)


@pytest.mark.timeout(60)
async def test_status_online_then_offline_on_clean_stop(broker, buf):
    topic = f"{ROOT}/_agent/{AGENT}/status"
    async with forwarding(line_config(broker), buf):
        await asyncio.sleep(0.5)
        # a subscriber that arrives later gets the retained state
        with MQTTCapture(broker.host, broker.port, topics=(topic,), clean=True) as late:
            msgs = await late.until(lambda ms: len(ms) >= 1, timeout=5)
            assert msgs[0].retain and orjson.loads(msgs[0].payload)["state"] == "online"
    with MQTTCapture(broker.host, broker.port, topics=(topic,), clean=True) as after:
        msgs = await after.until(lambda ms: len(ms) >= 1, timeout=5)
        d = orjson.loads(msgs[0].payload)
        VALIDATORS["status"].validate(d)
        assert msgs[0].retain and d["state"] == "offline" and d["agent"] == AGENT


_CHILD = textwrap.dedent("""
    import asyncio, sys
    from linetap.agent.forwarder import MQTTForwarder
    from linetap.buffers import AsyncBuffer
    from linetap.config.models import LineConfig

    async def main(config_json, path):
        cfg = LineConfig.model_validate_json(config_json)
        buf = await AsyncBuffer.open(path, cfg.agent.id)
        await MQTTForwarder(cfg, buf).run()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


@pytest.mark.timeout(60)
def test_last_will_offline_when_the_process_dies(broker, tmp_path):
    topic = f"{ROOT}/_agent/{AGENT}/status"
    cfg = line_config(broker, keepalive=5)
    with MQTTCapture(broker.host, broker.port, topics=(topic,)) as cap:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, cfg.model_dump_json(), str(tmp_path / "b.duckdb")])
        try:
            cap.wait_for(lambda ms: statuses(ms)[-1:] == ["online"], timeout=20)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(5)
            msgs = cap.wait_for(lambda ms: statuses(ms)[-1:] == ["offline"], timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert statuses(msgs) == ["online", "offline"]
    with MQTTCapture(broker.host, broker.port, topics=(topic,), clean=True) as after:
        msgs = after.wait_for(lambda ms: len(ms) >= 1, timeout=5)
        assert msgs[0].retain and orjson.loads(msgs[0].payload)["state"] == "offline"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.timeout(60)
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc for RSS")
async def test_window_is_bounded_while_the_broker_is_frozen(broker, capture, buf):
    total = 100_000
    for i in range(10):
        await buf.append(telemetry=big_table("press1", total // 10, i * 1e4))
    window = 8
    cfg = line_config(broker, telemetry_batch=100, max_inflight=window, keepalive=30)
    async with forwarding(cfg, buf) as fwd:
        await capture.until(lambda ms: samples_received(ms) >= 5_000, timeout=10)
        broker.freeze()
        try:
            await asyncio.sleep(0.3)
            rss0, sent0 = _rss_mb(), fwd.stats.messages_sent
            peak = 0
            for _ in range(150):  # 1.5 s frozen
                peak = max(peak, fwd.stats.inflight)
                await asyncio.sleep(0.01)
            sent1, rss1 = fwd.stats.messages_sent, _rss_mb()
        finally:
            broker.thaw()
        assert peak <= window
        assert sent1 == sent0, "the forwarder kept publishing into a frozen broker"
        assert rss1 - rss0 < 20, f"memory grew by {rss1 - rss0:.1f} MB while frozen"
        msgs = await capture.until(lambda ms: samples_received(ms) >= total, timeout=30)
    check_stream(data(msgs)["telemetry"], "telemetry", total, allow_duplicates=True)
    assert (await cursors(buf))["telemetry"] == total


@pytest.mark.timeout(60)
async def test_an_event_gets_a_slot_when_telemetry_fills_the_window(broker, capture, buf):
    for i in range(10):
        await buf.append(telemetry=big_table("press1", 10_000, i * 1e4))
    window = 8
    cfg = line_config(broker, telemetry_batch=100, max_inflight=window, keepalive=30)
    async with forwarding(cfg, buf) as fwd:
        await capture.until(lambda ms: samples_received(ms) >= 2_000, timeout=10)
        broker.freeze()
        try:
            await asyncio.sleep(0.3)
            assert fwd.stats.inflight == window - fwd.reserve, "telemetry leaves the reserved slots free"
            sent = fwd.stats.messages_sent
            await buf.append(events=[event(9, station="sealer1")])
            fwd.notify()
            for _ in range(100):
                if fwd.stats.messages_sent > sent:
                    break
                await asyncio.sleep(0.01)
            assert fwd.stats.messages_sent == sent + 1, "the event went out although the broker is frozen"
        finally:
            broker.thaw()
        msgs = await capture.until(lambda ms: any(m.topic.endswith("/events") for m in ms), timeout=10)
    assert samples_received(msgs) < 100_000, "the event arrived ahead of the telemetry backlog"


def test_topics_from_config():
    class FakeBroker:
        host, port = "127.0.0.1", 1
    t = Topics.from_config(line_config(FakeBroker()))
    assert t.telemetry("press1") == f"{ROOT}/sealer1/telemetry"
    assert t.telemetry("oven2") == f"{ROOT}/oven2/telemetry"
    assert t.telemetry("unknown") == f"{ROOT}/unknown/telemetry"
    assert t.status == f"{ROOT}/_agent/{AGENT}/status"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("openssl") is None or find_mosquitto() is None
                    or shutil.which("mosquitto_passwd") is None,
                    reason="needs openssl, mosquitto and mosquitto_passwd")
async def test_tls_and_password(tmp_path, buf):
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=linetap-test-ca", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(d / "passwd"), "line1", "s3cret"], check=True)
    tls_broker = Broker(tmp_path / "broker", allow_anonymous=False, listener_conf=(
        f"cafile {d / 'ca.crt'}\ncertfile {d / 'server.crt'}\nkeyfile {d / 'server.key'}\n"
        f"password_file {d / 'passwd'}\n"))
    tls_broker.start()
    try:
        await buf.append(events=[event(1)], telemetry=mixed_batch("press1", 1))
        expected = await last_seqs(buf)
        with MQTTCapture(tls_broker.host, tls_broker.port, username="line1", password="s3cret",
                         ca_file=d / "ca.crt") as cap:
            tls = {"ca_file": str(d / "ca.crt")}
            # wrong password: refused, retried, never crashes
            async with forwarding(line_config(tls_broker, tls=tls, username="line1", password="wrong"), buf) as fwd:
                await asyncio.sleep(0.5)
                assert not fwd.stats.connected and "refused" in (fwd.stats.last_error or "")
            async with forwarding(line_config(tls_broker, tls=tls, username="line1", password="s3cret"), buf):
                msgs = await cap.until(have_all(expected), timeout=10)
        streams = data(msgs)
        for s in ("events", "telemetry"):
            check_stream(streams[s], s, expected[s], allow_duplicates=False)
    finally:
        tls_broker.stop()


async def _connected(fwd: MQTTForwarder) -> None:
    for _ in range(500):
        if fwd.stats.connected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the forwarder did not connect")


@pytest.mark.timeout(60)
async def test_offered_records_go_out_once_in_order_while_the_pump_reads_too(broker, capture, buf):
    """The writer's hand-over (offer) and the pump's buffer reads race: each record once, in seq order."""
    cfg = line_config(broker, keepalive=30)
    async with forwarding(cfg, buf) as fwd:
        await _connected(fwd)
        for i in range(1, 121):
            res = await buf.append(events=[event(i)], units=[unit(i)] if i % 3 == 0 else [])
            if i % 4 == 0:
                fwd.offer({"events": res.events, "units": res.units})
            elif i % 4 == 1:
                fwd.notify()
            # otherwise neither: the next offer is then ahead of the forwarder and must wait for the pump
        fwd.notify()
        msgs = await capture.until(have_all({"events": 120, "units": 40}), timeout=20)
    items = data(msgs)
    check_stream(items["events"], "events", 120, allow_duplicates=False, validate=None)
    check_stream(items["units"], "units", 40, allow_duplicates=False, validate=None)


@pytest.mark.timeout(60)
async def test_an_offered_event_goes_out_while_the_buffer_thread_is_busy(broker, capture, buf):
    """A committed non-conformance is published from memory: no buffer read stands in its way."""
    cfg = line_config(broker, keepalive=30)
    async with forwarding(cfg, buf) as fwd:
        await _connected(fwd)
        res = await buf.append(events=[event(1, "sealer1")])
        busy = asyncio.ensure_future(buf._call(time.sleep, 3.0))  # e.g. a long telemetry insert
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        fwd.offer({"events": res.events, "units": res.units})
        msgs = await capture.until(lambda ms: any(m.topic.endswith("/events") for m in ms), timeout=10)
        waited = time.monotonic() - t0
        assert not busy.done() and waited < 2.0, "the event waited for the buffer thread"
        await busy
    check_stream(data(msgs)["events"], "events", 1, allow_duplicates=False)


@pytest.mark.timeout(60)
async def test_reads_failing_on_a_full_disk_are_retried_not_fatal(broker, capture, buf, monkeypatch):
    """A read spills to `<buffer>.tmp`; on a full disk DuckDB raises IOException "No space left on
    device" from a read (seen in the soak: it killed the forwarder). Now: a warning, a retry every
    second, and everything delivered once the reads work again."""
    import duckdb
    from structlog.testing import capture_logs

    for i in range(6):
        await buf.append(events=[event(i)], units=[unit(i)], telemetry=mixed_batch("press1", i))
    expected = await last_seqs(buf)
    real = buf._buffer.read_records
    failures = {"left": 3}

    def read_records(*args):
        if failures["left"]:
            failures["left"] -= 1
            raise duckdb.IOException('IO Error: Could not write file "heat-sealer-buffer.duckdb.tmp/duckdb_temp_1.tmp": '
                                     "No space left on device")
        return real(*args)

    monkeypatch.setattr(buf._buffer, "read_records", read_records)
    with capture_logs() as logs:
        async with forwarding(line_config(broker), buf) as fwd:
            msgs = await capture.until(have_all(expected), timeout=20)
            assert fwd.stats.connected
    assert failures["left"] == 0
    streams = data(msgs)
    for stream in ("events", "units", "telemetry"):
        check_stream(streams[stream], stream, expected[stream], allow_duplicates=False, validate=None)
    failed = [e for e in logs if e["event"].startswith("buffer read failed")]
    assert [e["log_level"] for e in failed] == ["warning", "debug", "debug"]
    assert failed[0]["cause"] == "disk_full"
    assert [e["event"] for e in logs if e["event"] == "buffer readable again"] == ["buffer readable again"]


# A second payload format, as a plugin adds one (agent/encoders): its own topics and bytes. The
# child process below runs the forwarder with it, so the will is tested too (SIGKILL).
_OTHER_ENCODER = textwrap.dedent("""
    import orjson

    class OtherEncoder:
        name = "other"

        def __init__(self, agent, topics, batch):
            from linetap.agent.encoders.json_envelope import JsonEnvelope
            self.rows_of = JsonEnvelope(agent, topics, batch)  # only its row preparation (spans)
            self.agent, self.batch = agent, batch

        def telemetry_rows(self, table):
            return self.rows_of.telemetry_rows(table)

        def telemetry(self, rows, start, end, sent_at):
            return (f"other/{self.agent}/telemetry",
                    orjson.dumps({"first": rows.seq[start], "last": rows.seq[end - 1], "n": end - start}))

        def record(self, record, sent_at):
            return f"other/{self.agent}/{record.stream}", orjson.dumps({"seq": record.seq, "id": record.id})

        def status(self, state, ts):
            return f"other/{self.agent}/state", state.encode()
""")
_CHILD_OTHER = _OTHER_ENCODER + textwrap.dedent("""
    import asyncio, sys
    from linetap.agent.encoders import Encoder
    from linetap.agent.forwarder import MQTTForwarder
    from linetap.agent.topics import Topics
    from linetap.buffers import AsyncBuffer
    from linetap.config.models import LineConfig

    async def main(config_json, path):
        cfg = LineConfig.model_validate_json(config_json)
        buf = await AsyncBuffer.open(path, cfg.agent.id)
        encoder: Encoder = OtherEncoder(cfg.agent.id, Topics.from_config(cfg), cfg.mqtt.telemetry_batch)
        await MQTTForwarder(cfg, buf, encoder=encoder).run()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


@pytest.mark.timeout(90)
async def test_the_forwarder_sends_what_its_encoder_makes_status_and_will_included(broker, tmp_path):
    path = tmp_path / "line 1 buffer.duckdb"
    b = await AsyncBuffer.open(path, AGENT)
    await b.append(telemetry=big_table("press1", 300), events=[event(1), event(2)], units=[unit(1), unit(2)])
    await b.close()
    cfg = line_config(broker, keepalive=5, telemetry_batch=100)
    with MQTTCapture(broker.host, broker.port, topics=("other/#", f"{ROOT}/#")) as cap:
        child = subprocess.Popen([sys.executable, "-c", _CHILD_OTHER, cfg.model_dump_json(), str(path)])
        try:
            def done(ms):
                tele = [orjson.loads(m.payload) for m in ms if m.topic == f"other/{AGENT}/telemetry"]
                return sum(t["n"] for t in tele) >= 300 and b"online" in [m.payload for m in ms]
            cap.wait_for(done, timeout=30)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(5)
            msgs = cap.wait_for(lambda ms: ms[-1].payload == b"offline", timeout=15)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert {m.topic for m in msgs} == {f"other/{AGENT}/{s}" for s in ("telemetry", "events", "units", "state")}, \
        "only the encoder's topics: nothing in the JSON envelope's"
    tele = [orjson.loads(m.payload) for m in msgs if m.topic.endswith("/telemetry")]
    assert [(t["first"], t["last"]) for t in tele] == [(k + 1, k + 50) for k in range(0, 300, 50)]  # a poll each
    assert [orjson.loads(m.payload)["id"] for m in msgs if m.topic.endswith("/events")] == \
        [f"{AGENT}/events/1", f"{AGENT}/events/2"]
    assert [m.payload for m in msgs if m.topic.endswith("/state")] == [b"online", b"offline"]  # offline: the will


def test_every_payload_encoder_in_the_registry_is_a_config_choice_and_loads():
    import importlib
    import types
    import typing

    from linetap.agent.encoders import ENCODERS, encoder_for
    from linetap.config.models import MQTTConfig

    assert set(typing.get_args(MQTTConfig.model_fields["payload"].annotation)) == set(ENCODERS)
    for name, target in ENCODERS.items():
        module, _, cls = target.partition(":")
        assert getattr(importlib.import_module(module), cls).name == name
        cfg = line_config(types.SimpleNamespace(host="127.0.0.1", port=1883), payload=name)
        assert cfg.mqtt.payload == name and encoder_for(cfg).name == name
