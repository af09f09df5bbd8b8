"""linetap.simulators: a heat-sealing station model and a leak tester downstream of it, served over
Modbus TCP (both) and OPC UA (the sealer)."""

from .leak_tester import (
    DECAY_LIMITS,
    LEAK_LIMITS,
    LEAK_OPERATORS,
    TEST_PRESSURE_LIMITS,
    LeakSnapshot,
    LeakState,
    LeakTesterModel,
    LeakTruth,
)
from .modbus_register_map import (
    BULK_ADDRESS,
    BULK_COUNT,
    FILM_LOT_TAG,
    KNOWN_UNCERTAIN_STRING,
    KNOWN_VALUES,
    LEAK_TESTER_TAGS,
    LEAK_TESTER_UNIT_ID,
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
    "DECAY_LIMITS",
    "DWELL_LIMITS",
    "FILM_LOT_TAG",
    "KNOWN_UNCERTAIN_STRING",
    "KNOWN_VALUES",
    "LEAK_LIMITS",
    "LEAK_OPERATORS",
    "LEAK_TESTER_TAGS",
    "LEAK_TESTER_UNIT_ID",
    "LIMITS",
    "OPERATORS",
    "PRESSURE_LIMITS",
    "STATION_TAGS",
    "TEMPERATURE_LIMITS",
    "TEMPERATURE_SETPOINT",
    "TEST_PRESSURE_LIMITS",
    "LeakSnapshot",
    "LeakState",
    "LeakTesterModel",
    "LeakTruth",
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
