"""Protocol drivers and their one registry.

Adding a protocol: its config model (`protocol: Literal["x"]`) in `linetap.config.devices` (one
file, one line in DEVICE_MODELS) and its Driver class here (one file, one line in REGISTRY).
"""

from __future__ import annotations

from .base import DeviceConfigError, DeviceUnreachable, Driver, DriverError, PollingDriver

# protocol -> "module:Driver class"; driver classes load lazily so that `linetap validate` does
# not import every protocol library.
REGISTRY: dict[str, str] = {
    "modbus": "linetap.drivers.modbus:ModbusDriver",
    "opcua": "linetap.drivers.opcua:OpcUaDriver",
}


def create_driver(config) -> Driver:
    """The driver for one device's config."""
    import importlib

    target = REGISTRY[config.protocol]
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(config)


__all__ = [
    "DeviceConfigError",
    "DeviceUnreachable",
    "Driver",
    "DriverError",
    "PollingDriver",
    "REGISTRY",
    "create_driver",
]
