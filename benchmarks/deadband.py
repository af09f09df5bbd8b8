"""Report by exception on the demo line: bytes on disk and on the wire per hour, with and without a deadband.

    .venv/bin/python -m benchmarks.run --only deadband [--smoke] [--seconds N]
    .venv/bin/python -m benchmarks.deadband [--seconds N]

Two real agents read one Modbus station simulator (config/examples/heat-sealer-modbus.yaml: 12 tags every
100 ms) at the same time for N seconds, one as the example is, one with DEADBAND below. No broker
answers (the agents buffer as in a broker outage), so each buffer holds every sample its agent kept.
- wire: the MQTT payload bytes of those rows, built by the agent's own encoder (a message's content is a
  function of the rows only, so these are the bytes the forwarder would publish), plus the topic and
  ~7 bytes of PUBLISH header per message;
- disk: measured bytes per stored sample of DuckDB (the run's rows appended again and again, shifted in
  time, to ~2M rows per variant, checkpointed; a short run alone grows the file by whole blocks);
- per hour: the measured rates x 3600, i.e. extrapolated from the short run (the station's 2.5 s cycle
  repeats, so a minute is representative of an hour of steady production, not of changeovers);
- outage: hours a 2 GB buffer holds at 40,000 samples/s offered, from the disk bytes per *offered* sample
  (stored / offered x bytes per stored sample) of each variant.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from linetap.agent.encoders import encoder_for, telemetry_messages
from linetap.agent.runtime import Agent
from linetap.buffers import DuckDBBuffer
from linetap.config.devices.exception import Deadband
from linetap.config.loader import load_config
from linetap.config.units import parse_duration
from linetap.simulators import ModbusStationServer, StationModel

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "examples" / "heat-sealer-modbus.yaml"
DEADBAND: dict[str, Any] = {  # per tag; the device default: any change, resent every minute at least
    "max_silence": "60s",
    "tags": {"seal_temperature": {"absolute": 0.5}, "seal_temperature_raw": {"absolute": 0.5},
             "seal_pressure": {"percent": 2}, "dwell_time": {"absolute": 0.005},
             "temperature_setpoint": {"absolute": 0.5}},
}
OFFERED = 40_000  # samples/s, for the outage figure
CAP = 2 * 10**9  # bytes
DISK_ROWS = 2_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(folder: Path, port: int, broker_port: int, rbe: bool):
    cfg = load_config(EXAMPLE)
    device = cfg.devices[0]
    update: dict[str, Any] = {"port": port}
    if rbe:
        update["max_silence"] = parse_duration(DEADBAND["max_silence"])
        update["tags"] = [t.model_copy(update={"deadband": Deadband(**DEADBAND["tags"][t.name])})
                          if t.name in DEADBAND["tags"] else t for t in device.tags]
    return cfg.model_copy(update={
        "agent": cfg.agent.model_copy(update={"id": "bench-rbe" if rbe else "bench-all"}),
        "mqtt": cfg.mqtt.model_copy(update={"port": broker_port, "reconnect_min": 1.0, "reconnect_max": 5.0}),
        "buffer": cfg.buffer.model_copy(update={"path": folder / "buffer.duckdb"}),
        "logging": cfg.logging.model_copy(update={"level": "error", "format": "console"}),
        "devices": [device.model_copy(update=update)]})


async def _run(work: Path, seconds: float) -> dict[bool, tuple[Any, int, float]]:
    model = StationModel(seed=1, cycle_time=2.0, idle_time=0.5, out_of_limit_share=0.1)
    out = {}
    async with ModbusStationServer(model, host="127.0.0.1", port=0) as sim:
        broker_port = _free_port()  # nobody listens: a broker outage
        agents = {}
        for rbe in (False, True):
            folder = work / ("deadband" if rbe else "every-sample")
            folder.mkdir(parents=True, exist_ok=True)
            agents[rbe] = Agent(_config(folder, sim.port, broker_port, rbe))
        stop = asyncio.Event()
        tasks = [asyncio.create_task(a.run(stop)) for a in agents.values()]
        await asyncio.gather(*(a.ready.wait() for a in agents.values()))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(seconds)
        elapsed = loop.time() - t0
        stop.set()
        await asyncio.gather(*tasks)
        for rbe, agent in agents.items():
            out[rbe] = (agent.config, agent.stats.samples_read, elapsed)
    return out


def _rows(cfg) -> pa.Table:
    buf = DuckDBBuffer(cfg.buffer.path, cfg.agent.id)
    try:
        return buf.read_telemetry(0, 10**9, align=cfg.mqtt.telemetry_batch)
    finally:
        buf.close()


def _wire(cfg, table: pa.Table) -> tuple[int, int, int]:
    """(messages, payload bytes, PUBLISH bytes with topic and header) of the rows."""
    messages = payload = publish = 0
    for topic, _first, _last, body in telemetry_messages(encoder_for(cfg), table, sent_at=1_796_000_000_000_000):
        messages += 1
        payload += len(body)
        publish += len(body) + len(topic.encode()) + 7
    return messages, payload, publish


def _disk_per_sample(table: pa.Table, folder: Path) -> float:
    """Bytes per stored sample in a checkpointed buffer holding ~DISK_ROWS rows like these."""
    rows = table.drop_columns(["seq"])
    path = folder / "disk.duckdb"
    empty = DuckDBBuffer(path, "disk")
    empty.close()
    base = path.stat().st_size
    buf = DuckDBBuffer(path, "disk")
    span = int(pa.compute.max(rows.column("agent_ts")).as_py() - pa.compute.min(rows.column("agent_ts")).as_py()) + 1
    copies = []
    n = 0
    while n < DISK_ROWS:
        copies.append(rows.set_column(rows.schema.get_field_index("agent_ts"), "agent_ts",
                                      pa.compute.add(rows.column("agent_ts"), len(copies) * span)))
        n += rows.num_rows
    big = pa.concat_tables(copies)
    for start in range(0, n, 100_000):  # appends of 100k rows, as a busy telemetry writer commits
        buf.append(big.slice(start, 100_000))
    buf.close()
    with contextlib.closing(duckdb.connect(str(path))) as con:
        con.execute("CHECKPOINT")
    return (path.stat().st_size - base) / n


def run(work: Path, seconds: float) -> list[dict[str, Any]]:
    runs = asyncio.run(_run(work, seconds))
    results = []
    for rbe, (cfg, offered, elapsed) in runs.items():
        table = _rows(cfg)
        stored = table.num_rows
        messages, payload, publish = _wire(cfg, table)
        per_sample = _disk_per_sample(table, Path(cfg.buffer.path).parent)
        per_h = 3600.0 / elapsed
        bytes_per_offered = per_sample * stored / offered
        results.append({
            "kind": "deadband", "variant": "deadband" if rbe else "every sample", "seconds": round(elapsed, 1),
            "offered": offered, "stored": stored, "messages": messages,
            "disk_bytes_per_sample": round(per_sample, 2),
            "disk_mb_per_hour": round(per_sample * stored * per_h / 1e6, 2),
            "wire_payload_mb_per_hour": round(payload * per_h / 1e6, 2),
            "wire_publish_mb_per_hour": round(publish * per_h / 1e6, 2),
            "outage_hours_2gb_at_40k": round(CAP / (OFFERED * bytes_per_offered * 3600), 2),
        })
    return results


def report(results: list[dict[str, Any]]) -> None:
    print("\n## Report by exception: the demo line (heat-sealer-modbus.yaml, 12 tags @ 100 ms)\n")
    print(f"measured for {results[0]['seconds']} s, per hour extrapolated (x 3600 / seconds); no broker (an outage)")
    print("| variant | offered | stored (incl. $polls) | messages | disk B/sample | disk MB/h | wire payload MB/h "
          "| wire PUBLISH MB/h | 2 GB outage at 40k/s offered |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['variant']} | {r['offered']:,} | {r['stored']:,} | {r['messages']:,} | "
              f"{r['disk_bytes_per_sample']:.2f} | {r['disk_mb_per_hour']:.2f} | {r['wire_payload_mb_per_hour']:.2f} | "
              f"{r['wire_publish_mb_per_hour']:.2f} | {r['outage_hours_2gb_at_40k']:.1f} h |")
    print(f"\ndeadband: {DEADBAND}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="linetap-deadband-") as work:
        report(run(Path(work), args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
