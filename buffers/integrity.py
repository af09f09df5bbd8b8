"""Hash chain of unit records and events: canonical JSON + SHA-256.

hash = SHA-256( prev_hash + "\\n" + canonical_json({"id", "stream", "seq", "recorded_at", "body"}) )

Canonical JSON is RFC 8785 (JSON Canonicalization Scheme) of the record as JSON, i.e. as it is
published: keys sorted by UTF-16 code units, no whitespace, numbers as ECMAScript writes them
(`175.0` is `175`), so any language with a JCS library, or JavaScript's own `JSON.stringify` with
sorted keys, recomputes it. The first record of a stream has prev_hash = GENESIS. The MES (or
`linetap verify`) recomputes the chain from the payloads.

Chain version 1 (record schemas `linetap.unit/1`, `linetap.event/1`, written before 2026-12) hashed
orjson's sorted-key output, which writes `175.0`; it is still verified (`chain_version`). A record
whose body holds a number JCS cannot represent (an integer beyond +-(2**53 - 1)) is hashed as
version 1 and published with the version 1 schema.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import rfc8785

GENESIS = "0" * 64
JCS, LEGACY = 2, 1  # chain versions: the record schemas' version number


def canonical_json(value: Any) -> bytes:
    """RFC 8785 of `value` as published: through orjson first, so NaN is null as on the wire."""
    return rfc8785.dumps(orjson.loads(orjson.dumps(value)))


def legacy_canonical_json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _digest(prev_hash: str, content: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + content).hexdigest()


def record_hash(prev_hash: str, *, id: str, stream: str, seq: int, recorded_at: int, body: dict[str, Any],
                version: int = JCS) -> str:
    """The record's hash in chain `version`; JCS falls back to LEGACY where JCS cannot write the body
    (`chain_version` then says LEGACY)."""
    fields = {"id": id, "stream": stream, "seq": seq, "recorded_at": recorded_at, "body": body}
    if version == JCS:
        try:
            return _digest(prev_hash, canonical_json(fields))
        except rfc8785.CanonicalizationError:
            pass
    return _digest(prev_hash, legacy_canonical_json(fields))


def chain_version(record_hash_: str, prev_hash: str, *, id: str, stream: str, seq: int, recorded_at: int,
                  body: dict[str, Any]) -> int | None:
    """Which chain version `record_hash_` was computed in (JCS or LEGACY); None if neither: the
    content is not what was hashed."""
    fields = {"id": id, "stream": stream, "seq": seq, "recorded_at": recorded_at, "body": body}
    try:
        if _digest(prev_hash, canonical_json(fields)) == record_hash_:
            return JCS
    except rfc8785.CanonicalizationError:
        pass
    return LEGACY if _digest(prev_hash, legacy_canonical_json(fields)) == record_hash_ else None
