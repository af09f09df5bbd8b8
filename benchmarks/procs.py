"""Child processes of the benchmark: `python -m benchmarks.procs {sim,sim-opcua,agent,drain} ...`.

- `sim`: one Modbus station simulator (pymodbus server) on a free port. Prints one JSON line
  `{"port", "wall0", "speed"}` when it listens. Its model clock is `speed * (monotonic - mono0)`
  with `wall0 = time.time()` taken at the same instant, so model seconds map to wall time.
  On SIGTERM it writes the ground truth of every completed unit to `--truth` and exits.
- `sim-opcua`: one OPC UA station simulator (`OpcUaStationServer`, asyncua) on a free port with
  `--bulk N` Double items (`ns=<NAMESPACE_URI>;s=Bulk.B00000`...) that all change every
  `--bulk-interval` s. Prints one JSON line `{"port", "endpoint", "namespace", "wall0"}` when it
  listens. On SIGTERM it writes `{"writes", "bulk_writes", "seconds", ...}` to `--result`: the
  value writes it made and over what span, so the bench knows the change rate actually offered
  (a CPU-bound simulator falls behind the nominal N / interval).
- `agent`: `Agent(LineConfig).run()` from a JSON config file until SIGTERM; writes a result
  JSON (agent stats, forwarder stats, ru_maxrss) to `--result`.
- `drain`: only `MQTTForwarder` + `AsyncBuffer` over an existing buffer file (no devices),
  until SIGTERM: the backlog-drain measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _sim(args: argparse.Namespace) -> None:
    from linetap.agent.logs import configure_logging
    from linetap.simulators import ModbusStationServer, StationModel

    configure_logging("json", "warning")
    model = StationModel(seed=args.seed, cycle_time=args.cycle_time, out_of_limit_share=args.out_of_limit_share,
                         keep_units=100_000)
    mono0 = time.monotonic()
    wall0 = time.time()
    speed = args.speed
    server = ModbusStationServer(model, port=args.port, clock=lambda: (time.monotonic() - mono0) * speed)
    stop = _stop_on_signals()
    await server.start()
    print(json.dumps({"port": server.port, "wall0": wall0, "speed": speed}), flush=True)
    await stop.wait()
    server.snapshot()  # move the model to now: units finished since the last request count too
    await server.stop()
    if args.truth:
        units = [dataclasses.asdict(u) for u in model.completed_units]
        Path(args.truth).write_text(json.dumps({
            "wall0": wall0, "speed": speed, "ramp_time": model.ramp_time, "requests": server.requests,
            "units": units,
        }))


async def _sim_opcua(args: argparse.Namespace) -> None:
    from linetap.agent.logs import configure_logging
    from linetap.simulators import OpcUaStationServer, StationModel
    from linetap.simulators.opcua_server import NAMESPACE_URI

    configure_logging("json", "warning")
    if args.nice:
        os.nice(args.nice)
    model = StationModel(seed=args.seed, keep_units=1000)
    server = OpcUaStationServer(model, port=args.port, bulk_count=args.bulk, bulk_interval=args.bulk_interval)
    stop = _stop_on_signals()
    await server.start()
    wall0 = time.time()
    cpu0 = time.process_time()
    print(json.dumps({"port": server.port, "endpoint": server.endpoint, "namespace": NAMESPACE_URI,
                      "wall0": wall0}), flush=True)
    status = Path(args.status) if args.status else None
    while not stop.is_set():
        if status is not None:  # the bench reads the writes over its window from here
            tmp = status.with_name(status.name + ".tmp")
            tmp.write_text(json.dumps({"at": time.time(), "writes": server.writes, "bulk_writes": server.bulk_writes,
                                       "bulk_rounds": server.bulk_rounds, "bulk_late": server.bulk_late}))
            tmp.replace(status)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    wall1 = time.time()
    writes, bulk_writes, rounds, late = server.writes, server.bulk_writes, server.bulk_rounds, server.bulk_late
    cpu = time.process_time() - cpu0
    await server.stop()
    if args.result:
        Path(args.result).write_text(json.dumps({
            "wall0": wall0, "wall1": wall1, "seconds": wall1 - wall0, "writes": writes, "bulk_writes": bulk_writes,
            "bulk_rounds": rounds, "bulk_late": late, "cpu_s": cpu,
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }))


async def _agent(args: argparse.Namespace) -> None:
    from linetap.agent.logs import configure_logging
    from linetap.agent.runtime import Agent
    from linetap.config.models import LineConfig

    cfg = LineConfig.model_validate(json.loads(Path(args.config).read_text()))
    configure_logging("json", cfg.logging.level)
    agent = Agent(cfg)
    stop = _stop_on_signals()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _dump_tasks)
    await agent.run(stop)
    if args.result:
        fwd = agent.forwarder.stats if agent.forwarder is not None else None
        Path(args.result).write_text(json.dumps({
            "samples_buffered": agent.stats.samples_buffered,
            "commits": agent.stats.commits,
            "units": agent.stats.units,
            "devices": {n: {"state": d.state, "samples": d.samples, "batches": d.batches}
                        for n, d in agent.stats.devices.items()},
            "forwarder": dataclasses.asdict(fwd) if fwd is not None else None,
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }, default=str))


def _dump_tasks() -> None:
    """SIGUSR1: every asyncio task and where it waits, to stderr (the bench sends it when a stop hangs)."""
    print(f"--- SIGUSR1 task dump at {time.time():.3f}", file=sys.stderr)
    for task in asyncio.all_tasks():
        print(f"task {task.get_name()} done={task.done()} cancelling={task.cancelling()}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


async def _drain(args: argparse.Namespace) -> None:
    from linetap.agent.forwarder import MQTTForwarder
    from linetap.agent.logs import configure_logging
    from linetap.buffers import AsyncBuffer
    from linetap.config.models import LineConfig

    cfg = LineConfig.model_validate(json.loads(Path(args.config).read_text()))
    configure_logging("json", cfg.logging.level)
    stop = _stop_on_signals()
    buffer = await AsyncBuffer.open(cfg.buffer.path, cfg.agent.id)
    fwd = MQTTForwarder(cfg, buffer)
    print(json.dumps({"ready": True}), flush=True)
    task = asyncio.create_task(fwd.run())
    await stop.wait()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await buffer.close()
    if args.result:
        Path(args.result).write_text(json.dumps({
            "forwarder": dataclasses.asdict(fwd.stats),
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }, default=str))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.procs")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sim")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--speed", type=float, default=1.0)
    s.add_argument("--cycle-time", type=float, default=2.0)
    s.add_argument("--out-of-limit-share", type=float, default=1.0)
    s.add_argument("--truth")
    o = sub.add_parser("sim-opcua")
    o.add_argument("--port", type=int, default=0)
    o.add_argument("--seed", type=int, default=1)
    o.add_argument("--bulk", type=int, default=1000, help="bulk Double items, all changing every --bulk-interval")
    o.add_argument("--bulk-interval", type=float, default=0.1, help="seconds between changes of every bulk item")
    o.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority (the agent's comes first)")
    o.add_argument("--status", help="a JSON file rewritten every 0.5 s with the writes so far")
    o.add_argument("--result")
    for name in ("agent", "drain"):
        a = sub.add_parser(name)
        a.add_argument("config")
        a.add_argument("--result")
    args = p.parse_args(argv)
    fn = {"sim": _sim, "sim-opcua": _sim_opcua, "agent": _agent, "drain": _drain}[args.cmd]
    asyncio.run(fn(args))


if __name__ == "__main__":
    sys.exit(main())
