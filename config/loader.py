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

from . import files
from .envsubst import substitute
from .explain import issue_from, line_of
from .issues import ConfigError, ConfigIssue, Path_, format_path
from .models import LineConfig
from .sink import SinkConfig
from .yaml_doc import parse_yaml, to_plain

__all__ = ["ConfigError", "ConfigIssue", "config_json_schema", "load_config", "load_sink_config", "parse_config"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


# --------------------------------------------------------------------------------------------
# public API


def load_config(path: str | Path, check_buffer: bool = False) -> LineConfig:
    """Read, substitute, validate and resolve one line config file. Raises ConfigError."""
    path = Path(path)
    return parse_config(_read(path), file=str(path), base=path.absolute().parent, check_buffer=check_buffer)


def load_sink_config(path: str | Path) -> SinkConfig:
    """`linetap sink --config`: the same steps for the sink's settings file. Raises ConfigError."""
    path = Path(path)
    file = str(path)
    data, lines = _document(_read(path), file, None)
    try:
        cfg = SinkConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([issue_from(err, data, lines, file) for err in exc.errors()]) from None
    cfg = cfg.resolve_paths(path.absolute().parent)
    problems = files.mqtt_files(cfg.mqtt)
    if problems:
        raise ConfigError([ConfigIssue(file, line_of(p, lines), format_path(p), message) for p, message in problems])
    return cfg


def _read(path: Path) -> str:
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
    return text


def _document(text: str, file: str, environ: dict[str, str] | None) -> tuple[Any, dict[Path_, int]]:
    """The YAML as plain data with `${VAR}` substituted, and the line of every key; ConfigError for
    bad YAML, a literal password or an unset variable."""
    document = parse_yaml(text, file)
    data, lines = to_plain(document, file, text)
    env = os.environ if environ is None else environ
    issues: list[ConfigIssue] = literal_secrets(data, lines, file)
    data = substitute(data, (), env, lines, file, issues)
    if issues:
        raise ConfigError(issues)
    return data, lines


def parse_config(text: str, file: str = "<config>", base: Path | None = None,
                 environ: dict[str, str] | None = None, check_files: bool = True,
                 check_buffer: bool = False) -> LineConfig:
    """Like load_config, from a string. `base` resolves relative paths (default: current folder);
    `environ` replaces os.environ for `${VAR}` substitution; `check_files=False` skips opening the
    files the config names (certificates, keys, password files); `check_buffer` also checks that
    buffer.path can be created (`validate`)."""
    data, lines = _document(text, file, environ)
    try:
        cfg = LineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([issue_from(err, data, lines, file) for err in exc.errors()]) from None
    cfg = cfg.resolve_paths(base if base is not None else Path.cwd())
    if check_files:
        problems = files.check_files(cfg, buffer=check_buffer)
        if problems:
            raise ConfigError([ConfigIssue(file, line_of(path, lines), format_path(path), message)
                               for path, message in problems])
    return cfg


SECRET_KEYS = ("password", "private_key_password", "key_password")


def literal_secrets(data: Any, lines: dict[Path_, int], file: str) -> list[ConfigIssue]:
    """A password written in the file (not `${VAR}`) is an error unless `allow_literal_secrets: true`."""
    if not isinstance(data, dict) or data.get("allow_literal_secrets") is True:
        return []
    out: list[ConfigIssue] = []

    def walk(node: Any, path: Path_) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if key in SECRET_KEYS and isinstance(value, str) and value and "${" not in value:
                out.append(ConfigIssue(file, line_of((*path, key), lines), format_path((*path, key)),
                                       f"a password written in the file: give it as ${{ENV_VAR}} (set in the "
                                       f"environment of the process that reads this file)"
                                       f"{' or in a password file' if key == 'password' else ''}"
                                       "; for a test, set `allow_literal_secrets: true` at the top of the file"))
            else:
                walk(value, (*path, key))

    walk(data, ())
    return out


def config_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a line config file, for editors (YAML language server) and CI."""
    schema = LineConfig.model_json_schema(mode="validation")
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://linetap.dev/schemas/line-config.json",
        "title": "linetap line configuration",
        **{k: v for k, v in schema.items() if k != "title"},
    }

