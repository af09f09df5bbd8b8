"""`linetap status`: what is in the buffer and how far the forwarder got."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import typer

from linetap.config.models import LineConfig
from linetap.drivers.samples import now_us


def _age(us: int | None) -> str:
    if us is None:
        return "-"
    seconds = max(0.0, (now_us() - us) / 1e6)
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _from_buffer(cfg: LineConfig) -> dict[str, Any]:
    import dataclasses

    from linetap.agent.runtime import SINK
    from linetap.buffers import DuckDBBuffer

    buf = DuckDBBuffer(cfg.buffer.path, cfg.agent.id)
    try:
        buf.check()  # a full read: damage that opening does not touch is found here, not by the next run
        return {
            "streams": [dataclasses.asdict(s) for s in buf.stats(SINK)],
            "file_size": buf.file_size(),
            "gaps": buf.gaps(),
        }
    finally:
        buf.close()


def print_status(cfg: LineConfig) -> int:
    from linetap.agent.status_file import status_path
    from linetap.buffers import BufferError

    status_file = status_path(cfg)
    doc: dict[str, Any] | None = None
    if status_file.exists():
        doc = orjson.loads(status_file.read_bytes())
        if not _pid_alive(doc.get("pid", -1)):
            doc = None
    if doc is not None:
        source = f"running agent (pid {doc['pid']}, status written {_age(doc['written_at'])} ago)"
    else:
        path = Path(cfg.buffer.path)
        blocked = any(p.exists() and not p.is_dir() for p in path.parents)  # a file where a folder must be
        if not path.exists() and not blocked:
            typer.echo(f"no buffer at {cfg.buffer.path}: the agent has not run with this config yet")
            return 1
        try:
            doc = _from_buffer(cfg)
        except BufferError as err:
            typer.echo(f"linetap: {err}", err=True)
            return 3
        source = "buffer file (agent not running)"
    typer.echo(f"agent {cfg.agent.id}  buffer {cfg.buffer.path}  {doc['file_size'] / 1e6:.1f} MB  [{source}]")
    typer.echo(f"{'stream':<10} {'last seq':>12} {'cursor':>12} {'unsent':>10} {'oldest unsent':>14}")
    for s in doc["streams"]:
        typer.echo(f"{s['stream']:<10} {s['last_seq']:>12} {s['cursor']:>12} {s['pending']:>10} "
                   f"{_age(s['oldest_pending_at']):>14}")
    gap_events, dropped = doc.get("gaps") or (0, 0)
    if gap_events:
        typer.echo(f"gaps: {gap_events} gap event(s), {dropped} telemetry samples dropped at the size cap "
                   f"({cfg.buffer.max_size / 1e6:.0f} MB)")
    for name, dev in (doc.get("devices") or {}).items():
        reason = f" ({dev['reason']})" if dev.get("reason") else ""
        counts = "".join(f", {v} {k.replace('_', ' ')}" for k, v in (dev.get("counters") or {}).items() if v)
        typer.echo(f"device {name}: {dev['state']}{reason}, {dev['samples']} samples since start{counts}")
    mqtt = doc.get("mqtt")
    if mqtt:
        typer.echo(f"mqtt: {'connected' if mqtt.get('connected') else 'NOT connected'}, "
                   f"{mqtt.get('messages_sent', 0)} messages sent")
    return 0
