"""The OPC UA simulator's address space: the station's variables, the known values, the bulk items.
(The leak tester downstream is served over Modbus only.)

Address space (namespace `NAMESPACE_URI`; node ids are strings, e.g. `ns=2;s=Sealer1.Temperature`)::

    Objects/
      Line/                       (folder)
        Sealer1/                  (object)
          Temperature   Double   degC  EURange 0..300   seal temperature
          Pressure      Double   bar   EURange 0..10    seal pressure (0 while idle)
          DwellTime     Double   s     EURange 0..10    hold time of the last completed unit
          SerialNumber  String         serial number of the current/last unit
          OperatorId    String         operator badge
          CycleActive   Boolean        sealing (ramp + hold)
          UnitCount     UInt32         completed units
          State         Int32          0 idle, 1 ramp, 2 hold
          Setpoint      Double   degC  temperature setpoint
          Rejects       UInt32         completed units made out of limits
          FilmLot       String         pouch-film lot of the current/next unit
        Known/                    (folder) one variable per built-in type, fixed values (KNOWN_VALUES)
        Bulk/                     (folder, only with bulk_count > 0) B00000... Double, i + sin(t + i/10)

Process variables carry EngineeringUnits (EUInformation, UNECE codes) and EURange properties.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from asyncua import Server, ua

from .station import State, StationModel, StationSnapshot

NAMESPACE_URI = "urn:linetap:simulator:heat-sealer"

# (browse name, StationSnapshot field, variant type, unit (UNECE common code, symbol), EURange)
STATION_VARIABLES: list[tuple[str, str, ua.VariantType, tuple[str, str] | None, tuple[float, float] | None]] = [
    ("Temperature", "temperature", ua.VariantType.Double, ("CEL", "degC"), (0.0, 300.0)),
    ("Pressure", "pressure", ua.VariantType.Double, ("BAR", "bar"), (0.0, 10.0)),
    ("DwellTime", "dwell", ua.VariantType.Double, ("SEC", "s"), (0.0, 10.0)),
    ("SerialNumber", "serial", ua.VariantType.String, None, None),
    ("OperatorId", "operator", ua.VariantType.String, None, None),
    ("CycleActive", "cycle_active", ua.VariantType.Boolean, None, None),
    ("UnitCount", "unit_count", ua.VariantType.UInt32, None, None),
    ("State", "state", ua.VariantType.Int32, None, None),
    ("Setpoint", "setpoint", ua.VariantType.Double, ("CEL", "degC"), (0.0, 300.0)),
    ("Rejects", "rejects", ua.VariantType.UInt32, None, None),
    ("FilmLot", "film_lot", ua.VariantType.String, None, None),
]

# Tag-map entries for the station (what `linetap browse` finds, with linetap's tag names).
STATION_OPCUA_TAGS: list[dict[str, Any]] = [
    {"name": name, "node": f"nsu={NAMESPACE_URI};s=Sealer1.{browse}", **({"unit": unit[1]} if unit else {})}
    for browse, name, _, unit, _ in STATION_VARIABLES
]

_T0 = _dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=_dt.UTC)
# browse name -> (variant type, served value, value the driver records)
KNOWN_VALUES: dict[str, tuple[ua.VariantType, Any, Any]] = {
    "Boolean": (ua.VariantType.Boolean, True, True),
    "SByte": (ua.VariantType.SByte, -12, -12),
    "Byte": (ua.VariantType.Byte, 250, 250),
    "Int16": (ua.VariantType.Int16, -32000, -32000),
    "UInt16": (ua.VariantType.UInt16, 65000, 65000),
    "Int32": (ua.VariantType.Int32, -2_000_000_000, -2_000_000_000),
    "UInt32": (ua.VariantType.UInt32, 4_000_000_000, 4_000_000_000),
    "Int64": (ua.VariantType.Int64, -(2**62), -(2**62)),
    "UInt64": (ua.VariantType.UInt64, 2**64 - 2, 2**64 - 2),
    "Float": (ua.VariantType.Float, 1.743, 1.743),  # read as float32: the shortest decimal, not 1.7430000305175781
    "Double": (ua.VariantType.Double, 12345.678901234567, 12345.678901234567),
    "String": (ua.VariantType.String, "Héllo PLC", "Héllo PLC"),
    "DateTime": (ua.VariantType.DateTime, _T0, "2026-01-02T03:04:05.678000Z"),
    "ByteString": (ua.VariantType.ByteString, b"\x00\x01\xfe\xff", "0001feff"),
    "LocalizedText": (ua.VariantType.LocalizedText, ua.LocalizedText("Sealer one", "en"), "Sealer one"),
    "DoubleArray": (ua.VariantType.Double, [1.0, 2.5, -3.0], "[1.0, 2.5, -3.0]"),
    "Int32Array": (ua.VariantType.Int32, [1, 2, 3], "[1, 2, 3]"),
    "StringArray": (ua.VariantType.String, ["a", "b"], '["a", "b"]'),
}


async def build_station(server: Server, ns: int, model: StationModel,
                        bulk_count: int) -> tuple[dict[str, ua.NodeId], list[ua.NodeId]]:
    """Line/Sealer1, Line/Known and Line/Bulk in namespace `ns`: (browse name -> node id of each
    station variable, bulk item node ids)."""
    objects = server.nodes.objects
    line = await objects.add_folder(ua.NodeId("Line", ns), ua.QualifiedName("Line", ns))
    sealer = await line.add_object(ua.NodeId("Sealer1", ns), ua.QualifiedName("Sealer1", ns))
    nodes: dict[str, ua.NodeId] = {}
    snap = model.snapshot()
    for browse, field, vtype, unit, eurange in STATION_VARIABLES:
        nid = ua.NodeId(f"Sealer1.{browse}", ns)
        var = await sealer.add_variable(nid, ua.QualifiedName(browse, ns),
                                        ua.Variant(field_value(snap, field), vtype))
        if unit is not None:
            await var.add_property(ua.NodeId(f"Sealer1.{browse}.EngineeringUnits", ns),
                                   ua.QualifiedName("EngineeringUnits", 0), _eu_information(*unit))
        if eurange is not None:
            await var.add_property(ua.NodeId(f"Sealer1.{browse}.EURange", ns), ua.QualifiedName("EURange", 0),
                                   ua.Range(Low=eurange[0], High=eurange[1]))
        nodes[browse] = nid
    known = await line.add_folder(ua.NodeId("Known", ns), ua.QualifiedName("Known", ns))
    for browse, (vtype, value, _) in KNOWN_VALUES.items():
        var = await known.add_variable(ua.NodeId(f"Known.{browse}", ns), ua.QualifiedName(browse, ns),
                                       ua.Variant(value, vtype))
        if isinstance(value, list):
            await var.write_value_rank(1)
            await var.write_array_dimensions([0])
    bulk_nodes: list[ua.NodeId] = []
    if bulk_count:
        bulk = await line.add_folder(ua.NodeId("Bulk", ns), ua.QualifiedName("Bulk", ns))
        for i in range(bulk_count):
            nid = ua.NodeId(f"Bulk.B{i:05d}", ns)
            await bulk.add_variable(nid, ua.QualifiedName(f"B{i:05d}", ns), ua.Variant(float(i), ua.VariantType.Double))
            bulk_nodes.append(nid)
    return nodes, bulk_nodes


async def build_decoy(server: Server, ns: int, model: StationModel) -> None:
    """A second namespace with the same browse names Line/Sealer1/<variable> (fixed values):
    another vendor's object model on the same server, as in a gateway or an aggregating server."""
    line = await server.nodes.objects.add_folder(ua.NodeId("Line", ns), ua.QualifiedName("Line", ns))
    sealer = await line.add_object(ua.NodeId("Sealer1", ns), ua.QualifiedName("Sealer1", ns))
    snap = model.snapshot()
    for browse, field, vtype, _unit, _range in STATION_VARIABLES:
        await sealer.add_variable(ua.NodeId(f"Decoy.{browse}", ns), ua.QualifiedName(browse, ns),
                                  ua.Variant(field_value(snap, field), vtype))


async def write_operation_limits(server: Server, limits: dict[str, int]) -> None:
    for name, value in limits.items():
        nid = ua.NodeId(getattr(ua.ObjectIds, f"Server_ServerCapabilities_OperationLimits_{name}"))
        await server.write_attribute_value(nid, ua.DataValue(ua.Variant(int(value), ua.VariantType.UInt32)))


def field_value(snap: StationSnapshot, field: str) -> Any:
    value = getattr(snap, field)
    if isinstance(value, State):
        return int(value)
    return value


def _eu_information(code: str, symbol: str) -> ua.EUInformation:
    unit_id = 0
    for ch in code.ljust(3)[:3]:  # UNECE common code as the OPC UA UnitId (Part 8, 5.6.3)
        unit_id = (unit_id << 8) | ord(ch)
    return ua.EUInformation(NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact", UnitId=unit_id,
                            DisplayName=ua.LocalizedText(symbol), Description=ua.LocalizedText(symbol))
