"""Hot reload during production: the shipped two-station example under `linetap run`, with the
simulator and a private broker. A broken file on SIGHUP changes nothing (FILE:LINE in the log);
a change of the buffer is refused; then `linetap reload` adds a tag, removes a device (and its
station) and tightens a limit: the new tag appears, the removed device stops, the next unit uses
the new limit, telemetry seqs stay contiguous, and one `config_changed` event says what changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from sink_helpers import LINETAP
from test_sink_e2e import exported, samples
from test_user_path import Simulator, copy_example, linetap, stop_agent, wait_up

from linetap.agent.reload import config_changes
from linetap.config.loader import load_config

EXAMPLE = "sealer-and-leak-tester-modbus.yaml"


def without_leak_tester(text: str) -> str:
    a = text.index("  - protocol: modbus\n    name: leaktester1")
    text = text[:a] + text[text.index("stations:"):]
    return text[:text.index("  - name: leaktester1")]


def changed(text: str) -> str:
    text = without_leak_tester(text)
    text = text.replace("      - {name: film_lot,", "      - {name: seal_temperature_copy, address: 0, type: float32, "
                                                   "unit: degC}\n      - {name: film_lot,", 1)
    assert text.count("limits: {low: 175.0, high: 185.0}") == 1
    return text.replace("limits: {low: 175.0, high: 185.0}", "limits: {low: 10.0, high: 100.0}")


def log_events(err: str, event: str) -> list[dict]:
    out = []
    for line in err.splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            out.append(json.loads(line))
    return out


@pytest.mark.timeout(180)
def test_reload_during_production(tmp_path, broker):
    folder = tmp_path / "line pc-2"
    folder.mkdir()
    sim = Simulator("modbus", "--speed", "4")
    agent = None
    try:
        config = copy_example(EXAMPLE, folder, {"port: 1883": f"port: {broker.port}"})
        original = config.read_text().replace("port: 5020", f"port: {sim.port}")
        config.write_text(original)
        agent = subprocess.Popen([LINETAP, "run", str(config)], cwd=folder, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wait_up(folder / "sealer-and-leak-tester-buffer.duckdb", agent)
        time.sleep(4)

        config.write_text(original + "devices: [\n")  # broken: the agent must not notice but in its log
        r = linetap("reload", str(config), cwd=folder)
        assert r.returncode == 2 and f"{EXAMPLE}:" in r.stderr, r.stderr  # checked here, nothing signalled
        os.kill(agent.pid, signal.SIGHUP)  # and if it is signalled anyway
        time.sleep(1)
        config.write_text(original.replace("path: sealer-and-leak-tester-buffer.duckdb", "path: elsewhere.duckdb"))
        os.kill(agent.pid, signal.SIGHUP)
        time.sleep(1)
        assert agent.poll() is None

        config.write_text(changed(original))
        r = linetap("reload", str(config), cwd=folder)
        assert r.returncode == 0 and f"pid {agent.pid}" in r.stdout, r.stdout + r.stderr
        time.sleep(7)
        err = stop_agent(agent)
        agent = None
    finally:
        if agent is not None:
            agent.kill()
        sim.stop()

    failed = log_events(err, "config reload failed: the agent keeps running on the config it has")
    assert len(failed) == 1 and any(f"{EXAMPLE}:" in e for e in failed[0]["errors"]), failed
    refused = log_events(err, "config reload refused: these settings need a restart (systemctl restart, or stop "
                              "and start linetap run); nothing was changed")
    assert len(refused) == 1 and refused[0]["settings"] == ["buffer.path"], refused

    events = exported(config, "events", tmp_path)
    changes = [e["body"] for e in events if e["body"]["kind"] == "config_changed"]
    assert len(changes) == 1, changes
    change = changes[0]
    old_version, new_version = change["old_version"], change["new_version"]
    assert old_version != new_version
    assert change["changes"]["devices"] == {"added": [], "removed": ["leaktester1"], "modified": {
        "sealer1": {"tags_added": ["seal_temperature_copy"]}}}
    assert change["changes"]["stations"]["removed"] == ["leaktester1"]
    (limit,) = change["changes"]["stations"]["modified"]["sealer1"]["limits"]
    assert (limit["parameter"], limit["spec"]) == ("seal_temperature_max", "WI-SEAL-007 rev B")
    assert (limit["old"]["low"], limit["old"]["high"], limit["new"]["low"], limit["new"]["high"]) == (
        175.0, 185.0, 10.0, 100.0)
    at = change["ts"]

    tel = samples(exported(config, "telemetry", tmp_path))
    assert [s[0] for s in tel] == list(range(1, len(tel) + 1))  # contiguous across the reload
    copies = [s for s in tel if s[2] == "seal_temperature_copy"]
    assert copies and min(s[7] for s in copies) > at
    assert all(s[7] < at for s in tel if s[1] == "leaktester1")  # the removed device stopped
    assert any(s[1] == "sealer1" and s[7] > at + 5_000_000 for s in tel)  # the other kept polling

    units = [u["body"] for u in exported(config, "units", tmp_path) if u["body"]["station"] == "sealer1"]
    before = [u for u in units if u["ended_at"] < at]
    after = [u for u in units if u["started_at"] > at]
    assert before and after, (len(before), len(after))
    for u in before:
        p = next(p for p in u["parameters"] if p["name"] == "seal_temperature_max")
        assert u["config_version"] == old_version and p["high"] == 185.0
    for u in after:  # every seal at ~180 degC is over the new 100 degC limit
        p = next(p for p in u["parameters"] if p["name"] == "seal_temperature_max")
        assert u["config_version"] == new_version and p["high"] == 100.0 and p["verdict"] == "fail", u
    ncs = [e["body"] for e in events if e["body"]["kind"] == "nonconformance" and e["body"]["ts"] > at]
    assert {nc["serial"] for nc in ncs} >= {u["serial"] for u in after}


def test_what_needs_a_restart_is_named(tmp_path):
    folder = tmp_path / "line pc-2"
    folder.mkdir()
    config = copy_example(EXAMPLE, folder, {})
    old = load_config(config)
    text = config.read_text()
    config.write_text(text.replace("id: sealing-line-2", "id: sealing-line-9").replace("port: 1883", "port: 1884"))
    refused, _ = config_changes(old, load_config(config))
    assert refused == ["agent.id", "mqtt.port"]
    config.write_text(changed(text))
    refused, changes = config_changes(old, load_config(config))
    assert refused == [] and set(changes) == {"devices", "stations"}
    config.write_text(text)
    assert config_changes(old, load_config(config)) == ([], {})


def _line(high: float, stations: bool = True):
    from test_capture import STATION, TAGS

    from linetap.config.models import LineConfig

    station = {**STATION, "parameters": [{**STATION["parameters"][0], "limits": {"low": 175, "high": high}},
                                          *STATION["parameters"][1:]]}
    return LineConfig.model_validate({
        "agent": {"id": "a", "enterprise": "e", "site": "s", "area": "a", "line": "l"},
        "devices": [{"protocol": "modbus", "name": "plc1", "host": "h", "addressing": "zero_based",
                     "tags": [{"name": t, "address": i * 4, "type": "float32"} for i, t in enumerate(TAGS)]}],
        "stations": [station] if stations else [],
    })


def test_a_unit_in_progress_ends_under_the_config_it_started_with():
    from test_capture import poll

    from linetap.agent.capture import CaptureEngine, config_version

    old, new = _line(185), _line(179)
    engine = CaptureEngine(old)
    for b in (poll(0, False), poll(1, True, serial="SN-1"), poll(1.5, True, serial="SN-1")):
        engine.feed(b)
    assert engine.reconfigure(new, 1_600_000) == ([], [])  # mid-unit: nothing closed
    units, _ = engine.feed(poll(2, False, serial="SN-1"))  # 180 degC: in the old band, over the new one
    for b in (poll(3, True, serial="SN-2"), poll(3.5, True, serial="SN-2")):
        engine.feed(b)
    later, _ = engine.feed(poll(4, False, serial="SN-2"))
    (first,), (second,) = units, later
    p1, p2 = (next(p for p in u["parameters"] if p["name"] == "temp_max") for u in (first, second))
    assert (first["config_version"], p1["high"], p1["verdict"]) == (config_version(old), 185, "pass")
    assert (second["config_version"], p2["high"], p2["verdict"]) == (config_version(new), 179, "fail")


def test_a_station_removed_mid_unit_closes_it_incomplete():
    from test_capture import poll

    from linetap.agent.capture import CaptureEngine

    engine = CaptureEngine(_line(185))
    for b in (poll(0, False), poll(1, True, serial="SN-1")):
        engine.feed(b)
    units, events = engine.reconfigure(_line(185, stations=False), 1_500_000)
    assert [u["serial"] for u in units] == ["SN-1"] and units[0]["verdict"] == "incomplete"
    assert "removed from the config" in " ".join(units[0]["reasons"]), units[0]
    assert any(e.kind == "unit_incomplete" for e in events)
    assert engine.feed(poll(2, False)) == ([], [])


async def test_an_unchanged_device_keeps_polling_through_a_reload(tmp_path, broker):
    """In-process: a reload that changes a station's limit and adds a second device leaves the first
    device's task and connection alone (no new `device_state` for it), and its polls go on."""
    import asyncio

    from agent_helpers import line_config, modbus_device, running_agent
    from test_deadband_e2e import STATION

    from linetap.simulators import ModbusStationServer, StationModel

    station = {**STATION, "parameters": [{**STATION["parameters"][0], "limits": {"low": 175, "high": 185}},
                                         *STATION["parameters"][1:]]}
    async with ModbusStationServer(StationModel(seed=3), port=0, speed=4.0) as sim:
        cfg = line_config(tmp_path, broker, [modbus_device(sim.port, poll_interval="50ms")], stations=[station])
        tightened = {**station, "parameters": [{**station["parameters"][0], "limits": {"low": 175, "high": 176}},
                                               *station["parameters"][1:]]}
        doc = cfg.model_dump(mode="json")
        new = type(cfg).model_validate({**doc, "devices": [*doc["devices"], modbus_device(sim.port, name="sealer2")],
                                        "stations": [tightened]})
        async with running_agent(cfg) as agent:
            while agent.stats.devices["sealer1"].batches < 5:
                await asyncio.sleep(0.02)
            task, since = agent._devices["sealer1"], agent.stats.devices["sealer1"].since
            body = await agent.reloader.apply(new)
            before = agent.stats.devices["sealer1"].batches
            while agent.stats.devices["sealer1"].batches < before + 10 or agent.stats.devices.get(
                    "sealer2") is None or agent.stats.devices["sealer2"].batches < 5:
                await asyncio.sleep(0.02)
            assert agent._devices["sealer1"] is task and not task.done()
            assert agent.stats.devices["sealer1"].since == since  # no lost/connected for it
    assert body["changes"]["devices"] == {"added": ["sealer2"], "removed": [], "modified": {}}
    assert body["changes"]["stations"]["modified"]["sealer1"]["limits"][0]["new"]["high"] == 176


def test_linetap_reload_signals_only_a_running_agent(tmp_path):
    """No status file, or one whose pid is another program (a stale file after a reboot): exit 3,
    nothing signalled."""
    import orjson

    folder = tmp_path / "line pc-2"
    folder.mkdir()
    config = copy_example(EXAMPLE, folder, {})
    r = linetap("reload", str(config), cwd=folder)
    assert r.returncode == 3 and "no running agent" in r.stderr, r.stderr
    other = subprocess.Popen(["sleep", "30"])
    try:
        status = folder / "sealer-and-leak-tester-buffer.duckdb.status.json"
        status.write_bytes(orjson.dumps({"pid": other.pid}))
        r = linetap("reload", str(config), cwd=folder)
        assert r.returncode == 3 and f"pid {other.pid}" in r.stderr and "not a linetap agent" in r.stderr, r.stderr
        assert other.poll() is None  # not signalled (SIGHUP would have ended it)
    finally:
        other.kill()
        other.wait()
