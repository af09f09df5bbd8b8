"""The config model of a Modbus device (TCP, RTU on a serial line, RTU through a TCP gateway) and its
tag map."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


BAUD_RATES = (1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400)
_PARITY_WORDS = {"n": "N", "none": "N", "e": "E", "even": "E", "o": "O", "odd": "O"}


class SerialLine(BaseModel):
    """The serial port of a Modbus RTU bus (RS-485/RS-232). The defaults are the Modbus serial line
    spec's (Modbus over Serial Line V1.02, 2.5.1): 19200 baud, 8 data bits, even parity, 1 stop bit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: str = Field(min_length=1, description="serial device, e.g. /dev/ttyUSB0 or COM3")
    baudrate: int = Field(19200, description="bits per second: " + ", ".join(map(str, BAUD_RATES)))
    parity: Literal["N", "E", "O"] = Field("E", description="N none, E even (the spec's default), O odd")
    stopbits: Literal[1, 2] = Field(1, description="1, or 2 with parity N (the spec's rule)")
    bytesize: Literal[8] = Field(8, description="RTU frames carry 8 data bits")

    @field_validator("parity", mode="before")
    @classmethod
    def _parity_word(cls, value):
        if isinstance(value, str) and value.strip().lower() in _PARITY_WORDS:
            return _PARITY_WORDS[value.strip().lower()]
        if value is False:  # YAML 1.1 readers take a bare N for false
            return "N"
        return value

    @field_validator("baudrate")
    @classmethod
    def _standard_rate(cls, value: int) -> int:
        if value not in BAUD_RATES:
            raise ValueError(f"{value} is not a standard serial rate ({', '.join(map(str, BAUD_RATES))}); "
                             "use the rate set on the device")
        return value

    @property
    def bits_per_char(self) -> int:
        """Bits on the wire per byte: start, 8 data, parity (if any), stop bits."""
        return 1 + self.bytesize + (self.parity != "N") + self.stopbits

    def wire_time(self, nbytes: int) -> float:
        """Seconds `nbytes` take on the line."""
        return nbytes * self.bits_per_char / self.baudrate

    @property
    def frame_gap(self) -> float:
        """The silence between two frames: 3.5 character times, and a fixed 1.75 ms above 19200 baud
        (the spec, 2.5.1.1)."""
        return 0.00175 if self.baudrate > 19200 else self.wire_time(3.5)


class ModbusDeviceConfig(ExceptionFields, DeviceBase):
    """A Modbus device (PLC, controller, gateway): over TCP, or RTU on a serial line (`serial:`), or RTU
    through a serial gateway's TCP port (`transport: rtu-over-tcp`)."""

    protocol: Literal["modbus"]
    transport: Literal["tcp", "rtu", "rtu-over-tcp"] = Field(
        "tcp", description="tcp = Modbus TCP (host/port); rtu = Modbus RTU on the serial port in `serial:`; "
        "rtu-over-tcp = RTU frames through a serial gateway's TCP port (host/port)")
    host: str | None = Field(None, min_length=1, description="the device or gateway (tcp, rtu-over-tcp)")
    port: int = Field(502, ge=1, le=65535, description="TCP port (tcp, rtu-over-tcp)")
    serial: SerialLine | None = Field(None, description="the serial port, for transport rtu")
    unit_id: int = Field(1, ge=0, le=255, description="Modbus unit (slave) id; 1-247 on a serial line")
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
    def _check_transport(self) -> Self:
        if self.transport == "rtu":
            if self.serial is None:
                raise At(("transport",), "transport rtu needs a `serial:` block (port, baudrate, parity, "
                         "stopbits) naming the serial port, e.g. serial: {port: /dev/ttyUSB0}")
            for key in ("host", "port"):
                if key in self.model_fields_set:
                    raise At((key,), f"`{key}` is for Modbus TCP; a transport rtu device is reached through "
                             "`serial:` (for a serial gateway on the network use transport: rtu-over-tcp)")
            if not 1 <= self.unit_id <= 247:
                raise At(("unit_id",), f"unit id {self.unit_id} is not a device address on a serial line: "
                         "0 is broadcast (nobody answers) and 248-255 are reserved; use the device's "
                         "address, 1-247")
        else:
            if self.serial is not None:
                raise At(("serial",), f"`serial:` is for transport rtu (this device has transport "
                         f"{self.transport}); add transport: rtu, or remove the serial block")
            if self.host is None:
                raise At(("transport",) if "transport" in self.model_fields_set else ("protocol",),
                         f"transport {self.transport} needs `host:` (the device's or gateway's address)")
        return self

    @property
    def endpoint(self) -> str:
        """Where the device is, for messages: host:port, or the serial port and unit id."""
        if self.serial is not None:
            return f"{self.serial.port} unit {self.unit_id}"
        return f"{self.host}:{self.port}"

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

def check_serial_buses(devices: list) -> None:
    """Devices on one serial port share the bus: the same line settings, and a unit id each."""
    first: dict[str, int] = {}
    units: dict[tuple[str, int], int] = {}
    for i, device in enumerate(devices):
        line = getattr(device, "serial", None)
        if line is None:
            continue
        j = first.setdefault(line.port, i)
        other = devices[j]
        if other.serial != line:
            raise At(("devices", i, "serial"), f"device {device.name!r} is on serial port {line.port} like "
                     f"device {other.name!r} but with other settings ({_line(line)} against {_line(other.serial)}); "
                     "every device on one bus talks at the same settings", first=("devices", j, "serial"))
        k = units.setdefault((line.port, device.unit_id), i)
        if k != i:
            raise At(("devices", i, "unit_id"), f"device {device.name!r} and device {devices[k].name!r} both have "
                     f"unit id {device.unit_id} on serial port {line.port}: each device on a bus needs its own "
                     "address", first=("devices", k, "unit_id"))


def _line(line: SerialLine) -> str:
    return f"{line.baudrate} {line.bytesize}{line.parity}{line.stopbits}"
