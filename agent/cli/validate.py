"""`linetap validate` and `linetap schema`: check a line config, print its JSON Schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from .common import app, load_or_exit


@app.command()
def validate(config: Path = typer.Argument(..., help="line config (YAML)")) -> None:
    """Check a config file. Prints OK and a summary, or every error as FILE:LINE: field: message (exit 2)."""
    cfg = load_or_exit(config, check_buffer=True)
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
