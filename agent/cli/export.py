"""`linetap export`: a range of one stream from the buffer, as JSON Lines, CSV or Parquet.

JSON Lines uses the MQTT payload envelopes, so `linetap verify` checks an export exactly as it
checks a capture of the MQTT stream. CSV and Parquet are the buffer's own rows.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import typer

from linetap.agent.encoders import encoder_for, telemetry_messages
from linetap.buffers import DuckDBBuffer
from linetap.buffers.records import StoredRecord
from linetap.config.models import LineConfig

from .common import EXIT_RUNTIME, app, describe_os_error, load_or_exit

CHUNK = 50_000


def export(cfg: LineConfig, stream: str, fmt: str, output: Path | None, *, from_seq: int | None = None,
           to_seq: int | None = None, since_us: int | None = None, until_us: int | None = None) -> int:
    """Write the selected rows; returns how many."""
    buf = DuckDBBuffer(cfg.buffer.path, cfg.agent.id)
    try:
        query, params = buf.export_query(stream, from_seq, to_seq, since_us, until_us)
        if fmt in ("csv", "parquet"):
            if output is None:
                raise ValueError(f"--output is needed for {fmt}")
            return buf.write_file(query, params, output, fmt)
        out = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
        try:
            return _jsonl(buf, cfg, stream, query, params, out)
        finally:
            if output:
                out.close()
    finally:
        buf.close()


def iter_messages(buf: DuckDBBuffer, cfg: LineConfig, stream: str, query: str, params: list, sent_at: int,
                  chunk: int = CHUNK) -> Iterator[tuple[list[tuple[str, bytes]], int]]:
    """The rows a query selects, as MQTT messages built exactly as the forwarder builds them:
    per chunk of rows, ([(topic, payload), ...], rows in the chunk).

    Chunks are seq ranges that end on a multiple of the telemetry batch (or at the last row),
    as the forwarder's reads do, so a telemetry message is never cut at a chunk edge: the same
    ids and content as the forwarder's messages (`json_envelope.message_spans`)."""
    encoder = encoder_for(cfg)
    batch = cfg.mqtt.telemetry_batch if stream == "telemetry" else 1
    size = max(chunk, batch)
    # the selection without its ORDER BY: sorting the whole range inside each subquery would not fit
    # the buffer's memory limit; every chunk is a bounded seq range, sorted on its own
    query = query.removesuffix(" ORDER BY seq")
    last = buf.query_arrow(f"SELECT max(seq) AS last FROM ({query})", params).column("last")[0].as_py()
    after = 0
    while last is not None and after < last:
        end = (after + size) // batch * batch
        table = buf.query_arrow(f"SELECT * FROM ({query}) WHERE seq > ? AND seq <= ? ORDER BY seq",
                                [*params, after, end])
        if table.num_rows == 0:  # deleted rows, or rows the query leaves out: on to the next one
            after = buf.query_arrow(f"SELECT min(seq) - 1 AS after FROM ({query}) WHERE seq > ?",
                                    [*params, after]).column("after")[0].as_py()
            continue
        after = end
        if stream == "telemetry":
            messages = [(topic, payload) for topic, _first, _last, payload in
                        telemetry_messages(encoder, table, sent_at)]
        else:
            messages = []
            for row in table.to_pylist():
                rec = StoredRecord(stream, row["seq"], row["id"], row["recorded_at"], orjson.loads(row["body"]),
                                   row["prev_hash"], row["hash"])
                messages.append(encoder.record(rec, sent_at))
        yield messages, table.num_rows


def _jsonl(buf: DuckDBBuffer, cfg: LineConfig, stream: str, query: str, params: list, out) -> int:
    count = 0
    for messages, rows in iter_messages(buf, cfg, stream, query, params, sent_at=0):
        out.writelines(payload + b"\n" for _topic, payload in messages)
        count += rows
    return count


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

def _writable_output(output: Path) -> None:
    if output.is_dir():
        raise typer.BadParameter(f"{output} is a folder: give a file name", param_hint="--output")
    parent = output.parent
    if parent.exists() and not parent.is_dir():
        raise typer.BadParameter(f"{parent} is a file, not a folder", param_hint="--output")
    if not parent.exists():
        raise typer.BadParameter(f"the folder {parent} does not exist", param_hint="--output")


def _iso_to_us(value: str | None, option: str) -> int | None:
    if value is None:
        return None
    from datetime import UTC, datetime

    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO date/time (e.g. 2026-11-24T08:00:00Z)",
                                 param_hint=option) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


@app.command("export")
def export_command(
    config: Path = typer.Argument(..., help="line config (YAML)"),
    stream: str = typer.Option(..., help="telemetry, units or events"),
    format: str = typer.Option("jsonl", "--format", help="jsonl (MQTT envelopes), csv or parquet"),
    output: Path | None = typer.Option(None, "--output", "-o", help="file to write (jsonl: default stdout)"),
    from_seq: int | None = typer.Option(None, help="first seq"),
    to_seq: int | None = typer.Option(None, help="last seq"),
    since: str | None = typer.Option(None, help="from this time (ISO 8601; UTC if no zone)"),
    until: str | None = typer.Option(None, help="before this time (ISO 8601)"),
) -> None:
    """Export a range of one stream from the buffer (stop the agent first: the buffer is locked while it runs)."""
    from linetap.buffers import BufferError

    if stream not in ("telemetry", "units", "events"):
        raise typer.BadParameter("expected telemetry, units or events", param_hint="--stream")
    if format not in ("jsonl", "csv", "parquet"):
        raise typer.BadParameter("expected jsonl, csv or parquet", param_hint="--format")
    if output is not None:
        _writable_output(output)
    cfg = load_or_exit(config)
    try:
        n = export(cfg, stream, format, output, from_seq=from_seq, to_seq=to_seq,
                      since_us=_iso_to_us(since, "--since"), until_us=_iso_to_us(until, "--until"))
    except (BufferError, ValueError) as err:
        typer.echo(f"linetap: {err}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None
    except OSError as err:
        typer.echo(f"linetap export: cannot write {output or 'the output'}: {describe_os_error(err)}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None
    typer.echo(f"exported {n} {stream} rows" + (f" to {output}" if output else ""), err=True)
