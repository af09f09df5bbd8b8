"""Every shipped example config loads; the reference config shows every option with its default;
the JSON Schema accepts the examples."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel
from ruamel.yaml import YAML

from linetap.config import models
from linetap.config.loader import config_json_schema, load_config
from linetap.drivers import REGISTRY

EXAMPLES = Path(models.__file__).parent / "examples"
REFERENCE = EXAMPLES / "line-reference.yaml"
# Whatever is there: other examples are added by other work; each must load.
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("*.yml"))


def test_there_are_examples() -> None:
    assert REFERENCE in EXAMPLE_FILES


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.devices
    assert cfg.buffer.path.is_absolute()


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_matches_json_schema(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    data = YAML(typ="safe").load(path.read_text())
    text = repr(data)
    if "${" in text:
        pytest.skip("uses ${ENV} substitution; the schema sees the raw text")
    jsonschema.Draft202012Validator(config_json_schema()).validate(data)


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """Every model reachable from root through its fields."""
    seen: list[type[BaseModel]] = []

    def visit(tp: object) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp in seen:
                return
            seen.append(tp)
            for field in tp.model_fields.values():
                visit(field.annotation)
            return
        for arg in typing.get_args(tp):
            visit(arg)

    visit(root)
    return seen


def test_reference_shows_every_option() -> None:
    """A new option (or protocol) must be added to line-reference.yaml, commented out if it has no default."""
    text = REFERENCE.read_text()
    keys = set(re.findall(r"(?:^|[\s{,#-])([A-Za-z_][A-Za-z0-9_]*):(?=\s)", text, re.MULTILINE))
    missing = {f"{model.__name__}.{name}" for model in _models(models.LineConfig)
               for name in model.model_fields if name not in keys}
    assert not missing, f"line-reference.yaml does not show: {sorted(missing)}"
    for protocol in REGISTRY:
        assert re.search(rf"^\s*- protocol: {protocol}\b", text, re.MULTILINE), f"no {protocol} device"


def test_reference_shows_the_defaults() -> None:
    cfg = load_config(REFERENCE)
    assert cfg.mqtt == models.MQTTConfig()
    assert cfg.logging == models.LoggingConfig()
    assert cfg.reconnect == models.LineConfig.model_fields["reconnect"].default
    default_buffer = models.BufferConfig()
    assert cfg.buffer.model_copy(update={"path": default_buffer.path}) == default_buffer
    assert cfg.buffer.path == REFERENCE.parent / default_buffer.path
    for device in cfg.devices:
        model = type(device)
        for name, field in model.model_fields.items():
            if not field.is_required() and name not in ("station", "host"):  # host: None only for rtu
                assert getattr(device, name) == field.default, f"{device.name}.{name} is not the default"
