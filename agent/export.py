"""`linetap export`: a range of one stream from the buffer, as JSON Lines, CSV or Parquet.

JSON Lines uses the MQTT payload envelopes, so `linetap verify` checks an export exactly as it
checks a capture of the MQTT stream. CSV and Parquet are the buffer's own rows.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import orjson

from linetap.agent.payload import Topics, encode_record, iter_telemetry_messages
from linetap.buffers import DuckDBBuffer
from linetap.buffers.records import StoredRecord
from linetap.config.models import LineConfig

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
    ids and content as the forwarder's messages (`payload.message_spans`)."""
    agent = cfg.agent.id
    topics = Topics.from_config(cfg)
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
                        iter_telemetry_messages(agent, table, batch, topics, sent_at=sent_at)]
        else:
            messages = []
            for row in table.to_pylist():
                rec = StoredRecord(stream, row["seq"], row["id"], row["recorded_at"], orjson.loads(row["body"]),
                                   row["prev_hash"], row["hash"])
                messages.append((topics.record(rec), encode_record(agent, rec, sent_at=sent_at)))
        yield messages, table.num_rows


def _jsonl(buf: DuckDBBuffer, cfg: LineConfig, stream: str, query: str, params: list, out) -> int:
    count = 0
    for messages, rows in iter_messages(buf, cfg, stream, query, params, sent_at=0):
        out.writelines(payload + b"\n" for _topic, payload in messages)
        count += rows
    return count
