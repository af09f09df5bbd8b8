"""OPC UA values as sample values: what the driver records for a DataValue, from either decoder.

Scalars of the built-in types as Python values (DateTime as an ISO 8601 string in UTC, ByteString
as hex, LocalizedText as its text, NodeId / QualifiedName as text); a 1-D array as one JSON string.
Quality from the StatusCode (good / uncertain / bad, reason = the code's name).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import uuid
from typing import Any

from linetap.drivers.samples import Quality, shortest_float32

from .errors import status_name

_EPOCH_NAIVE = _dt.datetime(1970, 1, 1)
_EPOCH_AWARE = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def _us(ts: _dt.datetime | None) -> int | None:
    if ts is None:
        return None
    delta = ts - (_EPOCH_NAIVE if ts.tzinfo is None else _EPOCH_AWARE)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _iso(ts: _dt.datetime) -> str:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=_dt.UTC)
    return ts.astimezone(_dt.UTC).isoformat().replace("+00:00", "Z")


def _plain(v: Any) -> Any:
    """A scalar as a record value (float, int, bool, str)."""
    t = type(v)
    if t is float or t is int or t is bool or t is str:
        return v
    if v is None:
        return None
    if t is bytes or t is bytearray:
        return bytes(v).hex()
    if isinstance(v, _dt.datetime):
        return _iso(v)
    if isinstance(v, int | float | str):  # IntEnum and friends
        return v if isinstance(v, bool) else (int(v) if isinstance(v, int) else v)
    text = getattr(v, "Text", None)  # LocalizedText
    if text is not None or type(v).__name__ == "LocalizedText":
        return text
    to_string = getattr(v, "to_string", None)  # NodeId, QualifiedName
    if callable(to_string):
        return to_string()
    if isinstance(v, uuid.UUID):
        return str(v)
    return str(v)


def _json_element(v: Any) -> Any:
    p = _plain(v)
    if isinstance(p, float) and not math.isfinite(p):
        return str(p)
    return p


def convert_value(v: Any) -> tuple[Any, str | None]:
    """(record value, why it is uncertain or None). Arrays become one JSON string."""
    t = type(v)
    if t is float or t is int or t is bool or t is str:
        return v, None
    if t is list or t is tuple:
        if any(type(e) is list for e in v):
            return json.dumps([[_json_element(x) for x in e] if type(e) is list else _json_element(e) for e in v]), \
                "multi-dimensional array shown as nested JSON"
        return json.dumps([_json_element(e) for e in v]), None
    if v is None:
        return None, None
    p = _plain(v)
    if isinstance(p, str) and not isinstance(v, str | bytes | bytearray | _dt.datetime | uuid.UUID) \
            and not hasattr(v, "to_string") and getattr(v, "Text", None) is None:
        return p, f"value of type {type(v).__name__} shown as text"
    return p, None


def variant_type(dv) -> int:
    """The built-in type id of a DataValue's Variant (0: Null), with the array bit (0x80)."""
    variant = dv.Value
    if variant is None:
        return 0
    vt = variant.VariantType.value
    return vt | 0x80 if isinstance(variant.Value, list | tuple) else vt


def float32_marks(values: list[Any], floats: list[int]) -> list[bool] | None:
    """Float values as the shortest decimal of the server's float32 (in place), and the marks for
    `SampleBatch.float32`; None when there is none."""
    if not floats:
        return None
    for i, v in zip(floats, shortest_float32([values[i] for i in floats]), strict=True):
        values[i] = v
    marks = [False] * len(values)
    for i in floats:
        marks[i] = True
    return marks


def convert_raw(raw: Any, code: int, src: int | None) -> tuple[Any, int, str | None, int | None]:
    """(value, quality, reason, source_ts) from a decoded value, its StatusCode and source time (µs)."""
    severity = code & 0xC0000000
    if severity >= 0x80000000:
        return None, Quality.BAD, status_name(code), src
    t = type(raw)
    if t is float or t is int or t is bool or t is str:
        value, why = raw, None
    else:
        value, why = convert_value(raw)
    if severity == 0x40000000:
        return value, Quality.UNCERTAIN, status_name(code), src
    if value is None:
        return None, Quality.UNCERTAIN, "no value (null)", src
    if why is not None:
        return value, Quality.UNCERTAIN, why, src
    return value, Quality.GOOD, None, src


def convert_data_value(dv) -> tuple[Any, int, str | None, int | None]:
    """(value, quality, reason, source_ts) of one DataValue."""
    sc = dv.StatusCode
    variant = dv.Value
    ts = dv.SourceTimestamp or dv.ServerTimestamp
    return convert_raw(variant.Value if variant is not None else None, sc.value if sc is not None else 0,
                        _us(ts) if ts is not None else None)
