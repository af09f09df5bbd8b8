"""Read a line config (YAML) into a validated `LineConfig`, with errors as FILE:LINE: field: message.

    cfg = load_config("line-3.yaml")          # LineConfig, paths resolved against the file's folder

Steps: read the file (UTF-8), parse it with ruamel.yaml's round-trip loader (which keeps the line of
every mapping key and sequence item, and refuses duplicate keys), substitute `${VAR}` /
`${VAR:-default}` in string values from the environment, validate with pydantic, then resolve
relative paths. Everything that can be wrong with the file is raised as one `ConfigError` carrying
every issue found, each pointing at a line of the file; nothing else escapes for a bad file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .envsubst import substitute
from .explain import issue_from
from .issues import ConfigError, ConfigIssue
from .models import LineConfig
from .yaml_doc import parse_yaml, to_plain

__all__ = ["ConfigError", "ConfigIssue", "config_json_schema", "load_config", "parse_config"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


# --------------------------------------------------------------------------------------------
# public API


def load_config(path: str | Path) -> LineConfig:
    """Read, substitute, validate and resolve one line config file. Raises ConfigError."""
    path = Path(path)
    name = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(name, None, "", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError([ConfigIssue(name, None, "", "is a folder, not a config file")]) from None
    except OSError as exc:
        raise ConfigError([ConfigIssue(name, None, "", f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(name, line, "", f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                                       "save the file as UTF-8")]) from None
    return parse_config(text, file=name, base=path.absolute().parent)


def parse_config(text: str, file: str = "<config>", base: Path | None = None,
                 environ: dict[str, str] | None = None) -> LineConfig:
    """Like load_config, from a string. `base` resolves relative paths (default: current folder);
    `environ` replaces os.environ for `${VAR}` substitution."""
    document = parse_yaml(text, file)
    data, lines = to_plain(document, file, text)
    env = os.environ if environ is None else environ
    issues: list[ConfigIssue] = []
    data = substitute(data, (), env, lines, file, issues)
    if issues:
        raise ConfigError(issues)
    try:
        cfg = LineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([issue_from(err, data, lines, file) for err in exc.errors()]) from None
    return cfg.resolve_paths(base if base is not None else Path.cwd())


def config_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a line config file, for editors (YAML language server) and CI."""
    schema = LineConfig.model_json_schema(mode="validation")
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://linetap.dev/schemas/line-config.json",
        "title": "linetap line configuration",
        **{k: v for k, v in schema.items() if k != "title"},
    }

