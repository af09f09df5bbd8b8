"""`/metrics` of a running agent, scraped over HTTP the way Prometheus does: `linetap run` of the
shipped example with `metrics.listen` added, the simulator, a private broker. The series exist
from the start and move as the line runs; a taken port leaves the agent collecting, without
metrics; a bad `listen` is FILE:LINE."""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.request

import pytest
from sink_helpers import LINETAP
from test_user_path import EXAMPLES, Simulator, copy_example, linetap, stop_agent, wait_up

from linetap.agent.metrics import QUALITIES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def with_metrics(tmp_path, broker, sim, listen: str):
    folder = tmp_path / "line pc-1"
    folder.mkdir()
    config = copy_example("heat-sealer-modbus.yaml", folder,
                          {"port: 1883": f"port: {broker.port}", "port: 5020": f"port: {sim.port}"})
    config.write_text(config.read_text() + f"\nmetrics:\n  listen: {listen}\n")
    return folder, config


@pytest.mark.timeout(120)
def test_the_series_exist_and_move(tmp_path, broker):
    sim = Simulator("modbus", "--speed", "4", "--out-of-limit", "0.5")
    port = free_port()
    agent = None
    try:
        folder, config = with_metrics(tmp_path, broker, sim, f"127.0.0.1:{port}")
        agent = subprocess.Popen([LINETAP, "run", str(config)], cwd=folder, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wait_up(folder / "heat-sealer-buffer.duckdb", agent)
        time.sleep(2.5)  # a housekeeping round has filled the buffer figures
        first = scrape(port)
        time.sleep(6)
        second = scrape(port)
        stop_agent(agent)
        agent = None
    finally:
        if agent is not None:
            agent.kill()
        sim.stop()
    dev = 'device="sealer1"'
    for name in ("linetap_device_polls_total", "linetap_device_up", "linetap_device_last_success_timestamp_seconds",
                 "linetap_device_reconnects_total", "linetap_device_poll_duration_seconds_count"):
        assert f"{name}{{{dev}}}" in first, (name, sorted(first))
    for q in QUALITIES:
        assert f'linetap_device_samples_total{{{dev},quality="{q}"}}' in first
    assert first[f"linetap_device_up{{{dev}}}"] == 1.0
    assert second[f"linetap_device_polls_total{{{dev}}}"] > first[f"linetap_device_polls_total{{{dev}}}"] + 20
    good = f'linetap_device_samples_total{{{dev},quality="good"}}'
    assert second[good] > first[good]
    assert 0 < second[f"linetap_device_poll_duration_seconds_sum{{{dev}}}"] < second[
        f"linetap_device_poll_duration_seconds_count{{{dev}}}"]  # each poll well under a second
    assert second[f"linetap_device_last_success_timestamp_seconds{{{dev}}}"] > time.time() - 30
    for stream in ("telemetry", "units", "events"):
        assert f'linetap_stream_last_seq{{stream="{stream}"}}' in second
        assert f'linetap_buffer_pending_records{{stream="{stream}"}}' in second
        assert f'linetap_buffer_oldest_unsent_age_seconds{{stream="{stream}"}}' in second
    tel = 'stream="telemetry"'
    assert second[f"linetap_stream_last_seq{{{tel}}}"] > first[f"linetap_stream_last_seq{{{tel}}}"]
    assert second[f"linetap_stream_acked_seq{{{tel}}}"] > 0
    assert second["linetap_mqtt_connected"] == 1.0
    assert second["linetap_mqtt_published_messages_total"] > first["linetap_mqtt_published_messages_total"]
    assert second["linetap_mqtt_puback_latency_seconds_count"] > 0
    assert 0 < second["linetap_mqtt_puback_latency_seconds_sum"] / second["linetap_mqtt_puback_latency_seconds_count"] < 5
    assert second['linetap_buffer_file_bytes{file="heat-sealer-buffer.duckdb"}'] > 0
    assert second["linetap_buffer_disk_free_bytes"] > 0
    units = {k: v for k, v in second.items() if k.startswith("linetap_unit_records_total{")}
    assert units and all('station="sealer1"' in k for k in units), sorted(second)
    assert sum(units.values()) >= 2
    ncs = second.get('linetap_nonconformances_total{station="sealer1"}', 0)
    assert ncs >= 1 and sum(v for k, v in units.items() if 'verdict="fail"' in k) >= 1
    # the shipped Grafana dashboard asks only for series the agent serves
    dashboard = (EXAMPLES.parent / "grafana" / "linetap-agent.json").read_text()
    served = {k.split("{")[0] for k in second}
    asked = set(re.findall(r"linetap_[a-z_]+", dashboard))
    assert len(asked) > 15 and asked <= served, sorted(asked - served)
    info = [k for k in second if k.startswith("linetap_config_info{")]
    assert len(info) == 1 and 'agent="sealing-line-1"' in info[0] and re.search(r'config_version="[^"]+"', info[0])


@pytest.mark.timeout(90)
def test_a_taken_port_leaves_the_agent_collecting(tmp_path, broker):
    sim = Simulator("modbus")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    agent = None
    try:
        folder, config = with_metrics(tmp_path, broker, sim, f"127.0.0.1:{taken.getsockname()[1]}")
        agent = subprocess.Popen([LINETAP, "run", str(config)], cwd=folder, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wait_up(folder / "heat-sealer-buffer.duckdb", agent)
        time.sleep(1.0)
        assert agent.poll() is None
        err = stop_agent(agent)
        agent = None
    finally:
        if agent is not None:
            agent.kill()
        sim.stop()
        taken.close()
    assert "metrics endpoint not started" in err and "metrics.listen" in err, err[-3000:]
    r = linetap("status", str(config), cwd=folder)
    assert r.returncode == 0 and "telemetry" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("listen", ["9464", "localhost:http", "127.0.0.1:70000"])
def test_a_bad_listen_is_file_and_line(tmp_path, listen):
    folder = tmp_path / "line pc-1"
    folder.mkdir()
    config = copy_example("heat-sealer-modbus.yaml", folder, {})
    config.write_text(config.read_text() + f"\nmetrics:\n  listen: \"{listen}\"\n")
    line = len(config.read_text().splitlines())
    r = linetap("validate", str(config), cwd=folder)
    assert r.returncode == 2 and f"heat-sealer-modbus.yaml:{line}" in r.stderr and "HOST:PORT" in r.stderr, r.stderr
