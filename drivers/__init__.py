"""Protocol drivers and their one registry.

Adding a protocol: a new file with a config model (`protocol: Literal["x"]`) and a Driver
class, plus one line in REGISTRY.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from .base import DeviceConfigError, DeviceUnreachable, Driver, DriverError, PollingDriver
from .modbus import ModbusDeviceConfig
from .opcua import OpcUaDeviceConfig

# protocol -> (config model, "module:Driver class"); driver classes load lazily so that
# `linetap validate` does not import every protocol library.
REGISTRY: dict[str, tuple[type, str]] = {
    "modbus": (ModbusDeviceConfig, "linetap.drivers.modbus:ModbusDriver"),
    "opcua": (OpcUaDeviceConfig, "linetap.drivers.opcua:OpcUaDriver"),
}

DeviceConfig = Annotated[
    Union[tuple(model for model, _ in REGISTRY.values())],  # noqa: UP007
    Field(discriminator="protocol"),
]


def create_driver(config) -> Driver:
    """The driver for one device's config."""
    import importlib

    _, target = REGISTRY[config.protocol]
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(config)


__all__ = [
    "DeviceConfig",
    "DeviceConfigError",
    "DeviceUnreachable",
    "Driver",
    "DriverError",
    "PollingDriver",
    "REGISTRY",
    "create_driver",
]
