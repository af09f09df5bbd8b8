"""Modbus: read planning (`plan`), block decoding (`decode`), reply checks (`reply`) and the driver
(`driver`). `linetap.drivers.modbus:ModbusDriver` is the registry's entry."""

from __future__ import annotations

from .driver import ModbusDriver
from .plan import ReadBlock, plan_reads, split_block

__all__ = ["ModbusDriver", "ReadBlock", "plan_reads", "split_block"]
