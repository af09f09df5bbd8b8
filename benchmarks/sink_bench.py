"""The MES side: `linetap sink` throughput into PostgreSQL (and DuckDB), and `trace` latency on a year of one line.

`python -m benchmarks.run --only sink [--smoke] [--units N] [--pg URL]`, or `python -m benchmarks.sink_bench`
with the same options. Issue goals: >= 200,000 telemetry samples/s per sink process; `trace` p99 < 200 ms
on ~1.5M unit records. See README.md ("The sink") for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .common import Mosquitto, ProcWatch, cpu_seconds
from .harness import PY, ROOT, Result, _env, pyspy_attach
from .pg import PostgresServer, create_database, find_pg_bin, postgres_pids
from .sink_data import AGENT, telemetry_messages, unit_messages
from .sink_publish import write_messages

LINETAP = str(Path(PY).with_name("linetap"))
GOAL_SAMPLES = 200_000  # per sink process
GOAL_TRACE_P99_MS = 200.0


@dataclass
class SinkRun:
    name: str
    stream: str  # telemetry | units
    sinks: int
    db: str  # postgresql | duckdb
    rows: int  # samples or unit records
    profile: bool = False  # py-spy attached to the (first) sink for the run


def _start_sink(broker: Mosquitto, db: str, log: Path, i: int, share: bool) -> subprocess.Popen:
    fh = open(log, "ab")  # noqa: SIM115 (the child keeps it)
    args = [LINETAP, "sink", "--broker", f"{broker.host}:{broker.port}", "--db", db, "--client-id", f"bench-sink-{i}",
            "--session-expiry", "0", *(["--share", "bench"] if share else [])]
    proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=_env())
    fh.close()
    deadline = time.monotonic() + 30
    while b"sink subscribed" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"linetap sink did not subscribe: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return proc


def _stop(proc: subprocess.Popen, timeout: float = 60) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _landed_pg(conn, table: str, rows: int, t_go: float, timeout: float, period: float = 0.1
               ) -> tuple[float | None, int, float | None]:
    """Poll PostgreSQL: (time the first row was seen, rows held then, time all `rows` were held).
    Cheap reads while it runs (max(seq) on the primary key; then a count of the last seqs; a full
    count only at the end), so the polling takes little of the server."""
    t_first = t_done = None
    c_first = 0
    tail = min(rows, 50_000)
    while time.monotonic() - t_go < timeout:
        top = conn.execute(f"SELECT max(seq) FROM {table} WHERE agent = %s", (AGENT,)).fetchone()[0]
        now = time.monotonic()
        if top is not None and t_first is None:
            t_first = now
            c_first = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        if top is not None and top >= rows:
            n_tail = conn.execute(f"SELECT count(*) FROM {table} WHERE agent = %s AND seq > %s",
                                  (AGENT, rows - tail)).fetchone()[0]
            if n_tail >= tail and conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] >= rows:
                t_done = time.monotonic()
                break
        time.sleep(period)
    return t_first, c_first, t_done


def _idle_after(pids: list[int], t_go: float, publisher: subprocess.Popen, timeout: float, quiet: float = 1.0
                ) -> float | None:
    """DuckDB (the sink holds the file): when the sinks last used CPU, once the publisher is done
    and they have been idle for `quiet` s."""
    last_cpu, last_change = -1.0, time.monotonic()
    while time.monotonic() - t_go < timeout:
        cpu = sum(cpu_seconds(p) for p in pids)
        now = time.monotonic()
        if cpu > last_cpu + 0.011:  # more than one clock tick
            last_cpu, last_change = cpu, now
        elif publisher.poll() is not None and now - last_change > quiet:
            return last_change
        time.sleep(0.05)
    return None


def run_one(run: SinkRun, work: Path, admin_url: str | None, postmaster: int | None, messages: Path,
            timeout: float) -> Result:
    wd = work / f"sink-{run.name}"
    wd.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(wd / "broker").start()
    db = create_database(admin_url, "sink") if run.db == "postgresql" else str(wd / "sink.duckdb")
    sinks: list[subprocess.Popen] = []
    publisher = None
    conn = None
    res = Result("sink", run.name)
    try:
        for i in range(run.sinks):
            sinks.append(_start_sink(broker, db, wd / f"sink{i}.log", i, share=run.sinks > 1))
        publisher = subprocess.Popen([PY, "-m", "benchmarks.sink_publish", broker.host, str(broker.port),
                                      str(messages)], cwd=ROOT, env=_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(wd / "publisher.log", "ab"))  # noqa: SIM115
        ready = json.loads(publisher.stdout.readline() or b"{}")
        if "ready" not in ready:
            raise RuntimeError(f"publisher not ready: {(wd / 'publisher.log').read_text()[-2000:]}")
        pids = {"sink": [p.pid for p in sinks], "broker": [broker.pid], "publisher": [publisher.pid]}
        if run.db == "postgresql":
            import psycopg

            conn = psycopg.connect(db, autocommit=True)
            pids["postgres"] = postgres_pids(postmaster) if postmaster else []
        spy = None
        if run.profile:
            spy = pyspy_attach(sinks[0].pid, max(2.0, run.rows / 150_000), wd / "sink-profile.txt")
            time.sleep(0.5)  # py-spy attaching
        watch = ProcWatch(pids, 0.25).start()
        t_go = time.monotonic()
        publisher.stdin.write(b"go\n")
        publisher.stdin.flush()
        if run.db == "postgresql":
            t_first, c_first, t_done = _landed_pg(conn, run.stream, run.rows, t_go, timeout)
        else:
            t_first, c_first = t_go, 0
            t_done = _idle_after(pids["sink"], t_go, publisher, timeout)
        window = watch.stop()
        pub = json.loads(publisher.stdout.readline() or b"{}") if publisher.poll() is not None or t_done else {}
        if spy is not None:
            spy.wait(60)
            res.values["profile"] = str(wd / "sink-profile.txt")
        rcs = [_stop(p) for p in sinks]
        sinks = []
        if run.db == "postgresql":
            held = conn.execute(f"SELECT count(*) FROM {run.stream}").fetchone()[0]
        else:
            import duckdb

            with duckdb.connect(db, read_only=True) as con:
                held = con.execute(f"SELECT count(*) FROM {run.stream}").fetchone()[0]
        secs = (t_done - t_first) if t_done and t_first else None
        rate = (run.rows - c_first) / secs if secs else None
        timing = ("first row seen -> all rows held (PostgreSQL polled)" if run.db == "postgresql"
                  else "publish start -> sinks idle (DuckDB file held by the sink)")
        if t_done and c_first > run.rows // 2:  # most rows landed before the first poll saw one: a tiny run
            secs, rate, timing = t_done - t_go, run.rows / (t_done - t_go), "publish start -> all rows held"
        sink_cpu = watch.cpu["sink"]
        res.values.update(
            stream=run.stream, sinks=run.sinks, db=run.db, rows=run.rows, held=held, complete=held == run.rows,
            seconds=secs, rate=rate, rate_per_sink=rate / run.sinks if rate else None,
            cpu_sink=sink_cpu, cpu_postgres=watch.cpu.get("postgres"), cpu_broker=watch.cpu["broker"],
            cpu_publisher=pub.get("cpu_s", 0) / pub["seconds"] if pub.get("seconds") else None, window_s=window,
            us_per_row=sink_cpu * window / held * 1e6 if held else None,
            rss_sink_max=watch.rss_max("sink"), hwm_sink=max(watch.hwm["sink"], 0), publish_s=pub.get("seconds"),
            sink_exit=rcs, timing=timing)
        return res
    finally:
        if conn is not None:
            conn.close()
        for p in sinks:
            _stop(p)
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
        broker.stop()


def _f(x, fmt: str = "{:,.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def print_sink_table(results: list[Result], out=print) -> None:
    runs = [r for r in results if r.kind == "sink"]
    if runs:
        out("\n### Sink: agent payloads -> Mosquitto -> `linetap sink` -> database (rows landed per second)")
        out("| run | stream | sinks | db | rows | held | seconds | rows/s | per sink | vs 200k samples/s per sink | "
            "sink CPU (cores) | sink µs CPU/row | postgres CPU | broker CPU | publisher CPU (while publishing) | sink peak RSS (MB) |")
        out("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in runs:
            v = r.values
            goal = (f"{v['rate_per_sink'] / GOAL_SAMPLES:.2f}x" if v["stream"] == "telemetry" and v["rate_per_sink"]
                    else "-")
            out(f"| {r.name} | {v['stream']} | {v['sinks']} | {v['db']} | {v['rows']:,} | {v['held']:,}"
                f"{'' if v['complete'] else ' (INCOMPLETE)'} | {_f(v['seconds'], '{:.2f}')} | {_f(v['rate'])} | "
                f"{_f(v['rate_per_sink'])} | {goal} | {_f(v['cpu_sink'], '{:.2f}')} | {_f(v['us_per_row'], '{:.1f}')} "
                f"| {_f(v['cpu_postgres'], '{:.2f}')} | {_f(v['cpu_broker'], '{:.2f}')} | "
                f"{_f(v['cpu_publisher'], '{:.2f}')} | {_f(v['hwm_sink'] / 1e6 if v['hwm_sink'] else None)} |")
        out("- timing: PostgreSQL runs from the first row seen to all rows held (polled every 0.1 s; a run so short "
            "that most rows landed before the first poll: from the publisher's start); DuckDB runs from the "
            "publisher's start until the sinks are idle (the sink holds the file). CPU in cores over the window "
            "(publish start -> done); `sink µs CPU/row` = sink CPU seconds / rows held; peak RSS = VmHWM (per "
            "process, the larger of two sinks).")
        for r in runs:
            if r.values["timing"] not in ("first row seen -> all rows held (PostgreSQL polled)",
                                          "publish start -> sinks idle (DuckDB file held by the sink)"):
                out(f"- {r.name}: timed {r.values['timing']}")
    for r in runs:
        if r.values.get("profile"):
            from .report import summarize_profile

            out(f"\n### Sink profile ({r.name}; its CPU includes py-spy's sampling)\n```\n"
                f"{summarize_profile(Path(r.values['profile']), top=30)}\n```")
    tr = [r for r in results if r.kind == "trace"]
    if tr:
        from .sink_trace import print_trace_table

        print_trace_table(tr, out)


def throughput_runs(smoke: bool, samples: int | None, unit_msgs: int | None, duckdb: bool, profile: bool = False
                    ) -> list[SinkRun]:
    s = samples or (20_000 if smoke else 2_000_000)
    u = unit_msgs or (500 if smoke else 30_000)
    runs = [SinkRun("pg-telemetry-1", "telemetry", 1, "postgresql", s),
            SinkRun("pg-telemetry-2", "telemetry", 2, "postgresql", s),
            SinkRun("pg-units-1", "units", 1, "postgresql", u),
            SinkRun("pg-units-2", "units", 2, "postgresql", u)]
    if duckdb:
        runs += [SinkRun("duckdb-telemetry-1", "telemetry", 1, "duckdb", s),
                 SinkRun("duckdb-units-1", "units", 1, "duckdb", min(u, 3_000))]  # DuckDB: ~250 units/s
    if profile:
        runs.append(SinkRun("pg-telemetry-1 (py-spy)", "telemetry", 1, "postgresql", s, profile=True))
    return runs


def run_all(work: Path, *, smoke: bool, pg_url: str | None = None, units: int | None = None,
            samples: int | None = None, unit_msgs: int | None = None, serials: int | None = None,
            duckdb: bool = True, trace: bool = True, profile: bool = False, only_runs: str | None = None, required: bool = False,
            out=print) -> tuple[bool, list[Result]]:
    """Every sink run and the trace timing; (ok, results). Without PostgreSQL (no binaries, no --pg)
    it says so and skips: a failure only when `required`."""
    work.mkdir(parents=True, exist_ok=True)
    server = None
    results: list[Result] = []
    if pg_url is None:
        bindir = find_pg_bin()
        if bindir is None:
            out("- sink: SKIPPED: PostgreSQL binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on "
                "PATH (apt-get install postgresql), and no --pg URL given")
            return not required, results
        server = PostgresServer(bindir).start()  # under /tmp: as root the server runs as nobody, who must reach it
        pg_url = server.url()
        out(f"- sink: private PostgreSQL on 127.0.0.1:{server.port} (fsync=off, shared_buffers=256MB) in {server.dir}",
            flush=True)
    ok = True
    try:
        runs = throughput_runs(smoke, samples, unit_msgs, duckdb, profile)
        if only_runs:
            runs = [r for r in runs if r.name in only_runs.split(",") or (r.profile and "profile" in only_runs)]
        files: dict[tuple[str, int], Path] = {}
        for run in runs:
            key = (run.stream, run.rows)
            if key not in files:
                t = time.perf_counter()
                msgs = telemetry_messages(run.rows) if run.stream == "telemetry" else unit_messages(run.rows)
                files[key] = work / f"messages-{run.stream}-{run.rows}.bin"
                write_messages(files[key], msgs)
                out(f"- sink: built {len(msgs):,} {run.stream} messages ({run.rows:,} rows) with the agent's encoder "
                    f"in {time.perf_counter() - t:.1f} s", flush=True)
            out(f"- sink {run.name}: {run.rows:,} {run.stream} rows, {run.sinks} sink(s) -> {run.db} ...", flush=True)
            try:
                r = run_one(run, work, pg_url, server.pid if server else None, files[key],
                            timeout=max(60.0, run.rows / (2_000 if run.stream == "units" else 20_000)))
                results.append(r)
                ok = ok and r.values["complete"]
                out(f"  {_f(r.values['rate'])} rows/s, held {r.values['held']:,}", flush=True)
            except Exception as exc:  # noqa: BLE001 - report and go on
                ok = False
                out(f"  FAILED: {exc}", flush=True)
        if trace:
            from .sink_trace import run_trace

            try:
                results.append(run_trace(work, pg_url, units or (2_000 if smoke else 1_500_000),
                                         serials or (100 if smoke else 1000), out=out))
            except Exception as exc:  # noqa: BLE001
                ok = False
                out(f"- trace FAILED: {exc}", flush=True)
    finally:
        if server is not None:
            server.stop()
    return ok, results


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sink (--only sink)")
    g.add_argument("--pg", default=None, help="PostgreSQL URL to use (a database there is created per run) "
                                              "instead of a private initdb/pg_ctl server")
    g.add_argument("--units", type=int, default=None, help="unit records in the trace database (1,500,000; smoke 2,000)")
    g.add_argument("--samples", type=int, default=None, help="telemetry samples per sink run (2,000,000; smoke 20,000)")
    g.add_argument("--unit-messages", type=int, default=None, help="unit records per sink run (30,000; smoke 500)")
    g.add_argument("--serials", type=int, default=None, help="random serials traced (1000; smoke 100)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sink_bench", description=__doc__)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--no-trace", action="store_true")
    p.add_argument("--no-duckdb", action="store_true")
    p.add_argument("--profile", action="store_true", help="one more 1-sink PostgreSQL telemetry run under py-spy")
    p.add_argument("--only-runs", default=None, help="comma-separated run names (e.g. pg-telemetry-1)")
    add_options(p)
    a = p.parse_args(argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="linetap-sink-bench-"))
    print(f"workdir: {work}", flush=True)
    ok, results = run_all(work, smoke=a.smoke, pg_url=a.pg, units=a.units, samples=a.samples,
                          unit_msgs=a.unit_messages, serials=a.serials, trace=not a.no_trace,
                          duckdb=not a.no_duckdb, profile=a.profile, only_runs=a.only_runs,
                          required=bool(os.environ.get("LINETAP_REQUIRE_POSTGRES")))
    print_sink_table(results)
    print(f"\n{'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
