"""`linetap service install|uninstall` and the agent's side of systemd: the unit of each shipped
example (in a folder with spaces) accepted by `systemd-analyze verify`; READY, watchdog pings and
STOPPING observed on a `NOTIFY_SOCKET` the test opens for a real `linetap run` with the simulator;
SIGHUP (ExecReload) leaves the agent running."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from sink_helpers import LINETAP
from test_user_path import EXAMPLES, Simulator, copy_example, linetap, stop_agent, wait_up

from linetap.agent.sd_notify import Notifier


@pytest.fixture
def line_pc(tmp_path: Path) -> Path:
    """A line PC's folder: spaces and hyphens in the path."""
    folder = tmp_path / "line pc-1" / "sealing line-1"
    folder.mkdir(parents=True)
    return folder


EXAMPLE_NAMES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


def _require_systemd() -> bool:
    return os.environ.get("LINETAP_REQUIRE_SYSTEMD", "") not in ("", "0", "false", "no")


@pytest.fixture
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if _require_systemd():
            pytest.fail("LINETAP_REQUIRE_SYSTEMD=1 but systemd-analyze is not installed (apt install systemd)")
        pytest.skip("systemd-analyze not installed (apt install systemd): the unit is not verified here")
    return found


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_the_unit_of_each_example_verifies(example, line_pc, tmp_path, systemd_analyze):
    config = copy_example(example, line_pc, {})
    r = linetap("service", "install", str(config), "--print", cwd=line_pc)
    assert r.returncode == 0, r.stderr
    unit = r.stdout
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["Type"] == "notify" and settings["Restart"] == "always" and settings["User"] == "linetap"
    assert settings["ProtectSystem"] == "strict" and settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert int(settings["WatchdogSec"]) == 30
    assert settings["ExecStart"].endswith(f'"run" "{config}"')
    units = tmp_path / "unit files"
    units.mkdir()
    (units / "linetap-test.service").write_text(unit)
    v = subprocess.run([systemd_analyze, "verify", str(units / "linetap-test.service")], capture_output=True,
                       text=True, timeout=60)
    assert v.returncode == 0 and not v.stdout.strip() and not v.stderr.strip(), v.stdout + v.stderr
    # the only writable path is the buffer's folder, as systemd reads it back (quoted: it has spaces)
    assert settings["ReadWritePaths"] == f'"{line_pc}"' and " " in str(line_pc)


def test_install_and_uninstall_write_and_remove_the_unit(line_pc, tmp_path):
    config = copy_example("heat-sealer-modbus.yaml", line_pc, {})
    units = tmp_path / "unit files"
    units.mkdir()
    r = linetap("service", "install", str(config), "--unit-dir", str(units), "--user", "sealer-agent", cwd=line_pc)
    assert r.returncode == 0, r.stderr
    unit = units / "linetap-sealing-line-1.service"
    assert "User=sealer-agent" in unit.read_text() and "systemctl enable --now linetap-sealing-line-1" in r.stdout
    r = linetap("service", "uninstall", str(config), "--unit-dir", str(units), cwd=line_pc)
    assert r.returncode == 0 and not unit.exists(), r.stderr
    r = linetap("service", "uninstall", str(config), "--unit-dir", str(units), cwd=line_pc)
    assert r.returncode == 3 and "nothing to remove" in r.stderr
    r = linetap("service", "install", str(config), "--unit-dir", str(tmp_path / "no such folder"), cwd=line_pc)
    assert r.returncode == 3 and "cannot write" in r.stderr


def test_a_bad_config_is_refused_before_any_unit(line_pc):
    bad = line_pc / "broken-line.yaml"
    bad.write_text("agent:\n  id: x\nmqtt: [\n")
    r = linetap("service", "install", str(bad), "--print", cwd=line_pc)
    assert r.returncode == 2 and "broken-line.yaml:" in r.stderr and not r.stdout


def test_notifier_outside_systemd_does_nothing() -> None:
    n = Notifier({})
    assert n.address is None and n.watchdog_interval is None
    n.ready("x")  # no socket: nothing sent, nothing raised
    assert Notifier({"NOTIFY_SOCKET": "@linetap-test", "WATCHDOG_USEC": "2000000"}).address == "\0linetap-test"
    assert Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000"}).watchdog_interval == 1.0
    assert Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
                    ).watchdog_interval is None  # the watchdog is some other process's


@pytest.mark.timeout(90)
def test_ready_watchdog_and_stopping_on_the_notify_socket(line_pc, broker):
    short = Path(tempfile.mkdtemp(prefix="lt-"))  # AF_UNIX paths are at most 107 bytes
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(short / "notify"))
    sock.settimeout(0.2)
    sim = Simulator("modbus")
    agent = None
    messages: list[tuple[float, str]] = []

    def receive(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                messages.append((time.monotonic(), sock.recv(4096).decode()))
            except TimeoutError:
                pass

    try:
        config = copy_example("heat-sealer-modbus.yaml", line_pc,
                              {"port: 1883": f"port: {broker.port}", "port: 5020": f"port: {sim.port}"})
        env = {**os.environ, "NOTIFY_SOCKET": str(short / "notify"), "WATCHDOG_USEC": "400000"}
        agent = subprocess.Popen([LINETAP, "run", str(config)], cwd=line_pc, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wait_up(line_pc / "heat-sealer-buffer.duckdb", agent)
        receive(2.0)
        agent.send_signal(signal.SIGHUP)  # systemd's ExecReload
        receive(1.0)
        assert agent.poll() is None, "the agent died on SIGHUP"
        err = stop_agent(agent)
        agent = None
        receive(0.5)
    finally:
        if agent is not None:
            agent.kill()
        sim.stop()
        sock.close()
        shutil.rmtree(short, ignore_errors=True)
    texts = [m for _, m in messages]
    ready = next(i for i, m in enumerate(texts) if "READY=1" in m.splitlines())
    assert "STATUS=collecting" in texts[ready] and any(f.startswith("MAINPID=") for f in texts[ready].splitlines())
    pings = [t for t, m in messages[ready:] if m == "WATCHDOG=1"]
    assert len(pings) >= 8, texts  # every 0.2 s for 3 s
    assert max(b - a for a, b in zip(pings, pings[1:], strict=False)) < 1.0
    assert "STOPPING=1" in texts[-1].splitlines(), texts[-3:]
    assert "config reload requested" in err and "config reload: nothing to change" in err, err[-3000:]
