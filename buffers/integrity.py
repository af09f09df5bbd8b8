"""Hash chain of unit records and events: canonical JSON + SHA-256.

hash = SHA-256( prev_hash + "\\n" + canonical_json({"id", "stream", "seq", "recorded_at", "body"}) )

Canonical JSON: UTF-8, keys sorted, no whitespace. The first record of a stream has
prev_hash = GENESIS. The MES (or `linetap verify`) recomputes the chain from the payloads.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

GENESIS = "0" * 64


def canonical_json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def record_hash(prev_hash: str, *, id: str, stream: str, seq: int, recorded_at: int, body: dict[str, Any]) -> str:
    content = canonical_json({"id": id, "stream": stream, "seq": seq, "recorded_at": recorded_at, "body": body})
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + content).hexdigest()
