"""The `linetap` command line."""

from __future__ import annotations

import contextlib
import json
import re
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


def describe_os_error(err: OSError) -> str:
    return err.strerror or str(err)


@app.callback()
def _quiet_logs() -> None:
    """Every command logs warnings and errors to stderr; `run` and `simulate` set their own level.
    (structlog unconfigured would print debug lines, tracebacks included, on stdout.)"""
    from linetap.agent.logs import configure_logging

    configure_logging("auto", "warning")


def _load_or_exit(path: Path, check_buffer: bool = False):
    from linetap.config.loader import ConfigError, load_config

    try:
        return load_config(path, check_buffer=check_buffer)
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(EXIT_CONFIG) from None


@app.command()
def validate(config: Path = typer.Argument(..., help="line config (YAML)")) -> None:
    """Check a config file. Prints OK and a summary, or every error as FILE:LINE: field: message (exit 2)."""
    cfg = _load_or_exit(config, check_buffer=True)
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


def _run_until_signal(coro_factory):
    """Run `coro_factory(stop)` with SIGINT/SIGTERM setting `stop` (a clean, flushed shutdown); return its result."""
    import asyncio
    import signal

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await coro_factory(stop)

    return asyncio.run(main())


def _exit_on_sigterm_until_running() -> None:
    """A stop (systemd, a test) that arrives while the agent is still starting: nothing is open
    yet, so exit 0 at once instead of dying by the signal. The event loop's handler replaces this."""
    import signal

    def stop_now(_signum, _frame) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_now)


@app.command()
def run(config: Path = typer.Argument(..., help="line config (YAML)")) -> None:
    """Run the agent until SIGINT/SIGTERM; then stop cleanly (everything buffered is kept)."""
    _exit_on_sigterm_until_running()
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


def _check_simulator_options(cycle_time: float, out_of_limit: float, speed: float) -> None:
    if not cycle_time > 0:
        raise typer.BadParameter("must be more than 0 seconds", param_hint="--cycle-time")
    if not 0 <= out_of_limit <= 1:
        raise typer.BadParameter("must be between 0 and 1 (a share of the units)", param_hint="--out-of-limit")
    if not speed > 0:
        raise typer.BadParameter("must be more than 0", param_hint="--speed")


