"""`trace` latency on a sink database holding a simulated year of one line.

The database gets the sink's own schema (its migrations), then ~1.5M unit records (two stations
per serial) and a non-conformance event per failing unit (~1%), hash-chained with linetap's
integrity code and loaded with COPY; then `trace()` (in-process, as `linetap trace` calls it) for
random serials, `EXPLAIN` of its two queries, and a few runs of the `linetap trace` command.
"""

from __future__ import annotations

import multiprocessing
import random
import subprocess
import time
from pathlib import Path

from linetap.buffers.integrity import GENESIS

from .common import percentile
from .harness import Result, _env
from .pg import create_database
from .sink_data import AGENT, chained, nc_body, year_units

CHUNK = 50_000
UNIT_COLS = ("agent", "seq", "id", "serial", "station", "device", "operator", "lot", "started_at", "ended_at",
             "cycle_time", "verdict", "config_version", "recorded_at", "body", "prev_hash", "hash", "received_at")
EVENT_COLS = ("agent", "seq", "id", "kind", "serial", "station", "ts", "recorded_at", "body", "prev_hash", "hash",
              "received_at")


def fill_year(url: str, n_units: int, out=print) -> dict[str, float]:
    """The sink's schema, then `n_units` unit records and their NC events by COPY; ANALYZE."""
    import psycopg

    from linetap.agent.sink.db import from_us, open_target

    t = open_target(url)
    t.migrate()
    t.close()
    t0 = time.perf_counter()
    prev_u = prev_e = GENESIS
    ev_seq = 0
    n_events = 0
    gen = year_units(n_units)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool, psycopg.connect(url) as conn:
        while True:
            items = [x for _, x in zip(range(CHUNK), gen, strict=False)]
            if not items:
                break
            rows, prev_u = chained("units", items, prev_u, pool)
            ncs = []
            for _seq, body in items:
                if body["verdict"] == "fail":
                    ev_seq += 1
                    ncs.append((ev_seq, nc_body(body)))
            evs, prev_e = chained("events", ncs, prev_e)
            with conn.cursor() as cur:
                with cur.copy(f"COPY units ({', '.join(UNIT_COLS)}) FROM STDIN") as copy:
                    for (seq, body), (_, rid, rec_at, text, ph, h) in zip(items, rows, strict=True):
                        copy.write_row((AGENT, seq, rid, body["serial"], body["station"], body["device"],
                                        body["operator"], body["lot"], from_us(body["started_at"]),
                                        from_us(body["ended_at"]), body["cycle_time"], body["verdict"],
                                        body["config_version"], rec_at, text, ph, h, from_us(rec_at + 300_000)))
                if ncs:
                    with cur.copy(f"COPY events ({', '.join(EVENT_COLS)}) FROM STDIN") as copy:
                        for (seq, body), (_, rid, rec_at, text, ph, h) in zip(ncs, evs, strict=True):
                            copy.write_row((AGENT, seq, rid, body["kind"], body["serial"], body["station"],
                                            from_us(body["ts"]), rec_at, text, ph, h, from_us(rec_at + 300_000)))
            conn.commit()
            n_events += len(ncs)
            done = items[-1][0]
            if done % 250_000 < CHUNK or done == n_units:
                out(f"  filled {done:,} / {n_units:,} unit records ({time.perf_counter() - t0:.0f} s)", flush=True)
        t_fill = time.perf_counter() - t0
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE units")
        conn.execute("VACUUM ANALYZE events")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {"fill_s": t_fill, "events": n_events, "db_bytes": size}


def explain(url: str, serial: str) -> dict[str, str]:
    """The plans of trace's two queries (the same SQL as `linetap.agent.sink.trace`)."""
    import psycopg

    from linetap.agent.sink.trace import TRACE_EVENT_KINDS

    plans = {}
    with psycopg.connect(url) as conn:
        for name, sql, params in (
                ("units", "SELECT agent, seq, id, body, hash FROM units WHERE serial = %s "
                          "ORDER BY started_at NULLS LAST, recorded_at, agent, seq", (serial,)),
                ("events", "SELECT agent, seq, kind, body FROM events WHERE serial = %s AND kind IN (%s, %s) "
                           "ORDER BY ts NULLS LAST, recorded_at, agent, seq", (serial, *TRACE_EVENT_KINDS))):
            rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()
            plans[name] = "\n".join(r[0] for r in rows)
    return plans


