"""`linetap sink --config mes-sink.yaml`: the sink's settings in a file, loaded like a line config
(FILE:LINE errors, `${VAR}`, no literal passwords, paths relative to the file); against a real
Mosquitto, with TLS and a password."""

from __future__ import annotations

import os
import shutil
import time

import orjson
import pytest
from fixtures_broker import MQTTCapture
from sink_helpers import SinkProc, linetap, query, tls_broker_with_password
from test_config_tls import pki  # noqa: F401 (fixture: a CA, server and client certificates)
from test_sink_store import ROOT, publish_all, unit_record

from linetap.buffers.integrity import GENESIS


def write(folder, text: str):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mes-sink.yaml"
    path.write_text(text)
    return path


def test_the_settings_file_lands_records_where_it_says(broker, tmp_path):
    folder = tmp_path / "mes side"
    cfg = write(folder, f"mqtt:\n  host: {broker.host}\n  port: {broker.port}\n  session_expiry: 1h\n"
                        f"db: mes sink.duckdb\ntopic: \"{ROOT}/#\"\nreplay_after: 1s\nreplay_attempts: 1\n")
    asks = MQTTCapture(broker.host, broker.port, (f"{ROOT}/_agent/+/replay",)).start()
    sink = SinkProc(None, None, tmp_path / "sink.log", "--config", str(cfg), client_id="mes-sink-a")
    try:
        first = unit_record(1, GENESIS, "SN-1")
        publish_all(broker, [(f"{ROOT}/sealer1/units", orjson.dumps(first)),
                             (f"{ROOT}/sealer1/units", orjson.dumps(unit_record(3, "f" * 64, "SN-3")))])
        # seq 2 never comes: asked for after replay_after, once (replay_attempts)
        request = orjson.loads(asks.wait_for(lambda m: m, timeout=20)[0].payload)
        time.sleep(1.0)
    finally:
        sink.stop()
        asks.close()
    assert query(str(folder / "mes sink.duckdb"), "SELECT seq, serial FROM units") == [(1, "SN-1"), (3, "SN-3")]
    assert (request["stream"], request["from_seq"], request["to_seq"], request["requested_by"]) == (
        "units", 2, 2, "mes-sink-a")


@pytest.mark.timeout(90)
def test_tls_and_a_password_from_the_environment(pki, tmp_path):  # noqa: F811 (the fixture)
    b = tls_broker_with_password(pki, tmp_path)
    folder = tmp_path / "mes side"
    folder.mkdir()
    shutil.copy(pki["ca.pem"], folder / "plant-ca.pem")
    cfg = write(folder, f"mqtt:\n  host: {b.host}\n  port: {b.port}\n  username: mes-sink\n"
                        "  password: ${LINETAP_TEST_SINK_PASSWORD}\n  tls:\n    ca_file: plant-ca.pem\n"
                        "db: mes.duckdb\n")
    b.start()
    os.environ["LINETAP_TEST_SINK_PASSWORD"] = "s3cret"
    try:
        SinkProc(None, None, tmp_path / "sink.log", "--config", str(cfg)).stop()  # subscribed: TLS and login work
        os.environ["LINETAP_TEST_SINK_PASSWORD"] = "wrong"
        r = linetap("sink", "--config", str(cfg), timeout=30)
        assert r.returncode == 3 and "refused the connection" in r.stderr, r.stderr
    finally:
        del os.environ["LINETAP_TEST_SINK_PASSWORD"]
        b.stop()


@pytest.mark.parametrize("text, where, words", [
    ("mqtt:\n  host: h\n  prot: 1884\ndb: x.duckdb\n", ":3", "prot"),
    ("mqtt:\n  host: h\n  username: u\n  password: hunter2\ndb: x.duckdb\n", ":4", "a password written in the file"),
    ("mqtt:\n  host: h\n  username: u\n  password_file: missing.pw\ndb: x.duckdb\n", ":4", "missing.pw"),
    ("mqtt:\n  host: h\n  password_file: sink.pw\ndb: x.duckdb\n", "", "a password needs a username"),
    ("mqtt:\n  host: h\ndb: x.duckdb\ntopic: a/#/b\n", ":4", "not an MQTT topic filter"),
    ("mqtt:\n  host: h\n  tls:\n    ca_file: nowhere.pem\ndb: x.duckdb\n", ":4", "nowhere.pem"),
    ("mqtt:\n  host: h\ndb: x.duckdb\nreplay_attempts: 0\n", ":4", "replay_attempts"),
    ("mqtt:\n  host: h\ndb: x.duckdb\nreplay_after: soon\n", ":4", "replay_after"),
], ids=["unknown-key", "literal-password", "missing-password-file", "password-without-user", "bad-filter",
        "missing-ca", "zero-replay-attempts", "replay-after-not-a-duration"])
def test_a_wrong_settings_file_is_exit_2_with_file_and_line(tmp_path, text, where, words):
    (tmp_path / "mes side").mkdir()
    (tmp_path / "mes side" / "sink.pw").write_text("s3cret\n")
    cfg = write(tmp_path / "mes side", text)
    r = linetap("sink", "--config", str(cfg))
    assert r.returncode == 2, r.stderr
    assert f"mes-sink.yaml{where}" in r.stderr and words in r.stderr, r.stderr


def test_options_and_the_file_do_not_mix(tmp_path):
    cfg = write(tmp_path / "mes side", "mqtt:\n  host: h\ndb: x.duckdb\n")
    r = linetap("sink", "--config", str(cfg), "--db", "other.duckdb")
    assert r.returncode == 2 and "--db: set it in" in r.stderr, r.stderr
    r = linetap("sink", "--db", "x.duckdb")
    assert r.returncode == 2 and "give --broker, or the settings file with --config" in r.stderr, r.stderr
