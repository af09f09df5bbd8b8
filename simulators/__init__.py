"""linetap.simulators: a heat-sealing station model, served over Modbus TCP (and later OPC UA)."""

from .modbus_register_map import (
    BULK_ADDRESS,
    BULK_COUNT,
    KNOWN_UNCERTAIN_STRING,
    KNOWN_VALUES,
    STATION_TAGS,
    encode_registers,
)
from .modbus_server import ModbusStationServer, serve_modbus
from .opcua_address_space import NAMESPACE_URI, STATION_OPCUA_TAGS
from .opcua_server import OpcUaStationServer, serve_opcua
from .station import (
    DWELL_LIMITS,
    LIMITS,
    OPERATORS,
    PRESSURE_LIMITS,
    TEMPERATURE_LIMITS,
    TEMPERATURE_SETPOINT,
    Limit,
    State,
    StationModel,
    StationSnapshot,
    UnitTruth,
)

__all__ = [
    "BULK_ADDRESS",
    "BULK_COUNT",
    "DWELL_LIMITS",
    "KNOWN_UNCERTAIN_STRING",
    "KNOWN_VALUES",
    "LIMITS",
    "OPERATORS",
    "PRESSURE_LIMITS",
    "STATION_TAGS",
    "TEMPERATURE_LIMITS",
    "TEMPERATURE_SETPOINT",
    "Limit",
    "ModbusStationServer",
    "NAMESPACE_URI",
    "OpcUaStationServer",
    "STATION_OPCUA_TAGS",
    "State",
    "StationModel",
    "StationSnapshot",
    "UnitTruth",
    "encode_registers",
    "serve_modbus",
    "serve_opcua",
]
