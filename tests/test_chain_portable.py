"""Hash chains any language can verify: RFC 8785 (JCS) canonical JSON, its published number vectors,
the README's Python and JavaScript verifiers run on a real `linetap export`, and chains written
before RFC 8785 (version 1) still verify."""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from linetap.agent.encoders.json_envelope import encode_record
from linetap.buffers import DuckDBBuffer
from linetap.buffers.integrity import GENESIS, JCS, LEGACY, canonical_json, chain_version, record_hash
from linetap.buffers.records import Event, StoredRecord
from linetap.buffers.verify import verify

ROOT = Path(__file__).parents[1]
AGENT = "line-2-blister"

# RFC 8785, Appendix B: IEEE 754 double (hex) -> the number as JCS writes it
RFC8785_NUMBERS = [
    ("0000000000000000", "0"), ("8000000000000000", "0"), ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"), ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"), ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"), ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"), ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"), ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"), ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"), ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"), ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"), ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"), ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def double(hex_bits: str) -> float:
    return struct.unpack(">d", bytes.fromhex(hex_bits))[0]


@pytest.mark.parametrize("hex_bits, expected", RFC8785_NUMBERS)
def test_rfc8785_number_vectors(hex_bits, expected) -> None:
    assert canonical_json([double(hex_bits)]) == f"[{expected}]".encode()


def test_canonical_form_details() -> None:
    # keys by UTF-16 code units: U+1F600 (surrogates D83D..) sorts before U+FB01, unlike by code point
    assert canonical_json({"\ufb01": 1, "\U0001f600": 2, "b": 3, "a": 4}) == \
        '{"a":4,"b":3,"\U0001f600":2,"\ufb01":1}'.encode()
    assert canonical_json({"t": 175.0, "s": "line\n\"2\"\u00e9", "n": None}) == \
        b'{"n":null,"s":"line\\n\\"2\\"\xc3\xa9","t":175}'
    assert canonical_json({"v": math.nan}) == b'{"v":null}'  # as published: orjson writes NaN as null


def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        if os.environ.get("LINETAP_REQUIRE_NODE", "") not in ("", "0", "false", "no"):
            pytest.fail("LINETAP_REQUIRE_NODE is set but node is not installed")
        pytest.skip("node is not installed: the README's JavaScript verifier is not run (CI runs it)")
    return exe


