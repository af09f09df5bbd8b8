"""OPC UA: the driver (`driver`), errors in words (`errors`), browse-path identity
(`identity`) and the type check of values (`types`). `linetap.drivers.opcua:OpcUaDriver` is the
registry's entry."""

from __future__ import annotations

from .driver import OpcUaDriver

__all__ = ["OpcUaDriver"]