@contextlib.contextmanager
def _cannot_serve(host: str, port: int):
    """A simulator that cannot listen (port taken, no such interface): a message and exit 3."""
    try:
        yield
    except (OSError, RuntimeError, ValueError, OverflowError) as err:
        cause = describe_os_error(err) if isinstance(err, OSError) else str(err)
        typer.echo(f"linetap simulate: cannot listen on {host}:{port}: {cause}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None


simulate_app = typer.Typer(help="Run a station simulator (a heat sealer) for tests, demos and commissioning.",
                           no_args_is_help=True)
app.add_typer(simulate_app, name="simulate")


@simulate_app.command("modbus")
def simulate_modbus(
    port: int = typer.Option(5020, min=0, max=65535, help="TCP port (0 = any free port)"),
    host: str = typer.Option("127.0.0.1", help="interface to bind (0.0.0.0 for all)"),
    cycle_time: float = typer.Option(2.0, help="seconds per unit"),
    out_of_limit: float = typer.Option(0.1, help="share of units made out of limits (0..1)"),
    seed: int = typer.Option(1, help="random seed (same seed, same units)"),
    speed: float = typer.Option(1.0, help="model seconds per real second (e.g. 10 for fast tests)"),
) -> None:
    """Serve the heat-sealing station over Modbus TCP until Ctrl-C."""
    from linetap.agent.logs import configure_logging
    from linetap.simulators.modbus_server import serve_modbus

    _check_simulator_options(cycle_time, out_of_limit, speed)
    configure_logging("auto", "info")
    with _cannot_serve(host, port):
        _run_until_signal(lambda stop: serve_modbus(host, port, cycle_time=cycle_time,
                                                    out_of_limit_share=out_of_limit, seed=seed, speed=speed,
                                                    stop=stop))


@simulate_app.command("opcua")
def simulate_opcua(
    port: int = typer.Option(4840, min=0, max=65535, help="TCP port (0 = any free port)"),
    host: str = typer.Option("127.0.0.1", help="interface to bind (0.0.0.0 for all)"),
    cycle_time: float = typer.Option(2.0, help="seconds per unit"),
    out_of_limit: float = typer.Option(0.1, help="share of units made out of limits (0..1)"),
    seed: int = typer.Option(1, help="random seed (same seed, same units)"),
    bulk: int = typer.Option(0, help="extra Double variables under Line/Bulk, changing every 100 ms (load tests)"),
) -> None:
    """Serve the heat-sealing station over OPC UA (Objects/Line/Sealer1/...) until Ctrl-C."""
    from linetap.agent.logs import configure_logging
    from linetap.simulators.opcua_server import serve_opcua

    _check_simulator_options(cycle_time, out_of_limit, 1.0)
    if bulk < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--bulk")
    configure_logging("auto", "info")
    with _cannot_serve(host, port):
        _run_until_signal(lambda stop: serve_opcua(host, port, cycle_time=cycle_time,
                                                   out_of_limit_share=out_of_limit, seed=seed, bulk_count=bulk,
                                                   stop=stop))


EXIT_DEMO_FAILED = 1  # the demo ran, but the MES did not receive what it should (or the chains did not verify)


@app.command()
def demo(
    broker: str | None = typer.Option(None, help="use this broker (HOST:PORT) instead of starting one"),
    duration: float | None = typer.Option(None, help="stop after this many seconds (default: until Ctrl-C)"),
    tags: int = typer.Option(200, help="extra bulk tags to poll besides the station's own"),
    interval: str = typer.Option("100ms", help="poll interval"),
) -> None:
    """Simulator + broker + agent + subscriber on this machine, with a live view. Needs nothing installed.

    Ends with what the MES stand-in received; exit 0 only if telemetry, unit records and events
    arrived and their hash chains verified, else 1.
    """
    from linetap.agent.demo import DemoError, parse_broker, run_demo
    from linetap.config.units import parse_duration
    from linetap.simulators import BULK_COUNT

    # every check before anything starts: a typo is a usage error (exit 2), not a half-started line
    if duration is not None and not duration > 0:  # `not >` also refuses nan
        raise typer.BadParameter("must be more than 0 seconds (leave it out to run until Ctrl-C)",
                                 param_hint="--duration")
    if not 0 <= tags <= BULK_COUNT:
        raise typer.BadParameter(f"must be 0..{BULK_COUNT} (the simulator's bulk block)", param_hint="--tags")
    try:
        poll = parse_duration(interval)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--interval") from None
    if not poll > 0:
        raise typer.BadParameter("must be more than 0 (e.g. 100ms)", param_hint="--interval")
    try:
        broker_addr = parse_broker(broker) if broker is not None else None
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--broker") from None
    try:
        result = _run_until_signal(lambda stop: run_demo(stop, broker=broker_addr, duration=duration,
                                                         bulk_tags=tags, interval=poll))
    except DemoError as err:
        typer.echo(f"linetap demo: {err}", err=True)
        raise typer.Exit(EXIT_DEMO_FAILED) from None
    typer.echo(result.summary())
    raise typer.Exit(0 if result.ok else EXIT_DEMO_FAILED)


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


@app.command()
def export(
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
    from linetap.agent.export import export as do_export
    from linetap.buffers import BufferError

    if stream not in ("telemetry", "units", "events"):
        raise typer.BadParameter("expected telemetry, units or events", param_hint="--stream")
    if format not in ("jsonl", "csv", "parquet"):
        raise typer.BadParameter("expected jsonl, csv or parquet", param_hint="--format")
    if output is not None:
        _writable_output(output)
    cfg = _load_or_exit(config)
    try:
        n = do_export(cfg, stream, format, output, from_seq=from_seq, to_seq=to_seq,
                      since_us=_iso_to_us(since, "--since"), until_us=_iso_to_us(until, "--until"))
    except (BufferError, ValueError) as err:
        typer.echo(f"linetap: {err}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None
    except OSError as err:
        typer.echo(f"linetap export: cannot write {output or 'the output'}: {describe_os_error(err)}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None
    typer.echo(f"exported {n} {stream} rows" + (f" to {output}" if output else ""), err=True)


@app.command()
def replay(
    config: Path = typer.Argument(..., help="line config (YAML)"),
    stream: str = typer.Option(..., help="telemetry, units or events"),
    from_seq: int = typer.Option(..., help="first seq to re-send"),
    to_seq: int | None = typer.Option(None, help="last seq to re-send (default: the last one)"),
) -> None:
    """Re-send a range of one stream to the broker (same ids), e.g. when the MES asks for it. Stop the agent first."""
    from linetap.agent.replay import replay as do_replay
    from linetap.buffers import BufferError

    if stream not in ("telemetry", "units", "events"):
        raise typer.BadParameter("expected telemetry, units or events", param_hint="--stream")
    cfg = _load_or_exit(config)
    try:
        n = do_replay(cfg, stream, from_seq, to_seq)
    except (BufferError, OSError, RuntimeError, TimeoutError) as err:
        typer.echo(f"linetap: replay failed: {err}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None
    typer.echo(f"re-sent {n} {stream} records from seq {from_seq}")


@app.command()
def verify(files: list[Path] = typer.Argument(..., help="JSON Lines captures of the MQTT stream or exports")) -> None:
    """Check captured records: hash chains, missing seqs, differing duplicates, order. Exit 1 on any finding."""
    from linetap.buffers.verify import render
    from linetap.buffers.verify import verify as do_verify

    missing = [str(f) for f in files if not f.exists()]
    if missing:
        typer.echo(f"linetap: no such file: {', '.join(missing)}", err=True)
        raise typer.Exit(EXIT_CONFIG)
    folders = [str(f) for f in files if f.is_dir()]
    if folders:
        typer.echo(f"linetap: a folder, not a capture file: {', '.join(folders)} (give the .jsonl files in it)",
                   err=True)
        raise typer.Exit(EXIT_CONFIG)
    try:
        report = do_verify(files)
    except OSError as err:
        typer.echo(f"linetap verify: cannot read {err.filename or 'a file'}: {describe_os_error(err)}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None
    typer.echo(render(report))
    raise typer.Exit(0 if report.ok else 1)


certs_app = typer.Typer(help="OPC UA application certificates for secured connections.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")


@certs_app.command("create")
def certs_create(
    cert: Path = typer.Option(Path("pki/linetap-cert.der"), help="certificate file (.der or .pem)"),
    key: Path = typer.Option(Path("pki/linetap-key.pem"), help="private key file (PEM, mode 0600)"),
    application_uri: str | None = typer.Option(None, help="default: urn:linetap:<hostname>:linetap"),
    host: list[str] | None = typer.Option(None, help="DNS name or IP for the certificate (repeat); "
                                           "default: this host, localhost, 127.0.0.1"),
    days: int = typer.Option(3650, help="validity in days"),
    overwrite: bool = typer.Option(False, help="replace existing files"),
) -> None:
    """Create a self-signed OPC UA client certificate and key; give the certificate to the PLC engineer."""
    from linetap.agent.certs import create_certificate, describe_certificate

    for option, path in (("--cert", cert), ("--key", key)):
        if path.is_dir():
            raise typer.BadParameter(f"{path} is a folder: give a file name", param_hint=option)
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise typer.BadParameter(f"{parent} is a file, not a folder", param_hint=option)
    try:
        create_certificate(cert, key, application_uri=application_uri, hostnames=host or None, days=days,
                           overwrite=overwrite)
    except (FileExistsError, ValueError) as err:
        typer.echo(f"linetap certs create: {err}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    except OSError as err:
        typer.echo(f"linetap certs create: cannot write {err.filename or cert}: {describe_os_error(err)}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    typer.echo(f"wrote {cert} and {key}\n{describe_certificate(cert)}\n"
               f"Next: copy {cert} (not the key) into the server's trusted certificates.")


@app.command()
def browse(
    endpoint: str = typer.Argument(..., help="opc.tcp://host:port"),
    root: str | None = typer.Option(None, help="start node: node id or path from Objects (e.g. Line/Sealer1)"),
    depth: int = typer.Option(6, min=0, max=100, help="levels below the root"),
    policy: str = typer.Option("None", help="None, Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss"),
    mode: str | None = typer.Option(None, help="Sign or SignAndEncrypt (default with a policy)"),
    cert: Path | None = typer.Option(None, help="client certificate"),
    key: Path | None = typer.Option(None, help="client private key"),
    server_cert: Path | None = typer.Option(None, help="trusted server certificate"),
    trust_dir: Path | None = typer.Option(None, help="folder of trusted server certificates"),
    username: str | None = typer.Option(None, help="user name (password from $LINETAP_OPCUA_PASSWORD)"),
) -> None:
    """Print the variables of an OPC UA server as a YAML tag map for an opcua device."""
    import os

    from pydantic import ValidationError

    from linetap.agent.browse import browse as do_browse
    from linetap.drivers import DriverError

    if not re.match(r"^opc\.tcp://[^/:\s]+(:\d+)?(/.*)?$", endpoint):
        raise typer.BadParameter(f"{endpoint!r} is not an OPC UA endpoint; write it like opc.tcp://192.168.0.10:4840",
                                 param_hint="ENDPOINT")
    port_text = re.match(r"^opc\.tcp://[^/:]+:(\d+)", endpoint)
    if port_text and not 1 <= int(port_text.group(1)) <= 65535:
        raise typer.BadParameter("the port must be 1..65535", param_hint="ENDPOINT")
    for option, path in (("--cert", cert), ("--key", key), ("--server-cert", server_cert)):
        if path is not None and not path.is_file():
            raise typer.BadParameter(f"{path} {'is a folder' if path.is_dir() else 'does not exist'}",
                                     param_hint=option)
    if trust_dir is not None and not trust_dir.is_dir():
        raise typer.BadParameter(f"{trust_dir} is not a folder", param_hint="--trust-dir")
    security = {"policy": policy, "mode": mode, "certificate": cert, "private_key": key,
                "server_certificate": server_cert, "trust_dir": trust_dir, "username": username,
                "password": os.environ.get("LINETAP_OPCUA_PASSWORD") if username else None}
    try:
        typer.echo(do_browse(endpoint, root, depth,
                             security={k: v for k, v in security.items() if v is not None}), nl=False)
    except ValidationError as err:
        typer.echo(f"linetap browse: {err.errors()[0]['msg']}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    except DriverError as err:
        typer.echo(f"linetap browse: {err}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None


from linetap.sink.cli import register as _register_mes_commands  # noqa: E402

_register_mes_commands(app)  # `linetap sink`, `audit`, `trace`: the MES side (sink/cli.py)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