def readme_block(language: str, marker: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"the README's {language} verifier ({marker!r}) is not there once"
    return found[0]


def test_node_writes_the_rfc8785_vectors_as_we_do() -> None:
    """An independent implementation of the number form (ECMAScript's own) against the same vectors."""
    numbers = [double(h) for h, _ in RFC8785_NUMBERS]
    script = f"console.log(JSON.stringify({orjson.dumps(numbers).decode()}.map(x => JSON.stringify(x))))"
    out = subprocess.run([node(), "-e", script], capture_output=True, text=True, timeout=30, check=True).stdout
    assert orjson.loads(out) == [e for _, e in RFC8785_NUMBERS]


@pytest.fixture
def exported(tmp_path):
    """A buffer with awkward bodies (floats with .0, exponents, unicode keys), exported by the CLI."""
    folder = tmp_path / "line 2 pc"
    folder.mkdir()
    buffer_path = folder / "blister-line-buffer.duckdb"
    cfg_path = folder / "blister-line.yaml"
    cfg_path.write_text(orjson.dumps({
        "agent": {"id": AGENT, "enterprise": "acme", "site": "cork", "area": "packaging", "line": "line2"},
        "buffer": {"path": str(buffer_path)},
        "devices": [{"protocol": "modbus", "name": "sealer-2", "host": "127.0.0.1", "addressing": "zero_based",
                     "tags": [{"name": "seal.temperature", "address": 0, "type": "float32"}]}]}).decode())
    buf = DuckDBBuffer(buffer_path, AGENT)
    for i in range(6):
        buf.append(events=[Event("nonconformance", 1_700_000_000_000_000 + i, "sealer-2", "sealer1",
                                 {"parameter": "seal_temperature", "value": 175.0 + i, "limits": [170.0, 1e21],
                                  "drift": -3.3333333333333333e-6, "\U0001f600": i, "\ufb01": "ﬁlm"})],
                   units=[{"serial": f"SN-{i:06d}", "verdict": "fail" if i % 2 else "pass", "station": "sealer1",
                           "parameters": {"seal_temperature": {"value": 175.0, "unit": "°C"}},
                           "trace": [170.5, 171.0, 1e-7, 2e-3]}])
    buf.close()
    out = folder / "records export.jsonl"
    with out.open("wb") as f:
        for stream in ("events", "units"):
            part = folder / f"{stream}-export.jsonl"
            r = subprocess.run([sys.executable, "-m", "linetap.agent.cli", "export", str(cfg_path), "--stream",
                                stream, "--output", str(part)], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            f.write(part.read_bytes())
    return out


def test_exported_records_are_version_2_and_verify(exported) -> None:
    lines = [orjson.loads(line) for line in exported.read_bytes().splitlines()]
    assert {r["schema"] for r in lines} == {"linetap.unit/2", "linetap.event/2"} and len(lines) == 12
    assert verify([exported]).ok


def test_the_readme_python_verifier_checks_an_export(exported, tmp_path) -> None:
    script = tmp_path / "verify chain.py"
    script.write_text(readme_block("python", "rfc8785.dumps"))
    r = subprocess.run([sys.executable, str(script)], stdin=exported.open("rb"), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(exported.read_bytes().replace(b'"value":176.0', b'"value":176.5', 1))
    assert tampered.read_bytes() != exported.read_bytes()
    r = subprocess.run([sys.executable, str(script)], stdin=tampered.open("rb"), capture_output=True, timeout=60)
    assert r.returncode != 0 and b"AssertionError" in r.stderr


def test_the_readme_javascript_verifier_checks_an_export(exported, tmp_path) -> None:
    exe = node()
    script = tmp_path / "verify-chain.js"
    script.write_text(readme_block("javascript", "createHash"))
    r = subprocess.run([exe, str(script)], stdin=exported.open("rb"), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(exported.read_bytes().replace(b'"SN-000003"', b'"SN-000033"', 1))
    r = subprocess.run([exe, str(script)], stdin=tampered.open("rb"), capture_output=True, timeout=60)
    assert r.returncode != 0 and b"broken chain at line-2-blister/units/4" in r.stderr


def envelope(record: StoredRecord) -> dict:
    return orjson.loads(encode_record(AGENT, record, sent_at=1))


def chained(bodies: list[dict], versions: list[int]) -> list[StoredRecord]:
    out, prev = [], GENESIS
    for seq, (body, version) in enumerate(zip(bodies, versions, strict=True), start=1):
        rid = f"{AGENT}/events/{seq}"
        h = record_hash(prev, id=rid, stream="events", seq=seq, recorded_at=seq, body=body, version=version)
        out.append(StoredRecord("events", seq, rid, seq, body, prev, h))
        prev = h
    return out


def test_a_chain_begun_before_rfc8785_still_verifies(tmp_path) -> None:
    """A buffer written by an older linetap holds version 1 records; after the upgrade the chain goes on
    in version 2. Each record is published with the schema of its own version, and verifies."""
    bodies = [{"kind": "alarm", "value": 175.0, "n": i} for i in range(4)]
    records = chained(bodies, [LEGACY, LEGACY, JCS, JCS])
    assert records[0].hash != record_hash(GENESIS, id=records[0].id, stream="events", seq=1, recorded_at=1,
                                          body=bodies[0])  # 175.0 vs 175: the versions differ
    envelopes = [envelope(r) for r in records]
    assert [e["schema"] for e in envelopes] == ["linetap.event/1"] * 2 + ["linetap.event/2"] * 2
    capture = tmp_path / "mes capture.jsonl"
    capture.write_bytes(b"\n".join(orjson.dumps(e) for e in envelopes))
    assert verify([capture]).ok
    envelopes[1]["body"]["n"] = 9  # altered
    capture.write_bytes(b"\n".join(orjson.dumps(e) for e in envelopes))
    report = verify([capture])
    assert [f.kind for f in report.findings] == ["broken_chain"] and "seq 2" in report.findings[0].detail


def test_an_integer_rfc8785_cannot_write_is_hashed_as_version_1() -> None:
    body = {"kind": "unit_counter", "count": 2**63 - 1}
    (record,) = chained([body], [JCS])
    assert chain_version(record.hash, GENESIS, id=record.id, stream="events", seq=1, recorded_at=1,
                         body=body) == LEGACY
    assert envelope(record)["schema"] == "linetap.event/1"
