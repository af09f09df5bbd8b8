"""The samples the drivers produce (columnar), with their quality and value type.

Timestamps are integers: microseconds since the Unix epoch, UTC. They are cheap to
carry in columns and exact; the MQTT payload keeps them as integers too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

# Integers beyond this magnitude do not survive a float64 round trip; they travel as text.
_MAX_EXACT_INT = 2**53


def shortest_float32(values: Sequence[float]) -> list[float]:
    """Values decoded from 32-bit floats (Python floats, widened exactly) as the shortest decimal
    that reads back as the same float32: 1.743 for the PLC's 1.743, not 1.7430000305175781.

    `float32(result)` is the device's value, bit for bit. orjson writes a float32 array with
    ryu's shortest float32 form in one C call (~0.06 us a value, measured; numpy's `astype(str)`
    costs ~2.6 us). Non-finite values stay as they are (orjson would write null).
    """
    arr = np.asarray(values, dtype=np.float32)
    out = orjson.loads(orjson.dumps(arr, option=orjson.OPT_SERIALIZE_NUMPY))
    finite = np.isfinite(arr)
    if not finite.all():
        for i in np.flatnonzero(~finite).tolist():
            out[i] = float(arr[i])
    return out


def json_number(value: Any) -> Any:
    """A value for a record body: non-finite floats as "NaN", "Infinity", "-Infinity" (JSON has no
    such numbers, and orjson would silently write null: "no value")."""
    if type(value) is float and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def now_us() -> int:
    """Agent wall-clock time in microseconds since the epoch (UTC)."""
    return time.time_ns() // 1000


class VType(IntEnum):
    """How a stored value is written out: the buffer's `vtype` column, one per sample.

    JSON has one number type, so the type travels beside the value: an integer register is a
    JSON integer (`1111`, never `1111.0`), a float32 is the shortest decimal that reads back as
    the same float32 (`1.743`, never the widened `1.7430000305175781`), a float64 the shortest
    that reads back as the same float64. Non-finite floats are the strings "NaN", "Infinity" and
    "-Infinity" (JSON has no such numbers, and `null` would read as "no value").
    """

    FLOAT64 = 0  # `num`; also every row of a version-2 buffer (they were written as floats)
    FLOAT32 = 1  # `num` holds the float32 widened exactly (typed columns), or its shortest decimal
    #              (Python values, and buffers written before 2026-12): either is the same float32;
    #              written as the float32's shortest decimal
    INT = 2  # `num` holds an integer with |v| <= 2**53 (exact in a double)
    BOOL = 3  # `num` holds 0 or 1; written as false / true
    TEXT = 4  # `text`: strings, byte strings as hex, integers beyond 2**53 as decimal strings


class Quality(IntEnum):
    """Sample quality, in the OPC UA sense (good / uncertain / bad)."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


# The columns of a telemetry batch, as stored in the buffer (before `seq` is assigned)
# and as read back by the forwarder (with `seq` first).
TELEMETRY_SCHEMA = pa.schema(
    [
        ("device", pa.string()),
        ("tag", pa.string()),
        ("num", pa.float64()),  # numeric and boolean (0/1) values
        ("text", pa.string()),  # strings, byte strings as hex, integers beyond 2**53
        ("quality", pa.uint8()),
        ("reason", pa.string()),  # why the quality is not good; null when good
        ("source_ts", pa.int64()),  # equipment time when the device gives one, else null
        ("agent_ts", pa.int64()),  # agent time, always
        ("vtype", pa.uint8()),  # VType: how `num` / `text` is written out
    ]
)


class TagNames(tuple):
    """A driver's tag names, made once at start-up and shared by every batch it produces; it carries
    its own Arrow column, so a batch's `to_arrow` converts no name (and capture can tell a batch of
    the same tags by identity)."""

    @cached_property
    def arrow(self) -> pa.Array:
        return pa.array(self, pa.string())


class ValueColumns(Sequence):
    """The values of a batch as typed columns, the form a decoder produces without a Python object per
    value: `num` (float64, exact: a float32 widened, an integer with |v| <= 2**53, a boolean as 0/1),
    `vtype` (VType per value), `missing` (True where there is no value; None: every value is there) and
    `text` (position -> value for TEXT values: a string, or an integer beyond 2**53, which is stored as
    its decimal text; None: no such value). Indexing gives the value as the device
    holds it (a float32 as its shortest decimal), for the few consumers that look at single values."""

    __slots__ = ("num", "vtype", "missing", "text")

    def __init__(self, num: np.ndarray, vtype: np.ndarray, missing: np.ndarray | None = None,
                 text: dict[int, str | int] | None = None) -> None:
        self.num = num
        self.vtype = vtype
        self.missing = missing
        self.text = text

    def __len__(self) -> int:
        return len(self.num)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self.tolist()[i]
        if self.missing is not None and self.missing[i]:
            return None
        vt = self.vtype[i]
        if vt == VType.TEXT:
            return self.text[i if i >= 0 else len(self) + i]
        v = self.num[i]
        if vt == VType.FLOAT32:
            return float(str(np.float32(v)))  # numpy prints the shortest decimal of the float32
        if vt == VType.INT:
            return int(v)
        if vt == VType.BOOL:
            return bool(v)
        return float(v)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.tolist())

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ValueColumns({self.tolist()!r})"

    def tolist(self) -> list[Any]:
        """Every value as a Python object (column at a time; no Python loop per value)."""
        vtype = self.vtype
        num = self.num
        out = np.empty(len(num), dtype=object)
        out[:] = num.tolist()
        present = np.ones(len(num), dtype=bool) if self.missing is None else ~self.missing
        m = present & (vtype == VType.FLOAT32)
        if m.any():
            out[m] = np.array([*shortest_float32(num[m]), None], dtype=object)[:-1]
        m = present & (vtype == VType.INT)
        if m.any():
            out[m] = num[m].astype(np.int64)
        m = present & (vtype == VType.BOOL)
        if m.any():
            out[m] = num[m] != 0
        if self.text:
            out[list(self.text)] = np.array(list(self.text.values()) + [None], dtype=object)[:-1]
        if self.missing is not None:
            out[self.missing] = None
        return out.tolist()

    def to_arrow(self) -> tuple[pa.Array, pa.Array, pa.Array]:
        """The buffer's `num`, `text` and `vtype` columns."""
        n = len(self.num)
        no_num = self.missing
        if self.text:
            no_num = np.zeros(n, dtype=bool) if no_num is None else no_num.copy()
            no_num[list(self.text)] = True
            text_values: list[str | None] = [None] * n
            for i, t in self.text.items():  # per text value (PLC strings: a few per device)
                text_values[i] = t if type(t) is str else str(t)
            text = pa.array(text_values, pa.string())
        else:
            text = pa.nulls(n, pa.string())
        num = pa.array(self.num, pa.float64(), mask=no_num)
        vtype = self.vtype
        if self.missing is not None and self.missing.any():
            vtype = vtype.copy()
            vtype[self.missing] = VType.FLOAT64  # no value: stored like the Python path stores None
        return num, text, pa.array(vtype, pa.uint8())


