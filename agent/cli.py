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


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
