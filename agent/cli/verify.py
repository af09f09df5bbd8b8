"""`linetap verify FILE...`: check captures of what the MES received."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import EXIT_CONFIG, EXIT_RUNTIME, app, describe_os_error


@app.command()
def verify(files: list[Path] = typer.Argument(..., help="JSON Lines captures of the MQTT stream or exports, "
                                                         "or one folder written by `linetap archive`")) -> None:
    """Check captured records: hash chains, missing seqs, differing duplicates, order; or an archive folder:
    every file as its manifest says, chains intact across the months. Exit 1 on any finding."""
    from linetap.buffers.verify import render
    from linetap.buffers.verify import verify as do_verify

    missing = [str(f) for f in files if not f.exists()]
    if missing:
        typer.echo(f"linetap: no such file: {', '.join(missing)}", err=True)
        raise typer.Exit(EXIT_CONFIG)
    if len(files) == 1 and (files[0] / "manifest.json").is_file():
        _verify_archive(files[0])
    folders = [str(f) for f in files if f.is_dir()]
    if folders:
        typer.echo(f"linetap: a folder, not a capture file: {', '.join(folders)} (give the .jsonl files in it, "
                   "or one archive folder with its manifest.json)", err=True)
        raise typer.Exit(EXIT_CONFIG)
    try:
        report = do_verify(files)
    except OSError as err:
        typer.echo(f"linetap verify: cannot read {err.filename or 'a file'}: {describe_os_error(err)}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None
    typer.echo(render(report))
    raise typer.Exit(0 if report.ok else 1)


def _verify_archive(folder: Path) -> None:
    from linetap.agent.sink.archive import render, verify_archive

    try:
        report = verify_archive(folder)
    except OSError as err:
        typer.echo(f"linetap verify: cannot read {err.filename or 'a file'}: {describe_os_error(err)}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None
    except (ValueError, KeyError) as err:  # a manifest that is not JSON, or not an archive's
        typer.echo(f"linetap verify: {folder / 'manifest.json'} is not a linetap archive manifest: {err}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    typer.echo(render(report))
    raise typer.Exit(0 if report.ok else 1)
