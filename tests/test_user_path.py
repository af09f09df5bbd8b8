"""What users run, run the way they run it: the installed `linetap` console script in subprocesses.

Every command the README shows that can run on one machine is exercised by some test:
- `python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/linetap demo` (Quick start 1):
  `.ci/run` runs it as written after the tests (`--duration 15`); `tests/test_demo_cli.py` runs
  `linetap demo` through the console script.
- `... pip install -q -e '.[test]' && .venv/bin/pytest` (Quick start 2): this suite, run by `.ci/run`;
  `pip install -e '.[dev]'` and `ruff check .` (Development): `.ci/run` after the tests.
- `linetap validate`, `run`, `status`, `export --stream units|events` (jsonl), `verify`,
  `simulate modbus|opcua`: `test_shipped_example_runs_as_shipped` (both runnable examples).
- `export --format csv|parquet`, `replay`: `test_buffer_file_names_work_everywhere` (csv, parquet),
  `tests/test_verify_export.py` (replay, jsonl).
- `linetap schema`: `tests/test_config_cli.py`; `linetap browse`: `tests/test_opcua_browse.py`;
  `linetap certs create`: `tests/test_opcua_security.py`.
`config/examples/line-reference.yaml` describes a plant (TLS broker, PLC addresses on the plant
network): it is validated as shipped here, not run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import pytest

LINETAP = str(Path(sys.executable).with_name("linetap"))
EXAMPLES = Path(str(resources.files("linetap.config") / "examples"))


def linetap(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run([LINETAP, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in r.stdout + r.stderr, f"linetap {' '.join(args)} printed a traceback:\n{r.stderr}"
    return r


class Simulator:
    """`linetap simulate modbus|opcua --port 0` in a subprocess; `.port` is the port it bound."""

    def __init__(self, kind: str, *args: str) -> None:
        self.proc = subprocess.Popen([LINETAP, "simulate", kind, "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 20
        self.port = 0
        while time.monotonic() < deadline and not self.port:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            if m := re.search(r'"(?:endpoint|port)": "?(?:opc\.tcp://)?(?:[\d.]+:)?(\d+)', line):
                self.port = int(m.group(1))
        if not self.port:
            self.proc.kill()
            raise AssertionError(f"`linetap simulate {kind}` did not report its port")
        # keep reading, so the simulator never blocks on a full pipe
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def line_pc(tmp_path: Path) -> Path:
    """A folder like a user's: spaces and hyphens in the path."""
    folder = tmp_path / "line pc-1" / "sealing line-1"
    folder.mkdir(parents=True)
    return folder


def copy_example(name: str, folder: Path, replacements: dict[str, str], repeated: tuple[str, ...] = ()) -> Path:
    """The shipped example, unchanged except for the ports (each replaced exactly once; those in
    `repeated` at least once, e.g. a port two devices share)."""
    text = (EXAMPLES / name).read_text()
    for old, new in replacements.items():
        n = text.count(old)
        assert n == 1 or (n > 1 and old in repeated), f"{name}: expected one {old!r}, found {n}"
        text = text.replace(old, new)
    path = folder / name
    path.write_text(text)
    return path


