"""What the sink benchmark feeds the sink: the agent's own payloads, and a simulated year of one line.

- Telemetry: Arrow rows as the buffer holds them (`seq` + TELEMETRY_SCHEMA; 4 devices x 1000
  float32 tags per poll, one `agent_ts` per poll), turned into messages by the agent's encoder
  (`iter_telemetry_messages`, 500 samples per message as the agent's default `telemetry_batch`).
- Unit records: heat-sealer bodies shaped like `station_capture`'s (8 parameters with limits,
  spec and verdict, ~2% failing), chained with `linetap.buffers.integrity` and encoded by
  `encode_record`: the bytes the agent publishes, seqs and hash chain included.
- A year of one line (`year_rows`): the same bodies, two stations per serial, plus a
  non-conformance event per failing unit, as rows of the sink's `units` / `events` tables.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from linetap.agent.encoders.json_envelope import encode_record, iter_telemetry_messages
from linetap.agent.topics import Topics
from linetap.buffers.integrity import GENESIS, canonical_json, record_hash
from linetap.buffers.records import StoredRecord
from linetap.drivers.samples import TELEMETRY_SCHEMA, VType

AGENT = "bench-line"
TOPIC_ROOT = "acme/bench/area/line"
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, us
STATIONS = ("sealer1", "leak-test1")
PARAMS = {  # name -> (tag, reduce, unit, low, high, nominal, spread)
    "sealer1": [("seal_temperature_max", "seal_temperature", "max", "degC", 175.0, 185.0, 180.0, 1.6),
                ("seal_temperature_mean", "seal_temperature", "mean", "degC", 170.0, 185.0, 177.0, 1.2),
                ("seal_pressure_min", "seal_pressure", "min", "bar", 5.8, 6.6, 6.2, 0.1),
                ("seal_pressure_max", "seal_pressure", "max", "bar", 5.8, 6.6, 6.3, 0.1),
                ("dwell_time", "cycle_active", "true_duration", "s", 1.8, 2.2, 2.0, 0.05),
                ("cycle_time", "cycle_active", "cycle_time", "s", None, 3.5, 2.6, 0.1),
                ("jaw_gap_start", "jaw_gap", "start", "mm", 0.0, 0.3, 0.12, 0.04),
                ("film_tension_mean", "film_tension", "mean", "N", 20.0, 40.0, 30.0, 2.5)],
    "leak-test1": [("leak_rate_max", "leak_rate", "max", "mbar_l_s", None, 0.001, 0.0004, 0.0001),
                   ("test_pressure_mean", "test_pressure", "mean", "bar", 1.9, 2.1, 2.0, 0.02),
                   ("fill_time", "fill_active", "true_duration", "s", 0.5, 1.5, 0.9, 0.1),
                   ("cycle_time", "cycle_active", "cycle_time", "s", None, 8.0, 6.1, 0.3)],
}
SPEC = {"sealer1": "WI-SEAL-007 rev B", "leak-test1": "WI-LEAK-002 rev D"}


def topics() -> Topics:
    return Topics(TOPIC_ROOT, AGENT, {s: s for s in STATIONS})


# --- telemetry -------------------------------------------------------------------------------


def telemetry_messages(samples: int, devices: int = 4, tags: int = 1000, batch: int = 500,
                       poll_us: int = 25_000) -> list[tuple[str, bytes]]:
    """(topic, payload) of `samples` samples (seqs 1..samples), as the agent's forwarder sends them."""
    rows = []
    per_poll = devices * tags
    polls = -(-samples // per_poll)
    tag_names = [f"load_{i:04d}" for i in range(tags)]
    for p in range(polls):
        dev = np.repeat(np.arange(devices), tags)
        idx = np.tile(np.arange(tags), devices)
        num = (idx + np.sin(p * 0.1 + idx / 10)).astype(np.float32).astype(np.float64)
        rows.append((np.array([f"dev{d}" for d in range(devices)], dtype=object)[dev], idx, num,
                     np.full(per_poll, T0 + p * poll_us, dtype=np.int64)))
    dev = np.concatenate([r[0] for r in rows])[:samples]
    idx = np.concatenate([r[1] for r in rows])[:samples]
    n = len(idx)
    table = pa.Table.from_arrays([
        pa.array(np.arange(1, n + 1, dtype=np.int64)), pa.array(dev.tolist(), pa.string()),
        pa.array(np.array(tag_names, dtype=object)[idx].tolist(), pa.string()),
        pa.array(np.concatenate([r[2] for r in rows])[:samples]), pa.nulls(n, pa.string()),
        pa.array(np.zeros(n, dtype=np.uint8)), pa.nulls(n, pa.string()), pa.nulls(n, pa.int64()),
        pa.array(np.concatenate([r[3] for r in rows])[:samples]),
        pa.array(np.full(n, VType.FLOAT32, dtype=np.uint8)),
    ], schema=pa.schema([("seq", pa.int64()), *TELEMETRY_SCHEMA]))
    tp = topics()
    return [(topic, payload) for topic, _, _, payload in iter_telemetry_messages(AGENT, table, batch, tp, T0)]


# --- unit records ----------------------------------------------------------------------------


def unit_body(rng: random.Random, serial: str, station: str, started_at: int, fail: bool) -> dict[str, Any]:
    params = []
    spec = SPEC[station]
    bad = rng.randrange(len(PARAMS[station])) if fail else -1
    cycle = None
    for i, (name, tag, reduce, unit, low, high, nominal, spread) in enumerate(PARAMS[station]):
        value = round(rng.gauss(nominal, spread), 4 if nominal < 0.01 else 2)
        if low is not None:
            value = max(value, low)
        value = min(value, high)
        if i == bad:
            value = round(high * 1.03 + spread, 4)
        if reduce == "cycle_time":
            cycle = value
        verdict = "fail" if i == bad else "pass"
        params.append({"name": name, "reduce": reduce, "tag": tag, "value": value, "unit": unit, "low": low,
                       "high": high, "spec": spec, "verdict": verdict,
                       "reason": f"high limit {high:g} breached" if i == bad else None})
    cycle = cycle or 2.6
    return {"kind": "unit", "serial": serial, "lot": f"LOT-{started_at // 86_400_000_000 % 1000:03d}",
            "station": station, "device": station, "operator": f"OP-{rng.randrange(1, 40):03d}",
            "started_at": started_at, "ended_at": started_at + int(cycle * 1e6), "cycle_time": cycle,
            "parameters": params, "verdict": "fail" if fail else "pass", "reasons": [],
            "config_version": "sha256:5f1c0ffee"}


def nc_body(unit: dict[str, Any]) -> dict[str, Any]:
    p = next(p for p in unit["parameters"] if p["verdict"] == "fail")
    return {"kind": "nonconformance", "ts": unit["ended_at"], "device": unit["device"], "station": unit["station"],
            "serial": unit["serial"], "operator": unit["operator"], "parameter": p["name"], "reduce": p["reduce"],
            "value": p["value"], "limit": "high", "limit_value": p["high"], "unit": p["unit"], "spec": p["spec"],
            "unit_started_at": unit["started_at"], "during_cycle": False}


def unit_messages(n: int, fail_share: float = 0.02, seed: int = 7) -> list[tuple[str, bytes]]:
    """(topic, payload) of `n` unit records (seqs 1..n, one chain), as the agent sends them."""
    rng = random.Random(seed)
    tp = topics()
    out = []
    prev = GENESIS
    for seq in range(1, n + 1):
        station = STATIONS[seq % 2]
        started = T0 + seq * 3_000_000
        body = unit_body(rng, f"SN{(seq + 1) // 2:08d}", station, started, rng.random() < fail_share)
        rid, rec_at = f"{AGENT}/units/{seq}", body["ended_at"] + 40_000
        h = record_hash(prev, id=rid, stream="units", seq=seq, recorded_at=rec_at, body=body)
        rec = StoredRecord("units", seq, rid, rec_at, body, prev, h)
        out.append((tp.record(rec), encode_record(AGENT, rec, rec_at + 5_000)))
        prev = h
    return out


# --- a year of one line (trace) ------------------------------------------------------------


def _canonical(args: tuple[str, str, int, int, dict[str, Any]]) -> bytes:
    rid, stream, seq, recorded_at, body = args
    return canonical_json({"id": rid, "stream": stream, "seq": seq, "recorded_at": recorded_at, "body": body})


def year_units(n_units: int, seed: int = 11, fail_share: float = 0.01) -> Iterator[tuple[int, dict[str, Any]]]:
    """(seq, body) of `n_units` unit records: serials through two stations (sealer, then leak test),
    one unit every ~21 s over a year (1.5M records), `fail_share` of the serials failing a limit."""
    rng = random.Random(seed)
    gap = max(1, int(365 * 86_400_000_000 / max(n_units, 1)))
    for seq in range(1, n_units + 1):
        station = STATIONS[(seq - 1) % 2]
        serial = f"SN{(seq + 1) // 2:08d}"
        started = T0 + (seq - 1) * gap + (gap // 2 if station == STATIONS[1] else 0)
        yield seq, unit_body(rng, serial, station, started, rng.random() < fail_share)


def chained(stream: str, items: list[tuple[int, dict[str, Any]]], prev: str, pool=None
            ) -> tuple[list[tuple[int, str, int, str, str, str]], str]:
    """(seq, id, recorded_at, body text, prev_hash, hash) of each record, linked into one chain from `prev`.

    The hash is linetap's (`integrity`: RFC 8785 of the record, SHA-256 over prev_hash + "\\n" +
    it); the RFC 8785 text, the slow part (~100 us a unit), is computed in `pool` when given, the
    chain itself in order here. The first record of each call is checked against `record_hash`."""
    jobs = [(f"{AGENT}/{stream}/{seq}", stream, seq, body["ended_at" if stream == "units" else "ts"] + 40_000, body)
            for seq, body in items]
    texts = pool.map(_canonical, jobs, chunksize=500) if pool is not None else map(_canonical, jobs)
    out = []
    for (rid, _, seq, rec_at, body), text in zip(jobs, texts, strict=True):
        h = hashlib.sha256(prev.encode("ascii") + b"\n" + text).hexdigest()
        out.append((seq, rid, rec_at, orjson.dumps(body).decode(), prev, h))
        prev = h
    if jobs:
        rid, _, seq, rec_at, body = jobs[0]
        assert out[0][5] == record_hash(out[0][4], id=rid, stream=stream, seq=seq, recorded_at=rec_at, body=body)
    return out, prev
