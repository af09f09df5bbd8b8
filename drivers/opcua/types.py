"""OPC UA type rigour: a value must have the type its node declares.

At connect the driver reads each node's DataType attribute. A value whose Variant type is not
that DataType (a String from a Double node, an Int16 from an Int32 node, a Float from a Double
node, a Boolean from a UInt16 node) is a `bad` sample with the reason, never a good one: the
built-in types are not subtypes of one another, so Part 3's "a value of the DataType or a
subtype" leaves no room for them. Nodes with an abstract or structured
DataType (BaseDataType, Number, a structure) are held to the Variant type of the first good
value seen.
The check runs on the converted values, so it treats the fast PublishResponse decoder and
asyncua's decoder alike (the decoder's own rule stays: anything unexpected goes to asyncua).
"""

from __future__ import annotations

from typing import Any

from linetap.drivers.samples import Quality

# DataType node ids (ns 0) of the built-in scalar types -> (name, Python type of the converted value).
# For these the DataType id is also the Variant's built-in type id (Part 6, 5.1.2).
_CONCRETE: dict[int, tuple[str, type]] = {
    1: ("Boolean", bool), 2: ("SByte", int), 3: ("Byte", int), 4: ("Int16", int), 5: ("UInt16", int),
    6: ("Int32", int), 7: ("UInt32", int), 8: ("Int64", int), 9: ("UInt64", int),
    10: ("Float", float), 11: ("Double", float), 12: ("String", str),
}
_NAMES = {bool: "Boolean", int: "an integer", float: "a floating-point number", str: "String"}
FLOAT = 10  # Variant built-in type id of a 32-bit float
_VARIANT_NAMES = {1: "Boolean", 2: "SByte", 3: "Byte", 4: "Int16", 5: "UInt16", 6: "Int32", 7: "UInt32",
                  8: "Int64", 9: "UInt64", 10: "Float", 11: "Double", 12: "String", 13: "DateTime", 14: "Guid",
                  15: "ByteString", 16: "XmlElement", 17: "NodeId", 18: "ExpandedNodeId", 19: "StatusCode",
                  20: "QualifiedName", 21: "LocalizedText", 22: "ExtensionObject", 23: "DataValue",
                  24: "Variant", 25: "DiagnosticInfo"}


def variant_name(vtype: int) -> str:
    return _VARIANT_NAMES.get(vtype & 0x3F, f"type {vtype}") + (" array" if vtype & 0x80 else "")


def expected_kind(datatype: Any, value_rank: int | None = None) -> tuple[int, str, type] | None:
    """(DataType id = Variant type id, name, Python type) for a scalar node of a built-in type,
    else None (held to the first value seen)."""
    if datatype is None or getattr(datatype, "NamespaceIndex", 1) != 0:
        return None
    if value_rank is not None and value_rank >= 0:
        return None  # arrays are converted to JSON text
    ident = getattr(datatype, "Identifier", None)
    kind = _CONCRETE.get(ident)
    return None if kind is None else (ident, *kind)


class TypeGuard:
    """Per tag index: the expected Variant type (from the node's DataType, or the first good value)."""

    __slots__ = ("declared", "seen")

    def __init__(self, n: int) -> None:
        self.declared: list[tuple[int, str, type] | None] = [None] * n
        self.seen: list[tuple[int, type] | None] = [None] * n

    def check(self, i: int, value: Any, quality: int, reason: str | None,
              vtype: int | None = None) -> tuple[Any, int, str | None]:
        """`vtype`: the Variant's built-in type id (None: not known, compare the Python kinds)."""
        if value is None or quality == Quality.BAD:
            return value, quality, reason
        t = type(value)
        declared = self.declared[i]
        if declared is not None:
            want_id, name, want = declared
            if (t is want) if vtype is None else (vtype == want_id):
                return value, quality, reason
            sent = _NAMES.get(t, t.__name__) if vtype is None else variant_name(vtype)
            return None, Quality.BAD, f"BadTypeMismatch: the node's DataType is {name}, the server sent {sent} ({value!r:.40})"
        first = self.seen[i]
        if first is None:
            if quality == Quality.GOOD:
                self.seen[i] = (vtype if vtype is not None else -1, t)
            return value, quality, reason
        first_id, first_t = first
        if t is first_t and (vtype is None or first_id in (-1, vtype)):
            return value, quality, reason
        was = variant_name(first_id) if first_id != -1 else _NAMES.get(first_t, first_t.__name__)
        sent = variant_name(vtype) if vtype is not None and first_id != -1 else _NAMES.get(t, t.__name__)
        return None, Quality.BAD, f"BadTypeMismatch: the tag's values were {was}, the server sent {sent} ({value!r:.40})"
