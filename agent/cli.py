"""The `linetap` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

app = typer.Typer(
    name="linetap",
    help="linetap: edge data collection for regulated manufacturing.\n\n"
    "Reads PLCs over Modbus / OPC UA, keeps everything in a local DuckDB buffer, forwards it to the "
    "plant MQTT broker at least once, in order.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_CONFIG = 2  # the config file is wrong: fix it and run again


def _load_or_exit(path: Path):
    from linetap.config.loader import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(EXIT_CONFIG) from None


@app.command()
def validate(config: Path = typer.Argument(..., help="line config (YAML)")) -> None:
    """Check a config file. Prints OK and a summary, or every error as FILE:LINE: field: message (exit 2)."""
    cfg = _load_or_exit(config)
    tags = sum(len(d.tags) for d in cfg.devices)
    typer.echo(
        f"OK {config}: agent {cfg.agent.id}, {len(cfg.devices)} device(s), {tags} tag(s), "
        f"broker {cfg.mqtt.host}:{cfg.mqtt.port}, topics {cfg.topic_root}/..., buffer {cfg.buffer.path}"
    )


@app.command()
def schema() -> None:
    """Print the JSON Schema of the config file (for editor completion and validation)."""
    from linetap.config.loader import config_json_schema

    json.dump(config_json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


EXIT_RUNTIME = 3  # the agent could not start or stopped on an error (buffer, permissions, ...)


def _run_until_signal(coro_factory) -> None:
    """Run `coro_factory(stop)` with SIGINT/SIGTERM setting `stop` (a clean, flushed shutdown)."""
    import asyncio
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await coro_factory(stop)

    asyncio.run(main())


@app.command()
def run(config: Path = typer.Argument(..., help="line config (YAML)")) -> None:
    """Run the agent until SIGINT/SIGTERM; then stop cleanly (everything buffered is kept)."""
    from linetap.agent.logs import configure_logging
    from linetap.agent.runtime import Agent
    from linetap.buffers import BufferError

    cfg = _load_or_exit(config)
    configure_logging(cfg.logging.format, cfg.logging.level)
    try:
        _run_until_signal(Agent(cfg).run)
    except BufferError as err:
        typer.echo(f"linetap: {err}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None


@app.command()
def status(config: Path = typer.Argument(..., help="line config (YAML)")) -> None:
    """Buffer depth per stream, oldest unsent record, cursors, devices (from the running agent or the file)."""
    from linetap.agent.status import print_status

    cfg = _load_or_exit(config)
    raise typer.Exit(print_status(cfg))


simulate_app = typer.Typer(help="Run a station simulator (a heat sealer) for tests, demos and commissioning.",
                           no_args_is_help=True)
app.add_typer(simulate_app, name="simulate")


@simulate_app.command("modbus")
def simulate_modbus(
    port: int = typer.Option(5020, help="TCP port (0 = any free port)"),
    host: str = typer.Option("127.0.0.1", help="interface to bind (0.0.0.0 for all)"),
    cycle_time: float = typer.Option(2.0, help="seconds per unit"),
    out_of_limit: float = typer.Option(0.1, help="share of units made out of limits (0..1)"),
    seed: int = typer.Option(1, help="random seed (same seed, same units)"),
) -> None:
    """Serve the heat-sealing station over Modbus TCP until Ctrl-C."""
    from linetap.simulators.modbus_server import serve_modbus

    typer.echo(f"Modbus station simulator on {host}:{port} (Ctrl-C to stop)")
    _run_until_signal(lambda stop: serve_modbus(host, port, cycle_time=cycle_time,
                                                out_of_limit_share=out_of_limit, seed=seed, stop=stop))


@app.command()
def demo(
    broker: str | None = typer.Option(None, help="use this broker (host:port) instead of starting one"),
    duration: float | None = typer.Option(None, help="stop after this many seconds (default: until Ctrl-C)"),
    tags: int = typer.Option(200, help="extra bulk tags to poll besides the station's own"),
    interval: str = typer.Option("100ms", help="poll interval"),
) -> None:
    """Simulator + broker + agent + subscriber on this machine, with a live view. Needs nothing installed."""
    from linetap.agent.demo import run_demo

    _run_until_signal(lambda stop: run_demo(stop, broker=broker, duration=duration, bulk_tags=tags,
                                            interval=interval))


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
