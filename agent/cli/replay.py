"""`linetap replay`: re-send a range of one stream to the broker, on request from the MES.

The messages are built from the buffer's rows exactly as the forwarder builds them (same ids,
same content; only `sent_at` differs), published at QoS 1 and confirmed one by one. The agent's
own cursor is not touched. Run it while the agent is stopped (the buffer file is locked while
the agent runs).
"""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import structlog
import typer

from linetap.agent.cli.export import iter_messages
from linetap.agent.mqtt_client import mqtt_client
from linetap.buffers import DuckDBBuffer
from linetap.config.models import LineConfig
from linetap.drivers.samples import now_us

from .common import EXIT_RUNTIME, app, load_or_exit

log = structlog.get_logger("linetap.replay")


def replay(cfg: LineConfig, stream: str, from_seq: int, to_seq: int | None = None, timeout: float = 30.0) -> int:
    """Publish rows from_seq..to_seq of `stream`; returns the number of records sent."""
    buf = DuckDBBuffer(cfg.buffer.path, cfg.agent.id)
    client = mqtt_client(cfg.mqtt, f"linetap-replay-{cfg.agent.id}", window=cfg.mqtt.max_inflight)
    try:
        client.connect(cfg.mqtt.host, cfg.mqtt.port, keepalive=int(cfg.mqtt.keepalive))
        client.loop_start()
        query, params = buf.export_query(stream, from_seq, to_seq)
        sent = 0
        for messages, rows in iter_messages(buf, cfg, stream, query, params, sent_at=now_us()):
            pending = [client.publish(topic, payload, qos=1) for topic, payload in messages]
            deadline = time.monotonic() + timeout
            for info in pending:
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    raise RuntimeError(f"publish refused by the client: {mqtt.error_string(info.rc)}")
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
                if not info.is_published():
                    raise TimeoutError(f"the broker did not acknowledge within {timeout:g}s")
            sent += rows
        log.info("replay done", stream=stream, from_seq=from_seq, to_seq=to_seq, records=sent)
        return sent
    finally:
        client.disconnect()
        client.loop_stop()
        buf.close()


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

@app.command("replay")
def replay_command(
    config: Path = typer.Argument(..., help="line config (YAML)"),
    stream: str = typer.Option(..., help="telemetry, units or events"),
    from_seq: int = typer.Option(..., help="first seq to re-send"),
    to_seq: int | None = typer.Option(None, help="last seq to re-send (default: the last one)"),
) -> None:
    """Re-send a range of one stream to the broker (same ids), e.g. when the MES asks for it. Stop the agent first."""
    from linetap.buffers import BufferError

    if stream not in ("telemetry", "units", "events"):
        raise typer.BadParameter("expected telemetry, units or events", param_hint="--stream")
    cfg = load_or_exit(config)
    try:
        n = replay(cfg, stream, from_seq, to_seq)
    except (BufferError, OSError, RuntimeError, TimeoutError) as err:
        typer.echo(f"linetap: replay failed: {err}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None
    typer.echo(f"re-sent {n} {stream} records from seq {from_seq}")
