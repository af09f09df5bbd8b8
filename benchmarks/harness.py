"""The bench's side of every run: its child processes, the agent's status file, the result record.

Broker, /proc readings and the counting subscriber are in `common.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import Subscriber

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
AGENT_ID = "bench-line"
TOPIC_ROOT = "acme/bench/area/line"


@dataclass
class Result:
    kind: str
    name: str
    values: dict[str, Any] = field(default_factory=dict)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Child:
    """A child process that prints one JSON line when ready."""

    def __init__(self, args: list[str], log: Path, wrap: list[str] | None = None) -> None:
        self.log = log
        self._log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([*(wrap or []), PY, "-m", "benchmarks.procs", *args], cwd=ROOT, env=_env(),
                                     stdout=subprocess.PIPE, stderr=self._log)
        self.info: dict[str, Any] = {}
        self.wrapped = bool(wrap)
        self.hung = False
        self._pid: int | None = None

    def ready(self, timeout: float = 30.0) -> dict[str, Any]:
        line: list[bytes] = []
        t = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not line or not line[0]:
            self.kill()
            raise RuntimeError(f"child {self.proc.args} not ready: {self.log.read_text(errors='replace')[-2000:]}")
        self.info = json.loads(line[0])
        return self.info

    @property
    def pid(self) -> int:
        """The Python process (under py-spy: py-spy's child)."""
        if not self.wrapped:
            return self.proc.pid
        if self._pid is not None:
            return self._pid
        for _ in range(100):
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                    kids = (task / "children").read_text().split()
                    if kids:
                        self._pid = int(kids[0])
                        return self._pid
            time.sleep(0.05)
        raise RuntimeError("py-spy child not found")

    def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait. A child that does not stop gets SIGUSR1 (the agent dumps its asyncio
        tasks to its log), then SIGKILL; `hung` says so. Under py-spy only the Python child is killed,
        so py-spy still writes its profile."""
        if self.proc.poll() is None:
            pid = self.pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.hung = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR1)
                    time.sleep(1.0)
                    os.kill(pid, signal.SIGKILL)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.kill()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def read_status(cfg: dict[str, Any]) -> dict[str, Any] | None:
    path = Path(cfg["buffer"]["path"] + ".status.json")
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return None


def start_agent(wd: Path, sub: Subscriber, wrap: list[str] | None = None, timeout: float = 30.0
                ) -> tuple[Child, float]:
    """The agent child on `wd/config.json`, once its first telemetry reached the subscriber;
    and how long that took (s)."""
    agent = Child(["agent", str(wd / "config.json"), "--result", str(wd / "agent.json")], wd / "agent.log", wrap=wrap)
    t_spawn = time.monotonic()
    while sub.samples() == 0:
        if time.monotonic() - t_spawn > timeout or agent.proc.poll() is not None:
            agent.terminate()
            raise RuntimeError(f"no telemetry at the subscriber: {(wd / 'agent.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return agent, time.monotonic() - t_spawn


def status_rates(st0: dict[str, Any] | None, st1: dict[str, Any] | None) -> dict[str, Any]:
    """From two agent status files: samples the drivers read per s, the telemetry backlog at the
    end and its growth per s, the device states at the end ({} without two readings)."""
    if not (st0 and st1 and st1["written_at"] > st0["written_at"]):
        return {}
    dt = (st1["written_at"] - st0["written_at"]) / 1e6
    read0 = sum(d["samples"] for d in st0["devices"].values())
    read1 = sum(d["samples"] for d in st1["devices"].values())
    pend = {s["stream"]: s["pending"] for s in st1["streams"]}
    pend0 = {s["stream"]: s["pending"] for s in st0["streams"]}
    return {"read": (read1 - read0) / dt, "backlog_end": pend.get("telemetry"),
            "backlog_growth": (pend.get("telemetry", 0) - pend0.get("telemetry", 0)) / dt,
            "device_states": sorted({d["state"] for d in st1["devices"].values()})}


def pyspy_wrap(out: Path) -> list[str]:
    """The command prefix that starts a child under py-spy (raw collapsed stacks into `out`)."""
    return [str(Path(PY).parent / "py-spy"), "record", "--nonblocking", "--threads", "--rate", "200",
            "--format", "raw", "--output", str(out), "--"]


def pyspy_attach(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    """py-spy record of a running process for `seconds` (raw collapsed stacks into `out`)."""
    return subprocess.Popen([str(Path(PY).parent / "py-spy"), "record", "--pid", str(pid), "--nonblocking",
                             "--threads", "--rate", "200", "--duration", str(max(1, int(seconds))), "--format", "raw",
                             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
