"""OPC UA type rigour: a value must have the type its node declares.

At connect the driver reads each node's DataType attribute. A value whose decoded type does not
fit it (a String from a Double node, a Double from an Int32 node, a Boolean from a UInt16 node)
is a `bad` sample with the reason, never a good one. Nodes with an abstract or structured
DataType (BaseDataType, Number, a structure) are held to the type of the first good value seen.
The check runs on the converted values, so it treats the fast PublishResponse decoder and
asyncua's decoder alike (the decoder's own rule stays: anything unexpected goes to asyncua).
"""

from __future__ import annotations

from typing import Any

from linetap.agent.records import Quality

# DataType node ids (ns 0) of the built-in scalar types -> (name, Python type of the converted value)
_CONCRETE: dict[int, tuple[str, type]] = {
    1: ("Boolean", bool), 2: ("SByte", int), 3: ("Byte", int), 4: ("Int16", int), 5: ("UInt16", int),
    6: ("Int32", int), 7: ("UInt32", int), 8: ("Int64", int), 9: ("UInt64", int),
    10: ("Float", float), 11: ("Double", float), 12: ("String", str),
}
_NAMES = {bool: "Boolean", int: "an integer", float: "a floating-point number", str: "String"}


def expected_kind(datatype: Any, value_rank: int | None = None) -> tuple[str, type] | None:
    """(DataType name, Python type) for a scalar node of a built-in type, else None (first seen)."""
    if datatype is None or getattr(datatype, "NamespaceIndex", 1) != 0:
        return None
    if value_rank is not None and value_rank >= 0:
        return None  # arrays are converted to JSON text
    return _CONCRETE.get(getattr(datatype, "Identifier", None))


class TypeGuard:
    """Per tag index: the expected Python type (from the node's DataType, or the first good value)."""

    __slots__ = ("declared", "seen")

    def __init__(self, n: int) -> None:
        self.declared: list[tuple[str, type] | None] = [None] * n
        self.seen: list[type | None] = [None] * n

    def check(self, i: int, value: Any, quality: int, reason: str | None) -> tuple[Any, int, str | None]:
        if value is None or quality == Quality.BAD:
            return value, quality, reason
        t = type(value)
        declared = self.declared[i]
        if declared is not None:
            name, want = declared
            if t is want:
                return value, quality, reason
            return None, Quality.BAD, (f"BadTypeMismatch: the node's DataType is {name}, the server sent "
                                       f"{_NAMES.get(t, t.__name__)} ({value!r:.40})")
        first = self.seen[i]
        if first is None:
            if quality == Quality.GOOD:
                self.seen[i] = t
            return value, quality, reason
        if t is first:
            return value, quality, reason
        return None, Quality.BAD, (f"BadTypeMismatch: the tag's values were {_NAMES.get(first, first.__name__)}, "
                                   f"the server sent {_NAMES.get(t, t.__name__)} ({value!r:.40})")
