"""`linetap simulate modbus|opcua`: a station simulator for tests, demos and commissioning."""

from __future__ import annotations

import contextlib

import typer

from .common import EXIT_RUNTIME, app, describe_os_error, run_until_signal


def _check_simulator_options(cycle_time: float, out_of_limit: float, speed: float) -> None:
    if not cycle_time > 0:
        raise typer.BadParameter("must be more than 0 seconds", param_hint="--cycle-time")
    if not 0 <= out_of_limit <= 1:
        raise typer.BadParameter("must be between 0 and 1 (a share of the units)", param_hint="--out-of-limit")
    if not speed > 0:
        raise typer.BadParameter("must be more than 0", param_hint="--speed")


@contextlib.contextmanager
def _cannot_serve(host: str, port: int | None):
    """A simulator that cannot listen (port taken, no such interface or serial port): a message and exit 3."""
    try:
        yield
    except (OSError, RuntimeError, ValueError, OverflowError) as err:
        cause = describe_os_error(err) if isinstance(err, OSError) else str(err)
        where = host if port is None else f"{host}:{port}"
        typer.echo(f"linetap simulate: cannot listen on {where}: {cause}", err=True)
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
    leak_tester: bool = typer.Option(True, help="also serve the leak tester after the sealer (unit id 2)"),
    serial: str | None = typer.Option(None, help="serve Modbus RTU on this serial port (e.g. /dev/ttyUSB1, "
                                      "or one end of a socat pty pair) instead of TCP"),
    baudrate: int = typer.Option(19200, help="with --serial: bits per second"),
    parity: str = typer.Option("E", help="with --serial: N, E or O (E: the Modbus serial spec's default)"),
    stopbits: int = typer.Option(1, min=1, max=2, help="with --serial: 1 or 2"),
) -> None:
    """Serve the heat-sealing station (unit id 1) and the leak tester after it (unit id 2) over Modbus TCP,
    or Modbus RTU on a serial port (--serial), until Ctrl-C."""
    from linetap.agent.logs import configure_logging
    from linetap.config.devices.modbus import BAUD_RATES
    from linetap.simulators.modbus_server import serve_modbus

    _check_simulator_options(cycle_time, out_of_limit, speed)
    if baudrate not in BAUD_RATES:
        raise typer.BadParameter(f"not a standard rate ({', '.join(map(str, BAUD_RATES))})", param_hint="--baudrate")
    if parity.upper() not in ("N", "E", "O"):
        raise typer.BadParameter("must be N, E or O", param_hint="--parity")
    line = {"baudrate": baudrate, "parity": parity.upper(), "stopbits": stopbits} if serial else None
    configure_logging("auto", "info")
    with _cannot_serve(serial or host, port if serial is None else None):
        run_until_signal(lambda stop: serve_modbus(host, port, cycle_time=cycle_time,
                                                    out_of_limit_share=out_of_limit, seed=seed, speed=speed,
                                                    stop=stop, leak_tester=leak_tester, serial=serial, line=line))


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
        run_until_signal(lambda stop: serve_opcua(host, port, cycle_time=cycle_time,
                                                   out_of_limit_share=out_of_limit, seed=seed, bulk_count=bulk,
                                                   stop=stop))
