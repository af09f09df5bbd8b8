"""The config model of a Modbus TCP device and its tag map."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from linetap.config.issues import At
from linetap.config.units import Duration

from .base import DeviceBase, TagBase
from .exception import ExceptionFields, TagException, effective

ModbusTable = Literal["holding", "input", "coil", "discrete"]
ModbusType = Literal[
    "bool", "bit", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

# Registers per value, for the fixed-size register types.
REGISTER_WIDTH = {"bit": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2,
                  "int64": 4, "uint64": 4, "float64": 4}


class ModbusTag(ExceptionFields, TagBase):
    """One value in the device's Modbus map."""

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
        if self.deadband is not None and not self.numeric:
            raise At(("deadband",), f"tag {self.name!r} is type {self.type}: a deadband applies to numbers only; "
                     "a boolean or text tag is sent on any change (leave `deadband` out, `max_silence` may stay)")
        return self

    @property
    def numeric(self) -> bool:
        """Whether a deadband can apply: not bool, bit or string."""
        return self.type not in ("bool", "bit", "string")

    @property
    def width(self) -> int:
        """Registers (or bits, for coils/discrete inputs) this tag occupies."""
        if self.table in ("coil", "discrete"):
            return 1
        if self.type == "string":
            assert self.length is not None
            return self.length
        return REGISTER_WIDTH[self.type]


def _span(tag: ModbusTag) -> str:
    return str(tag.address) if tag.width == 1 else f"{tag.address}..{tag.address + tag.width - 1}"


class ModbusDeviceConfig(ExceptionFields, DeviceBase):
    """A Modbus TCP device (PLC, controller, gateway)."""

    protocol: Literal["modbus"]
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
        for i, tag in enumerate(self.tags):
            first = 1 if self.addressing == "one_based" else 0
            if tag.address < first:
                raise At(("tags", i, "address"), f"tag {tag.name!r}: address {tag.address} is below {first}, the "
                         f"first address with addressing {self.addressing}")
            if tag.address - first + tag.width > 65536:
                raise At(("tags", i, "address"), f"tag {tag.name!r}: address {tag.address} + {tag.width} runs past "
                         "the end of the Modbus address space")
            if tag.table in ("holding", "input") and tag.width > self.max_registers_per_read:
                raise At(("tags", i, "type" if tag.type != "string" else "length"),
                         f"tag {tag.name!r} is {tag.width} registers wide, more than "
                         f"max_registers_per_read ({self.max_registers_per_read})")
        self._check_overlaps()
        return self

    def _check_overlaps(self) -> None:
        """Two tags reading the same registers as different values is a mistake in the map (a 32-bit
        value at 10 and another at 11), except a `bit` view of a register, or the same value twice
        (same address, type and order, e.g. with another scale)."""
        spans = sorted((t.address, t.address + t.width, i) for i, t in enumerate(self.tags)
                       if t.table in ("holding", "input") and t.type != "bit")
        open_spans: list[tuple[int, int, int]] = []
        for start, end, i in spans:
            open_spans = [s for s in open_spans if s[1] > start]
            tag = self.tags[i]
            for _, _, j in open_spans:
                other = self.tags[j]
                if other.table != tag.table:
                    continue
                if (other.address, other.type, other.order, other.length) == (tag.address, tag.type, tag.order,
                                                                              tag.length):
                    continue
                if j > i:  # point at the one written later in the file
                    i, j, tag, other = j, i, other, tag
                raise At(("tags", i, "address"),
                         f"tag {tag.name!r} ({tag.table} {_span(tag)}, {tag.type}) overlaps tag {other.name!r} "
                         f"({other.table} {_span(other)}, {other.type}): the same registers cannot hold both; "
                         "check the addresses and types (a bit of a register is type: bit)",
                         first=("tags", j, "address"))
            open_spans.append((start, end, i))

    def exception_rules(self) -> dict[str, TagException] | None:
        """Report by exception: the rule of each tag that has one (`deadband` / `max_silence` of the
        tag, else of the device); None when no tag has one (every sample is sent)."""
        rules = {t.name: rule for t in self.tags if (rule := effective(t, self, t.numeric)) is not None}
        return rules or None
