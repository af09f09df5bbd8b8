"""Human units in YAML: durations (`250ms`, `5s`, `2m`, `1h`, `7d`) and sizes (`512MB`, `2GB`)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_FACTOR = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)
_SIZE_FACTOR = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_duration(value: object) -> float:
    """Seconds from `250ms`, `5s`, `2m`, `1h`, `7d` (a bare number means seconds)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 5s, 2m, 1h or 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_FACTOR[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration; write it like 250ms, 5s, 2m, 1h or 7d")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from `512MB`, `2GB`, `1GiB` (a bare number means bytes)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MB or 2GB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(float(m.group(1)) * _SIZE_FACTOR[m.group(2).lower()])
    else:
        raise ValueError(f"{value!r} is not a size; write it like 512MB, 2GB or 1GiB")
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": ["string", "number"], "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d)$",
                    "description": "duration: 250ms, 5s, 2m, 1h, 7d (a number means seconds)"}),
]
ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"type": ["string", "integer"], "pattern": r"^\d+(\.\d+)?\s*([KMGT]i?B|B)$",
                    "description": "size: 512MB, 2GB, 1GiB (a number means bytes)"}),
]
