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
    from linetap.agent.logs import configure_logging
    from linetap.agent.runtime import Agent
    from linetap.buffers import BufferError

    cfg = load_or_exit(config)
    configure_logging(cfg.logging.format, cfg.logging.level)
    agent = Agent(cfg)
    try:
        run_until_signal(agent.run, on_hangup=lambda: agent.reloader.request(config))  # SIGHUP: re-read the file
    except BufferError as err:
        typer.echo(f"linetap: {err}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None


@app.command()
def reload(config: Path = typer.Argument(..., help="line config (YAML) of the running agent")) -> None:
    """Check CONFIG, then have the running agent re-read it (SIGHUP): devices and stations change without
    a restart; its log says what was applied, or why not."""
    import os
    import signal

    import orjson

    from linetap.agent.status_file import status_path

    cfg = load_or_exit(config)  # a file that does not validate is reported here, the agent is not disturbed
    if not hasattr(signal, "SIGHUP"):
        typer.echo("linetap reload: this platform has no SIGHUP: restart the service to apply the file", err=True)
        raise typer.Exit(EXIT_RUNTIME)
    path = status_path(cfg)
    try:
        pid = int(orjson.loads(path.read_bytes())["pid"])
        os.kill(pid, 0)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if Path("/proc").is_dir() else None
    except (OSError, ValueError, KeyError, TypeError):
        typer.echo(f"linetap reload: no running agent for {config} (no live pid in {path}): start it with "
                   f"linetap run {config}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None
    # `linetap run ...` or `python -m linetap.agent.cli run ...` (no /proc: trust the status file)
    if argv is not None and not (b"run" in argv and any(Path(a.decode(errors="replace")).name == "linetap"
                                                        or a == b"linetap.agent.cli" for a in argv)):
        typer.echo(f"linetap reload: pid {pid} from {path} is not a linetap agent (a stale status file): "
                   "nothing signalled", err=True)
        raise typer.Exit(EXIT_RUNTIME)
    os.kill(pid, signal.SIGHUP)
    typer.echo(f"asked the agent (pid {pid}) to reload {config}: its log says what it applied "
               "(`config reloaded`), or why not (`config reload refused` / `failed`)")


@app.command()
def status(config: Path = typer.Argument(..., help="line config (YAML)")) -> None:
    """Buffer depth per stream, oldest unsent record, cursors, devices (from the running agent or the file)."""
    from linetap.agent.cli.status import print_status

    cfg = load_or_exit(config)
    raise typer.Exit(print_status(cfg))
