"""`linetap run` (the agent until SIGINT/SIGTERM) and `linetap status`."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import (
    EXIT_RUNTIME,
    app,
    exit_on_sigterm_until_running,
    load_or_exit,
    run_until_signal,
)


@app.command()
def run(config: Path = typer.Argument(..., help="line config (YAML)")) -> None:
    """Run the agent until SIGINT/SIGTERM; then stop cleanly (everything buffered is kept)."""
    exit_on_sigterm_until_running()
    from linetap.agent.capture import config_version
    from linetap.agent.logs import configure_logging, get_logger
    from linetap.agent.runtime import Agent
    from linetap.buffers import BufferError

    cfg = load_or_exit(config)
    configure_logging(cfg.logging.format, cfg.logging.level)
    log = get_logger("linetap.agent")

    def hangup() -> None:  # systemd's ExecReload; a hot reload is not built yet
        log.warning("SIGHUP: this version cannot reload its configuration while running; it keeps running "
                    "on the config it started with: restart it to apply a changed file",
                    config=str(config), config_version=config_version(cfg))

    try:
        run_until_signal(Agent(cfg).run, on_hangup=hangup)
    except BufferError as err:
        typer.echo(f"linetap: {err}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None


@app.command()
def status(config: Path = typer.Argument(..., help="line config (YAML)")) -> None:
    """Buffer depth per stream, oldest unsent record, cursors, devices (from the running agent or the file)."""
    from linetap.agent.cli.status import print_status

    cfg = load_or_exit(config)
    raise typer.Exit(print_status(cfg))
