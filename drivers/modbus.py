"""Modbus TCP driver (pymodbus async client): config model and driver."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from linetap.config.units import Duration

ModbusTable = Literal["holding", "input", "coil", "discrete"]
ModbusType = Literal[
    "bool", "bit", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

# Registers per value, for the fixed-size register types.
REGISTER_WIDTH = {"bit": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2,
                  "int64": 4, "uint64": 4, "float64": 4}


class ModbusTag(BaseModel):
    """One value in the device's Modbus map."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", description="tag name, unique per device")
    table: ModbusTable = Field("holding", description="holding | input registers, coil | discrete input")
    address: int = Field(ge=0, le=65536, description="register/bit address, in the device's `addressing`")
    type: ModbusType = Field("uint16", description="data type; coils and discrete inputs are bool")
    order: ByteOrder = Field(
        "ABCD",
        description="byte/word order of multi-byte values: ABCD big-endian, CDAB word-swapped, "
        "BADC byte-swapped, DCBA little-endian (64-bit values extend the same pattern)",
    )
    length: int | None = Field(None, ge=1, le=125, description="string length in registers (2 chars each)")
    bit: int | None = Field(None, ge=0, le=15, description="bit number (0 = least significant) for type bit")
    scale: float = Field(1.0, description="engineering value = raw * scale + offset")
    offset: float = 0.0
    unit: str | None = Field(None, description="engineering unit, e.g. degC, bar, s")
    description: str | None = None

    @model_validator(mode="after")
    def _check_type_fits_table(self) -> Self:
        if self.table in ("coil", "discrete"):
            if self.type != "bool":
                raise ValueError(f"a {self.table} holds one bit: type must be bool, not {self.type}")
        elif self.type == "bool":
            raise ValueError("type bool is for coils and discrete inputs; use type bit with `bit:` for a bit in a register")
        if self.type == "string" and self.length is None:
            raise ValueError("type string needs `length` (registers)")
        if self.type != "string" and self.length is not None:
            raise ValueError("`length` applies to type string only")
        if self.type == "bit" and self.bit is None:
            raise ValueError("type bit needs `bit` (0-15)")
        if self.type != "bit" and self.bit is not None:
            raise ValueError("`bit` applies to type bit only")
        return self

    @property
    def width(self) -> int:
        """Registers (or bits, for coils/discrete inputs) this tag occupies."""
        if self.table in ("coil", "discrete"):
            return 1
        if self.type == "string":
            assert self.length is not None
            return self.length
        return REGISTER_WIDTH[self.type]


class ModbusDeviceConfig(BaseModel):
    """A Modbus TCP device (PLC, controller, gateway)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Literal["modbus"]
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-]+$", description="device name, unique per line")
    station: str | None = Field(None, pattern=r"^[A-Za-z0-9_\-]+$",
                                description="ISA-95 station/work cell for topics; defaults to the device name")
    host: str = Field(min_length=1)
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255, description="Modbus unit (slave) id")
    addressing: Literal["zero_based", "one_based"] = Field(
        description="how the addresses in this tag map count: zero_based = protocol addresses "
        "(register 0 is the first), one_based = documentation style (register 1 is the first)"
    )
    poll_interval: Duration = Field(1.0, gt=0, description="how often every tag is read")
    timeout: Duration = Field(1.0, gt=0, description="per-request timeout")
    max_gap: int = Field(8, ge=0, le=124, description="unused registers/bits a read may span to merge two tags")
    max_registers_per_read: int = Field(125, ge=1, le=125)
    max_bits_per_read: int = Field(2000, ge=1, le=2000)
    tags: list[ModbusTag] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_tags(self) -> Self:
        seen: set[str] = set()
        for tag in self.tags:
            if tag.name in seen:
                raise ValueError(f"duplicate tag name {tag.name!r}")
            seen.add(tag.name)
            first = 1 if self.addressing == "one_based" else 0
            if tag.address < first:
                raise ValueError(f"tag {tag.name!r}: address {tag.address} is below {first}, the first address "
                                 f"with addressing {self.addressing}")
            if tag.address - first + tag.width > 65536:
                raise ValueError(f"tag {tag.name!r}: address {tag.address} + {tag.width} runs past the end "
                                 "of the Modbus address space")
        return self

    @property
    def station_name(self) -> str:
        return self.station or self.name


# ModbusDriver (below) is written against this config.
