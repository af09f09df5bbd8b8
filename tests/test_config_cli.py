"""`linetap validate` and `linetap schema` through the real command line, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_config_loader import VALID


def linetap(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linetap.agent.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def test_validate_ok(tmp_path: Path) -> None:
    path = tmp_path / "line.yaml"
    path.write_text(VALID)
    result = linetap("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK {path}: agent line3, 1 device(s), 2 tag(s)")
    assert str(tmp_path / "data" / "buffer.duckdb") in result.stdout


def test_validate_errors_exit_2_on_stderr(tmp_path: Path) -> None:
    path = tmp_path / "line.yaml"
    path.write_text(VALID.replace("port: 1883", "port: abc").replace("type: int16", "type: int61")
                    .replace("    addressing: zero_based\n", ""))
    result = linetap("validate", "line.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("line.yaml:9: mqtt.port: must be a whole number")
    assert lines[1].startswith("line.yaml:13: devices[0].addressing: missing required field")
    assert lines[2].startswith("line.yaml:23: devices[0].tags[1].type: must be one of: 'bool', 'bit'")
    assert len(lines) == 3
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("content", [b"agent: [\n", b"agent: 1\nagent: 2\n", b"", b"- x\n", b"\xff\xfe"])
def test_validate_broken_files_no_traceback(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "line.yaml"
    path.write_bytes(content)
    result = linetap("validate", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}:")
    assert "Traceback" not in result.stderr + result.stdout


def test_validate_missing_file(tmp_path: Path) -> None:
    result = linetap("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"{tmp_path / 'nope.yaml'}: file not found"
    assert "Traceback" not in result.stderr


def test_validate_missing_env(tmp_path: Path) -> None:
    path = tmp_path / "line.yaml"
    path.write_text(VALID.replace("host: broker.local", "host: ${LT_CLI_TEST_UNSET_VAR}"))
    result = linetap("validate", str(path))
    assert result.returncode == 2
    assert f"{path}:8: mqtt.host: environment variable LT_CLI_TEST_UNSET_VAR is not set" in result.stderr


def test_schema_is_json_schema() -> None:
    result = linetap("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"]
    assert {"agent", "devices"} <= set(schema["required"])
    assert schema["additionalProperties"] is False
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_rejects_what_the_loader_rejects() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from ruamel.yaml import YAML

    from linetap.config.loader import config_json_schema

    validator = jsonschema.Draft202012Validator(config_json_schema())
    good = YAML(typ="safe").load(VALID)
    assert not list(validator.iter_errors(good))
    bad = YAML(typ="safe").load(VALID.replace("type: int16", "type: int61").replace("port: 1883", "portt: 1"))
    messages = [e.message for e in validator.iter_errors(bad)]
    assert any("portt" in m for m in messages)