@dataclass(frozen=True, slots=True)
class SampleBatch:
    """Samples of one device from one read (poll cycle or notification batch), one list per field.

    `value[i]` is a float, int, bool, str or None (None only with a non-good quality); a decoder that
    produces typed columns gives `value` as `ValueColumns` (the telemetry path then makes no Python
    object per value) and `tag` as its `TagNames`.
    `source_ts` is None when the device gives no timestamps, else one entry per sample.
    `float32` marks the samples whose device type is a 32-bit float (None: none is); they are
    written as the float32's shortest decimal. Every other type follows from the Python value.
    """

    device: str
    tag: Sequence[str]
    value: Sequence[Any]
    quality: list[int]
    reason: list[str | None]
    agent_ts: int
    source_ts: list[int | None] | None = None
    float32: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.tag)

    @classmethod
    def all_bad(cls, device: str, tags: list[str], reason: str, agent_ts: int | None = None) -> SampleBatch:
        """One bad-quality sample per tag: what the agent records when a read fails."""
        n = len(tags)
        return cls(
            device=device,
            tag=list(tags),
            value=[None] * n,
            quality=[Quality.BAD] * n,
            reason=[reason] * n,
            agent_ts=now_us() if agent_ts is None else agent_ts,
        )

    def to_arrow(self) -> pa.Table:
        """The batch as an Arrow table in TELEMETRY_SCHEMA (the buffer's append format)."""
        n = len(self.tag)
        tag = self.tag.arrow if isinstance(self.tag, TagNames) else pa.array(self.tag, pa.string())
        agent_ts = pa.array(np.full(n, self.agent_ts, dtype=np.int64))
        source_ts = pa.nulls(n, pa.int64()) if self.source_ts is None else pa.array(self.source_ts, pa.int64())
        reason = (pa.nulls(n, pa.string()) if self.reason.count(None) == n
                  else pa.array(self.reason, pa.string()))
        if isinstance(self.value, ValueColumns):
            num_arr, text_arr, vtype_arr = self.value.to_arrow()
            return pa.Table.from_arrays(
                [pa.repeat(pa.scalar(self.device, pa.string()), n), tag, num_arr, text_arr,
                 pa.array(self.quality, pa.uint8()), reason, source_ts, agent_ts, vtype_arr],
                schema=TELEMETRY_SCHEMA)
        num: list[float | None] = []
        text: list[str | None] = []
        vtype: list[int] = []
        for v in self.value:
            t = type(v)
            if t is float:
                num.append(v)
                text.append(None)
                vtype.append(VType.FLOAT64)
            elif t is bool:
                num.append(v)
                text.append(None)
                vtype.append(VType.BOOL)
            elif t is int:
                if -_MAX_EXACT_INT <= v <= _MAX_EXACT_INT:
                    num.append(v)
                    text.append(None)
                    vtype.append(VType.INT)
                else:
                    num.append(None)
                    text.append(str(v))
                    vtype.append(VType.TEXT)
            elif v is None:
                num.append(None)
                text.append(None)
                vtype.append(VType.FLOAT64)
            elif t is bytes:
                num.append(None)
                text.append(v.hex())
                vtype.append(VType.TEXT)
            else:
                num.append(None)
                text.append(str(v))
                vtype.append(VType.TEXT)
        vtype_arr = np.asarray(vtype, dtype=np.uint8)
        if self.float32 is not None:
            vtype_arr[np.asarray(self.float32, dtype=bool) & (vtype_arr == VType.FLOAT64)] = VType.FLOAT32
        return pa.Table.from_arrays(
            [
                pa.repeat(pa.scalar(self.device, pa.string()), n),
                tag,
                pa.array(num, pa.float64()),
                pa.array(text, pa.string()),
                pa.array(self.quality, pa.uint8()),
                reason,
                source_ts,
                agent_ts,
                pa.array(vtype_arr, pa.uint8()),
            ],
            schema=TELEMETRY_SCHEMA,
        )
