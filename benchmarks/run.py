"""`python -m benchmarks.run [--smoke | --long] [--nodered] [--profile] [--opcua] [--only PART]`: linetap end to end on this machine.

Every part runs in its own process: Modbus station simulators (one pymodbus server per device
up to `--max-sims`), a private Mosquitto on a free port, the agent (`benchmarks.procs agent`),
and this process, which only counts at a paho QoS 1 subscriber and reads /proc. See README.md
for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from . import sink_bench
from .drain import run_drain
from .harness import ROOT, Result
from .modbus_e2e import ModbusScenario, run_modbus
from .report import machine_facts, print_table, summarize_profile


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="a few seconds in total (CI)")
    p.add_argument("--long", action="store_true", help="also the 10M-sample backlog drain")
    p.add_argument("--nodered", action="store_true", help="Node-RED side by side (npm install on first use)")
    p.add_argument("--profile", action="store_true",
                   help="one more run of the 80k scenario under py-spy (with libmodbus: of that scenario too)")
    p.add_argument("--only", choices=("modbus", "opcua", "drain", "nodered", "profile", "libmodbus", "sink", "deadband"),
                   action="append", help="run only these parts (libmodbus: linetap and Node-RED against a C "
                                         "Modbus server, also part of --nodered; sink: `linetap sink` into "
                                         "PostgreSQL/DuckDB and `trace` latency, only when asked for)")
    p.add_argument("--seconds", type=float, default=None, help="measurement window per end-to-end run")
    p.add_argument("--max-sims", type=int, default=4, help="simulator processes at most (one per device)")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--results", type=Path, default=None,
                   help="where to write the results as JSON (default: benchmarks/results/latest.json; "
                        "with --smoke: results.json in the work directory, so CI never writes into the source tree)")
    sink_bench.add_options(p)
    args = p.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="linetap-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    only = set(args.only or [])

    def wanted(part: str) -> bool:
        return not only or part in only

    if only == {"sink"}:
        return _sink_only(args, work)
    if only == {"deadband"}:
        return _deadband_only(args, work)

    print(f"# linetap benchmark ({'smoke' if args.smoke else 'long' if args.long else 'standard'})", flush=True)
    print(machine_facts(), flush=True)
    print(f"workdir: {work}", flush=True)
    results: list[Result] = []
    if args.smoke:
        secs = args.seconds or 3.0
        scenarios = [ModbusScenario("smoke", 2, 100, 100, secs, warmup=1.0, station_ms=50)]
        drains = [100_000]
    else:
        secs = args.seconds or 20.0
        scenarios = [
            ModbusScenario("40k", 4, 1000, 100, secs),
            ModbusScenario("80k", 4, 1000, 50, secs),
            ModbusScenario("160k", 4, 1000, 25, secs),
            ModbusScenario("320k", 8, 1000, 25, secs),  # the ceiling: more devices than simulator processes
            # non-conformance latency at load: station tags on their own 20 ms poll, bulk as above
            ModbusScenario("40k+nc", 4, 1000, 100, secs, station_ms=20),
            ModbusScenario("160k+nc", 4, 1000, 25, secs, station_ms=20),
        ]
        drains = [1_000_000] + ([10_000_000] if args.long else [])
    ok = True
    if wanted("modbus"):
        for sc in scenarios:
            print(f"- modbus {sc.name}: {sc.devices} devices x {sc.tags}+12 tags @ {sc.interval_ms} ms, "
                  f"{sc.seconds:g} s ...", flush=True)
            try:
                results.append(run_modbus(sc, work, args.max_sims))
                print(f"  delivered {results[-1].values['delivered']:,.0f} samples/s", flush=True)
            except Exception as exc:  # noqa: BLE001 - report and go on
                ok = False
                print(f"  FAILED: {exc}", flush=True)
    if wanted("opcua"):
        from .opcua_bench import opcua_scenarios, run_opcua

        for osc in opcua_scenarios(args.smoke, secs):
            print(f"- opcua {osc.name}: {osc.sims} simulators x {osc.items} items @ {osc.interval_ms} ms, "
                  f"{osc.seconds:g} s ...", flush=True)
            try:
                results.append(run_opcua(osc, work))
                print(f"  offered {results[-1].values.get('offered') or 0:,.0f}/s, delivered "
                      f"{results[-1].values['delivered']:,.0f} samples/s", flush=True)
            except Exception as exc:  # noqa: BLE001
                ok = False
                print(f"  FAILED: {exc}", flush=True)
    if wanted("drain"):
        for rows in drains:
            print(f"- backlog drain {rows:,} ...", flush=True)
            try:
                results.extend(run_drain(rows, work, timeout=max(60.0, rows / 20_000)))
                print(f"  {results[-1].values['rate']:,.0f} samples/s", flush=True)
            except Exception as exc:  # noqa: BLE001
                ok = False
                print(f"  FAILED: {exc}", flush=True)
    if args.nodered and wanted("nodered"):
        from . import nodered

        settings = [(2, 100, 100)] if args.smoke else [(4, 1000, 100), (4, 1000, 25)]  # the target, and a ceiling
        for devices, tags, interval in settings:
            sc = ModbusScenario(f"nodered-{devices}x{tags}@{interval}", devices, tags, interval, secs)
            try:
                results.extend(nodered.compare(sc, work, args.max_sims, results))
            except Exception as exc:  # noqa: BLE001
                ok = False
                print(f"  Node-RED FAILED: {exc}", flush=True)
    if "libmodbus" in only or (args.nodered and wanted("nodered")):
        from . import libmodbus

        ok = libmodbus.run_all(work, secs, args.profile, results, required="libmodbus" in only) and ok
    profile_text = None
    if args.profile and wanted("opcua") and not args.smoke:
        from .opcua_bench import opcua_profile_scenario, run_opcua

        osc = opcua_profile_scenario(secs)
        print(f"- profile (py-spy) of the agent and one simulator at opcua {osc.name} ...", flush=True)
        try:
            results.append(run_opcua(osc, work / "profile-opcua", profile=True))
        except Exception as exc:  # noqa: BLE001
            ok = False
            print(f"  opcua profile FAILED: {exc}", flush=True)
    if args.profile and (wanted("profile") or "profile" in only):
        sc = ModbusScenario("80k", 4, 1000, 50, secs)
        raw = work / "agent-profile.txt"
        print("- profile (py-spy) of the agent at 80k offered ...", flush=True)
        try:
            results.append(run_modbus(sc, work / "profile", args.max_sims, profile=raw))
            profile_text = summarize_profile(raw)
        except Exception as exc:  # noqa: BLE001
            ok = False
            print(f"  profile FAILED: {exc}", flush=True)
    print_table(results)
    if profile_text:
        print("\n### Agent profile\n```\n" + profile_text + "\n```")
    for r in results:
        for who in ("agent", "sim"):
            raw = r.values.get(f"{who}_profile") if r.kind == "opcua" else None
            if raw:
                text = summarize_profile(Path(raw), top=15)
                print(f"\n### OPC UA {'agent' if who == 'agent' else 'simulator (one of them)'} profile ({r.name})"
                      f"\n```\n{text}\n```")
    results_path = args.results or (work / "results.json" if args.smoke else ROOT / "benchmarks" / "results" / "latest.json")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps({
        "machine": machine_facts(), "argv": sys.argv[1:], "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": [r.__dict__ for r in results]}, indent=1, default=str))
    if args.smoke:
        # CI: the pipeline must deliver something end to end and drain completely
        e2e = [r for r in results if r.kind == "modbus"]
        drained = [r for r in results if r.kind == "drain"]
        opc = [r for r in results if r.kind == "opcua"]
        ok = ok and (bool(e2e) or not wanted("modbus")) and all(r.values["delivered"] > 0 for r in e2e) \
            and all(r.values["complete"] for r in drained) \
            and (not wanted("opcua") or (bool(opc) and all(r.values["delivered"] > 0 for r in opc)))
    print(f"\nresults: {results_path}; {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


def _deadband_only(args, work: Path) -> int:
    """`--only deadband`: report by exception on the demo line, with and without (benchmarks/deadband.py)."""
    from benchmarks import deadband

    print(f"# linetap benchmark: deadband ({'smoke' if args.smoke else 'standard'})", flush=True)
    results = deadband.run(work / "deadband", 3.0 if args.smoke else 60.0)
    deadband.report(results)
    results_path = args.results or (work / "results.json" if args.smoke else ROOT / "benchmarks" / "results" / "latest.json")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps({
        "machine": machine_facts(), "argv": sys.argv[1:], "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": results}, indent=1, default=str))
    print(f"\nresults: {results_path}")
    return 0


def _sink_only(args, work: Path) -> int:
    """`--only sink`: the MES-side runs alone (they need PostgreSQL; skipped with the reason without it)."""
    print(f"# linetap benchmark: sink ({'smoke' if args.smoke else 'standard'})", flush=True)
    print(machine_facts(), flush=True)
    print(f"workdir: {work}", flush=True)
    ok, results = sink_bench.run_all(work, smoke=args.smoke, pg_url=args.pg, units=args.units, samples=args.samples,
                                     unit_msgs=args.unit_messages, serials=args.serials, profile=args.profile,
                                     required=os.environ.get("LINETAP_REQUIRE_POSTGRES", "") not in
                                     ("", "0", "false", "no"))
    sink_bench.print_sink_table(results)
    results_path = args.results or (work / "results.json" if args.smoke else ROOT / "benchmarks" / "results" / "latest.json")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps({
        "machine": machine_facts(), "argv": sys.argv[1:], "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": [r.__dict__ for r in results]}, indent=1, default=str))
    print(f"\nresults: {results_path}; {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
