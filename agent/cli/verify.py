"""`linetap verify FILE...`: check captures of what the MES received."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import EXIT_CONFIG, EXIT_RUNTIME, app, describe_os_error


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
