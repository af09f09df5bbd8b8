"""The per-protocol device config models and their one registry.

The line model (`linetap.config.models.LineConfig`) reads `devices:` through `DeviceConfig`, a
union discriminated by `protocol:`. The drivers for them are in `linetap.drivers` (its REGISTRY
maps the same protocol names to driver classes).
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from .modbus import ModbusDeviceConfig
from .opcua import OpcUaDeviceConfig

# protocol -> config model: one line per protocol.
DEVICE_MODELS: dict[str, type] = {
    "modbus": ModbusDeviceConfig,
    "opcua": OpcUaDeviceConfig,
}

DeviceConfig = Annotated[
    Union[tuple(DEVICE_MODELS.values())],  # noqa: UP007
    Field(discriminator="protocol"),
]

__all__ = ["DEVICE_MODELS", "DeviceConfig", "ModbusDeviceConfig", "OpcUaDeviceConfig"]
