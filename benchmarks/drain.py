"""Buffer append (DuckDBBuffer.append of Arrow batches) and the backlog drain (MQTTForwarder +
AsyncBuffer alone over a pre-filled buffer -> subscriber)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .common import Mosquitto, ProcWatch, Subscriber
from .harness import AGENT_ID, TOPIC_ROOT, Child, Result
from .modbus_e2e import line_config


def _telemetry_tables(rows: int, devices: int = 4, tags: int = 1000, variants: int = 4):
    import numpy as np
    import pyarrow as pa

    from linetap.drivers.samples import TELEMETRY_SCHEMA, now_us

    out = []
    per = rows // devices
    idx = np.arange(per) % tags
    tag_names = pa.array([f"load_{i:04d}" for i in range(tags)]).take(pa.array(idx))
    for k in range(variants):
        t0 = now_us()
        cols = {"device": [], "tag": [], "num": [], "agent_ts": []}
        for d in range(devices):
            cols["device"].append(pa.repeat(pa.scalar(f"dev{d}", pa.string()), per))
            cols["tag"].append(tag_names)
            poll = np.arange(per) // tags
            cols["num"].append(pa.array(idx + np.sin(k + poll * 0.1 + idx / 10)))
            cols["agent_ts"].append(pa.array(t0 + poll * 100_000, pa.int64()))
        n = per * devices
        out.append(pa.Table.from_arrays([
            pa.concat_arrays(cols["device"]), pa.concat_arrays(cols["tag"]), pa.concat_arrays(cols["num"]),
            pa.nulls(n, pa.string()), pa.array(np.zeros(n, dtype=np.uint8)), pa.nulls(n, pa.string()),
            pa.nulls(n, pa.int64()), pa.concat_arrays(cols["agent_ts"]), pa.array(np.zeros(n, dtype=np.uint8)),
        ], schema=TELEMETRY_SCHEMA))
    return out


def fill_buffer(path: Path, total: int, batch: int = 50_000) -> Result:
    """DuckDBBuffer.append of Arrow batches of `batch` rows (the agent's early-commit size)."""
    from linetap.buffers.duckdb_buffer import DuckDBBuffer

    tables = _telemetry_tables(batch)
    buf = DuckDBBuffer(path, AGENT_ID)
    appended = 0
    t0 = time.perf_counter()
    k = 0
    while appended < total:
        table = tables[k % len(tables)]
        if total - appended < table.num_rows:
            table = table.slice(0, total - appended)
        buf.append(table)
        appended += table.num_rows
        k += 1
    t_append = time.perf_counter() - t0
    before_ckpt = buf.file_size()
    t1 = time.perf_counter()
    buf.close()  # CHECKPOINT
    t_close = time.perf_counter() - t1
    size = path.stat().st_size
    wal = path.with_name(path.name + ".wal")
    size += wal.stat().st_size if wal.exists() else 0
    return Result("append", f"{total:,} rows", {
        "rows": total, "batch": batch, "append_rate": total / t_append, "checkpoint_s": t_close,
        "bytes_per_m_before_ckpt": before_ckpt / total * 1e6, "bytes_per_m": size / total * 1e6,
        "file_bytes": size})


def run_drain(rows: int, work: Path, timeout: float, log=print) -> list[Result]:
    wd = work / f"drain-{rows}"
    wd.mkdir(parents=True, exist_ok=True)
    path = wd / "buffer.duckdb"
    append = fill_buffer(path, rows)
    broker = Mosquitto(wd / "broker").start()
    sub = Subscriber(broker.host, broker.port, TOPIC_ROOT, watch_tag=None).start()
    cfg = line_config(wd, broker, [1], 4, 0, 100, stations=False)  # devices only name the topics
    (wd / "config.json").write_text(json.dumps(cfg))
    drain = Child(["drain", str(wd / "config.json"), "--result", str(wd / "drain.json")], wd / "drain.log")
    res = Result("drain", f"{rows:,} rows")
    try:
        t_spawn = time.monotonic()
        drain.ready(60)
        t_ready = time.monotonic()
        watch = ProcWatch({"drain": [drain.pid], "broker": [broker.pid], "bench": [os.getpid()]}, 0.2).start()
        t_first = None
        while True:
            n = sub.samples()
            if t_first is None and n:
                t_first = time.monotonic()
            if n >= rows:
                break
            if time.monotonic() - t_ready > timeout or drain.proc.poll() is not None:
                break
            time.sleep(0.01)
        t_done = time.monotonic()
        elapsed = watch.stop()
        got = sub.samples()
        v = res.values
        v.update(rows=rows, delivered_rows=got, complete=got >= rows, seconds=round(t_done - t_ready, 2),
                 start_s=round(t_ready - t_spawn, 2), first_msg_s=round((t_first or t_done) - t_ready, 3),
                 rate=got / (t_done - t_ready), cpu_drain=watch.cpu["drain"], cpu_broker=watch.cpu["broker"],
                 cpu_bench=watch.cpu["bench"], rss_max=watch.rss_max("drain"), rss_mean=watch.rss_mean("drain"),
                 hwm=watch.hwm["drain"], window_s=round(elapsed, 2), duplicates=sub.rx.duplicates)
        return [append, res]
    finally:
        sub.close()
        drain.terminate()
        broker.stop()