def wait_up(buffer: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Until the running agent has written its status file (it is past its start-up)."""
    status = buffer.with_name(buffer.name + ".status.json")
    deadline = time.monotonic() + timeout
    while not status.exists():
        if proc.poll() is not None:
            raise AssertionError(f"linetap run exited {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"no status file {status} after {timeout:g}s"
        time.sleep(0.1)


def stop_agent(proc: subprocess.Popen, what: str = "linetap run") -> str:
    """SIGTERM, as systemd or Ctrl-C would: the agent must stop cleanly, exit 0, no traceback.
    Returns what it wrote to stderr (its log)."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, f"{what} exited {proc.returncode} on SIGTERM:\n{err[-3000:]}"
    assert "Traceback" not in out + err, err[-3000:]
    return err


def run_for(config: Path, buffer: Path, seconds: float, cwd: Path) -> None:
    """`linetap run CONFIG` for `seconds` after its start-up, then SIGTERM."""
    proc = subprocess.Popen([LINETAP, "run", str(config)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_up(buffer, proc)
        time.sleep(seconds)
    finally:
        stop_agent(proc)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("example", ["heat-sealer-modbus.yaml", "heat-sealer-opcua.yaml",
                                     "sealer-and-leak-tester-modbus.yaml"])
def test_shipped_example_runs_as_shipped(example, line_pc, broker):
    """Copy the example as shipped (only the ports changed), with its simulator: validate, run,
    SIGTERM, status, export and verify, the way the example's own header tells a user to."""
    kind = "opcua" if "opcua" in example else "modbus"
    sim = Simulator(kind)
    try:
        plc = {"opcua": ("opc.tcp://127.0.0.1:4840", f"opc.tcp://127.0.0.1:{sim.port}"),
               "modbus": ("port: 5020", f"port: {sim.port}")}[kind]
        config = copy_example(example, line_pc, {"port: 1883": f"port: {broker.port}", plc[0]: plc[1]},
                              repeated=(plc[0],))
        # the user's shell is in the folder above: relative paths in the file are the file's own
        cwd = line_pc.parent
        rel = config.relative_to(cwd)

        r = linetap("validate", str(rel), cwd=cwd)
        assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr

        buffer_name = re.search(r"^\s*path: (\S+)", config.read_text(), re.M).group(1)
        run_for(rel, line_pc / buffer_name, 15, cwd)
    finally:
        sim.stop()

    assert (line_pc / buffer_name).is_file(), "the buffer is kept beside the config file, as the example says"
    assert not list(line_pc.rglob("*.corrupt-*")), "a healthy buffer is never copied aside as damaged"

    r = linetap("status", str(rel), cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "units" in r.stdout and "events" in r.stdout, r.stdout

    captured = {}
    for stream in ("units", "events"):
        out = line_pc / f"{stream} export.jsonl"
        r = linetap("export", str(rel), "--stream", stream, "--output", str(out), cwd=cwd)
        assert r.returncode == 0, r.stderr
        captured[stream] = jsonl(out)
    units = captured["units"]
    assert len(units) >= 2, f"15 s of a 2 s cycle gave {len(units)} unit records"
    assert all(u["body"]["serial"] for u in units)
    # every station of the file recorded units (the two-station example: both, from one simulator)
    stations = set(re.findall(r"^  - name: (\S+)", config.read_text(), re.M))
    assert {u["body"]["station"] for u in units} == stations, stations
    assert any(e["body"]["kind"] == "device_state" for e in captured["events"])

    r = linetap("verify", "units export.jsonl", "events export.jsonl", cwd=line_pc)
    assert r.returncode == 0, r.stdout + r.stderr


def test_reference_example_validates_as_shipped(line_pc):
    shutil.copy(EXAMPLES / "line-reference.yaml", line_pc / "line-reference.yaml")
    env_needed = set(re.findall(r"\$\{(\w+)\}", (line_pc / "line-reference.yaml").read_text()))
    env = {**os.environ, **{name: "from-the-environment" for name in env_needed}}
    r = subprocess.run([LINETAP, "validate", "line-reference.yaml"], cwd=line_pc, capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr


# Names a user may give a buffer: SQL keywords, leading digits, dots, unicode, spaces, quotes, and
# the names DuckDB itself uses for catalogs.
BUFFER_NAMES = ["demo-buffer.duckdb", "select.duckdb", "1line.duckdb", "line 3 – A/buffer.duckdb",
                "x.y.z.duckdb", "ünï-cödé.duckdb", "it's.duckdb", "linetap_records.duckdb", "system.duckdb",
                "main.duckdb"]

LINE_YAML = """\
agent: {{id: {agent}, enterprise: acme, site: cork, area: packaging, line: line1}}
mqtt: {{host: 127.0.0.1, port: {broker_port}, reconnect_min: 100ms, reconnect_max: 1s}}
buffer: {{path: "{buffer}", flush_interval: 100ms}}
logging: {{level: warning}}
devices:
  - protocol: modbus
    name: sealer1
    host: 127.0.0.1
    port: {sim_port}
    addressing: zero_based
    poll_interval: 100ms
    tags:
      - {{name: seal_temperature, address: 0, type: float32, unit: degC}}
      - {{name: unit_count, address: 6, type: uint32}}
"""


def _run_all(configs: list[Path], buffers: list[Path], seconds: float, cwd: Path) -> None:
    procs = [subprocess.Popen([LINETAP, "run", str(c)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c in configs]
    try:
        for buffer, proc in zip(buffers, procs, strict=True):
            wait_up(buffer, proc, timeout=60)
        time.sleep(seconds)
    finally:
        for c, p in zip(configs, procs, strict=True):
            stop_agent(p, f"linetap run {c.name}")


@pytest.mark.timeout(180)
def test_buffer_file_names_work_everywhere(tmp_path, broker):
    """Each name opens, writes, reopens (seqs go on) and exports in every format."""
    folder = tmp_path / "line pc-1"
    folder.mkdir()
    sim = Simulator("modbus")
    try:
        configs = []
        for i, name in enumerate(BUFFER_NAMES):
            cfg = folder / f"line-{i}.yaml"
            cfg.write_text(LINE_YAML.format(agent=f"line-{i}", broker_port=broker.port, sim_port=sim.port,
                                            buffer=name))
            configs.append(cfg)
        buffers = [folder / name for name in BUFFER_NAMES]
        _run_all(configs, buffers, 3, folder)
        first = {}
        for cfg in configs:
            out = folder / f"{cfg.stem} first.jsonl"
            r = linetap("export", cfg.name, "--stream", "telemetry", "-o", out.name, cwd=folder)
            assert r.returncode == 0, r.stderr
            first[cfg] = max(m["seq_last"] for m in jsonl(out))
        for buffer in buffers:
            buffer.with_name(buffer.name + ".status.json").unlink()
        _run_all(configs, buffers, 2, folder)  # reopen the same files
    finally:
        sim.stop()
    for cfg, name in zip(configs, BUFFER_NAMES, strict=True):
        assert (folder / name).is_file() and (folder / (name + ".records")).is_file(), name
        out = folder / f"{cfg.stem} all.jsonl"
        r = linetap("export", cfg.name, "--stream", "telemetry", "-o", out.name, cwd=folder)
        assert r.returncode == 0, r.stderr
        messages = jsonl(out)
        assert messages[0]["seq"] == 1 and max(m["seq_last"] for m in messages) > first[cfg], name
        r = linetap("verify", out.name, cwd=folder)
        assert r.returncode == 0, f"{name}: {r.stdout}"
        for fmt in ("csv", "parquet"):
            r = linetap("export", cfg.name, "--stream", "events", "--format", fmt, "-o", f"{cfg.stem}.{fmt}",
                        cwd=folder)
            assert r.returncode == 0 and (folder / f"{cfg.stem}.{fmt}").stat().st_size > 0, r.stderr
        r = linetap("status", cfg.name, cwd=folder)
        assert r.returncode == 0, r.stdout + r.stderr
    assert not list(folder.rglob("*.corrupt-*")), "no healthy buffer was called damaged"


def _line(folder: Path, buffer: str, broker_port: int = 1, sim_port: int = 1) -> Path:
    cfg = folder / "heat-sealer line.yaml"
    cfg.write_text(LINE_YAML.format(agent="line-1", broker_port=broker_port, sim_port=sim_port, buffer=buffer))
    return cfg


@pytest.mark.parametrize("case", ["folder", "under a file"])
def test_buffer_path_that_cannot_be_a_buffer_is_named_not_called_damaged(tmp_path, case):
    folder = tmp_path / "line pc-1"
    folder.mkdir()
    if case == "folder":
        (folder / "heat-sealer-buffer.duckdb").mkdir()
        buffer = "heat-sealer-buffer.duckdb"
    else:
        (folder / "notes.txt").write_text("not a folder")
        buffer = "notes.txt/heat-sealer-buffer.duckdb"
    cfg = _line(folder, buffer)
    for command in (["run", cfg.name], ["status", cfg.name], ["export", cfg.name, "--stream", "units"]):
        r = linetap(*command, cwd=folder, timeout=30)
        assert r.returncode == 3, f"{command}: {r.returncode} {r.stderr}"
        assert "heat-sealer-buffer.duckdb" in r.stderr and "damaged" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) <= 2, r.stderr
    assert not list(folder.rglob("*.corrupt-*")), "nothing is copied aside for an environment problem"


@pytest.mark.timeout(90)
def test_second_agent_on_the_same_buffer_is_told_it_is_in_use(tmp_path, broker):
    folder = tmp_path / "line pc-1"
    folder.mkdir()
    sim = Simulator("modbus")
    try:
        cfg = _line(folder, "heat-sealer-buffer.duckdb", broker.port, sim.port)
        first = subprocess.Popen([LINETAP, "run", cfg.name], cwd=folder, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while not (folder / "heat-sealer-buffer.duckdb.records").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1)
            r = linetap("run", cfg.name, cwd=folder, timeout=30)
            assert r.returncode == 3, r.stderr
            assert "in use by another process" in r.stderr and "damaged" not in r.stderr, r.stderr
            r = linetap("export", cfg.name, "--stream", "units", cwd=folder, timeout=30)
            assert r.returncode == 3 and "in use" in r.stderr, r.stderr
        finally:
            first.send_signal(signal.SIGTERM)
            first.communicate(timeout=30)
        assert first.returncode == 0
    finally:
        sim.stop()
    assert not list(folder.rglob("*.corrupt-*"))


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as root: file permissions do not stop root")
def test_unwritable_buffer_folder_is_named(tmp_path):
    folder = tmp_path / "line pc-1"
    (folder / "read only").mkdir(parents=True)
    cfg = _line(folder, "read only/heat-sealer-buffer.duckdb")
    (folder / "read only").chmod(0o555)
    try:
        r = linetap("run", cfg.name, cwd=folder, timeout=30)
    finally:
        (folder / "read only").chmod(0o755)
    assert r.returncode == 3 and "not writable" in r.stderr, r.stderr
