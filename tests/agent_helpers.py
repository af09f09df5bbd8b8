"""Helpers for tests that run the whole agent in-process: config building and a running agent."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import orjson

from linetap.agent.runtime import Agent
from linetap.config.models import LineConfig
from linetap.simulators import KNOWN_VALUES, STATION_TAGS

AGENT_ID = "test-line1"
TOPIC_ROOT = "acme/cork/packaging/line1"


def modbus_device(port: int, name: str = "sealer1", tags: list[dict[str, Any]] | None = None,
                  poll_interval: str = "100ms", **extra: Any) -> dict[str, Any]:
    return {
        "protocol": "modbus", "name": name, "host": "127.0.0.1", "port": port, "unit_id": 1,
        "addressing": "zero_based", "poll_interval": poll_interval, "timeout": "500ms",
        "tags": tags if tags is not None else STATION_TAGS, **extra,
    }


def known_value_tags() -> list[dict[str, Any]]:
    return [fields for fields, _ in KNOWN_VALUES]


def line_config(tmp_path: Path, broker, devices: list[dict[str, Any]], **sections: Any) -> LineConfig:
    doc: dict[str, Any] = {
        "agent": {"id": AGENT_ID, "enterprise": "acme", "site": "cork", "area": "packaging", "line": "line1"},
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min": "100ms", "reconnect_max": "1s",
                 "keepalive": "5s"},
        "buffer": {"path": str(tmp_path / "buffer.duckdb"), "flush_interval": "50ms"},
        "logging": {"format": "console", "level": "warning"},
        "reconnect": {"min": "100ms", "max": "500ms"},
        "devices": devices,
    }
    for key, value in sections.items():
        doc[key] = {**doc[key], **value} if isinstance(doc.get(key), dict) and isinstance(value, dict) else value
    return LineConfig.model_validate(doc)


@contextlib.asynccontextmanager
async def running_agent(cfg: LineConfig):
    """The agent running in this event loop; stopped (cleanly, with its flush) on exit."""
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.ready.wait(), 10)
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def payloads(msgs, suffix: str) -> list[dict[str, Any]]:
    return [orjson.loads(m.payload) for m in msgs if m.topic.endswith(suffix)]


def telemetry_samples(msgs) -> list[dict[str, Any]]:
    """Every sample delivered, flattened, with its seq (duplicates kept)."""
    out = []
    for doc in payloads(msgs, "/telemetry"):
        s = doc["samples"]
        for i in range(doc["count"]):
            out.append({"seq": doc["seq"] + i, "device": doc["device"], "tag": s["tag"][i], "value": s["value"][i],
                        "quality": s["quality"][i], "reason": s["reason"][i], "id": doc["id"]})
    return out


def start_simulator_process(*args: str):
    """`linetap simulate modbus --port 0 ARGS` in a subprocess: (process, bound port)."""
    import re
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "linetap.agent.cli", "simulate", "modbus", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if m := re.search(r'endpoint"?[=:] ?"?[\w.]+:(\d+)', line):
            return proc, int(m.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("simulator did not report its port")
