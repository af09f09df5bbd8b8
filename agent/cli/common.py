"""What every `linetap` command shares: the Typer app, exit codes, config loading, signals."""

from __future__ import annotations

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


def load_or_exit(path: Path, check_buffer: bool = False):
    from linetap.config.loader import ConfigError, load_config

    try:
        return load_config(path, check_buffer=check_buffer)
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(EXIT_CONFIG) from None


EXIT_RUNTIME = 3  # the agent could not start or stopped on an error (buffer, permissions, ...)


def run_until_signal(coro_factory, on_hangup=None):
    """Run `coro_factory(stop)` with SIGINT/SIGTERM setting `stop` (a clean, flushed shutdown); return its result.
    `on_hangup`: called on SIGHUP (systemd's ExecReload) instead of the default, which would kill the process."""
    import asyncio
    import signal

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        handlers = [(signal.SIGINT, stop.set), (signal.SIGTERM, stop.set)]
        if on_hangup is not None and hasattr(signal, "SIGHUP"):  # no SIGHUP on Windows
            handlers.append((signal.SIGHUP, on_hangup))
        for sig, handler in handlers:
            try:
                loop.add_signal_handler(sig, handler)
            except NotImplementedError:  # Windows' event loops: a plain handler, handed to the loop
                signal.signal(sig, lambda *_, h=handler: loop.call_soon_threadsafe(h))
        return await coro_factory(stop)

    return asyncio.run(main())


def exit_on_sigterm_until_running() -> None:
    """A stop (systemd, a test) that arrives while the agent is still starting: nothing is open
    yet, so exit 0 at once instead of dying by the signal. The event loop's handler replaces this."""
    import signal

    def stop_now(_signum, _frame) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_now)