def run_trace(work: Path, admin_url: str, n_units: int, n_serials: int, out=print) -> Result:
    from linetap.agent.sink.db import open_target
    from linetap.agent.sink.trace import trace

    from .sink_bench import LINETAP

    url = create_database(admin_url, "trace")
    out(f"- trace: filling a year of one line: {n_units:,} unit records (2 stations per serial) + NC events, "
        "hash-chained, COPY ...", flush=True)
    fill = fill_year(url, n_units, out)
    serials_total = (n_units + 1) // 2
    rng = random.Random(3)
    picks = [f"SN{rng.randint(1, serials_total):08d}" for _ in range(n_serials)]
    t = open_target(url, read_only=True)
    try:
        first = time.perf_counter()
        trace(t, picks[0])  # the first query on a fresh connection: reported apart
        t_first = (time.perf_counter() - first) * 1000
        lat, units_seen, events_seen, unverified = [], 0, 0, 0
        for serial in picks:
            s = time.perf_counter()
            r = trace(t, serial)
            lat.append((time.perf_counter() - s) * 1000)
            units_seen += len(r["units"])
            events_seen += len(r["events"])
            unverified += sum(not x["chain"]["verified"] for x in r["units"] + r["events"])
        failing = t.execute("SELECT serial FROM events WHERE kind = 'nonconformance' LIMIT 1")
    finally:
        t.close()
    plans = explain(url, picks[0])
    cli = []
    for serial in picks[:5] + [failing[0][0]] if failing else picks[:5]:
        s = time.perf_counter()
        r = subprocess.run([LINETAP, "trace", serial, "--db", url], capture_output=True, text=True, env=_env(),
                           timeout=60)
        cli.append(((time.perf_counter() - s) * 1000, r.returncode))
    start = []
    for _ in range(3):
        s = time.perf_counter()
        subprocess.run([LINETAP, "--help"], capture_output=True, env=_env(), timeout=60)
        start.append((time.perf_counter() - s) * 1000)
    v = {"units": n_units, "events": fill["events"], "fill_s": fill["fill_s"], "db_bytes": fill["db_bytes"],
         "serials": n_serials, "first_ms": t_first, "p50": percentile(lat, 50), "p95": percentile(lat, 95),
         "p99": percentile(lat, 99), "max": max(lat), "units_seen": units_seen, "events_seen": events_seen,
         "unverified": unverified, "plans": plans,
         "index_used": "units_serial" in plans["units"] and "events_serial" in plans["events"],
         "cli_ms": [round(x) for x, _ in cli], "cli_rc": [rc for _, rc in cli], "help_ms": [round(x) for x in start]}
    return Result("trace", f"trace-{n_units}", v)


def print_trace_table(results: list[Result], out=print) -> None:
    from .sink_bench import GOAL_TRACE_P99_MS

    out("\n### trace latency: `trace()` in-process on PostgreSQL (ms per serial, random serials)")
    out("| units held | NC events | DB size (MB) | fill (s) | serials | first call | p50 | p95 | p99 | max | "
        "p99 vs 200 ms goal | records / unverified | serial index used |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        v = r.values
        out(f"| {v['units']:,} | {v['events']:,} | {v['db_bytes'] / 1e6:,.0f} | {v['fill_s']:.0f} | {v['serials']} | "
            f"{v['first_ms']:.1f} | {v['p50']:.1f} | {v['p95']:.1f} | {v['p99']:.1f} | {v['max']:.1f} | "
            f"{v['p99'] / GOAL_TRACE_P99_MS:.3f}x | {v['units_seen'] + v['events_seen']:,} / {v['unverified']} | "
            f"{'yes' if v['index_used'] else 'NO'} |")
    for r in results:
        v = r.values
        out(f"- `linetap trace SERIAL --db URL` (the installed command, wall ms incl. process start): "
            f"{v['cli_ms']} (exit codes {v['cli_rc']}); `linetap --help` alone: {v['help_ms']} ms")
        for name, plan in v["plans"].items():
            out(f"\nEXPLAIN (ANALYZE, BUFFERS) of trace's {name} query:\n```\n{plan}\n```")
