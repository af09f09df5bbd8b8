"""Every CLI input error is a message with exit 2 (bad arguments, bad config) or 3 (cannot run),
never a traceback: each command, with bad inputs, through the installed console script."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

LINETAP = Path(sys.executable).with_name("linetap")
EXAMPLE = Path(__file__).parent.parent / "config" / "examples" / "heat-sealer-modbus.yaml"


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    shutil.copy(EXAMPLE, d / "ok.yaml")
    (d / "folder").mkdir()
    (d / "afile").write_text("x\n")
    (d / "afile-empty").write_text("")
    text = EXAMPLE.read_text()
    (d / "buffer-folder.yaml").write_text(text.replace("path: heat-sealer-buffer.duckdb", "path: folder"))
    (d / "buffer-under-file.yaml").write_text(text.replace("path: heat-sealer-buffer.duckdb", "path: afile/b.duckdb"))
    (d / "no-password-file.yaml").write_text(text.replace("mqtt:\n", "mqtt:\n  username: u\n  password_file: nope\n", 1))
    (d / "url-credentials.yaml").write_text(text.replace("mqtt:\n", "mqtt:\n  url: mqtts://u:pw@broker:8883\n", 1))
    return d


def _busy_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


BUSY = _busy_port()

CASES = {
    # name: (arguments, exit code, a fragment of the message)
    "validate-missing": (["validate", "nope.yaml"], 2, "nope.yaml: file not found"),
    "validate-folder": (["validate", "folder"], 2, "is a folder, not a config file"),
    "validate-buffer-folder": (["validate", "buffer-folder.yaml"], 2, "buffer.path: buffer.path"),
    "validate-buffer-under-file": (["validate", "buffer-under-file.yaml"], 2, "is a file, not a folder"),
    "validate-password-file": (["validate", "no-password-file.yaml"], 2, "mqtt.password_file: password_file"),
    "validate-url-credentials": (["validate", "url-credentials.yaml"], 2, "must not hold a user name or password"),
    "run-missing": (["run", "nope.yaml"], 2, "file not found"),
    "run-folder": (["run", "folder"], 2, "is a folder"),
    "run-buffer-folder": (["run", "buffer-folder.yaml"], 3, "folder"),
    "status-missing": (["status", "nope.yaml"], 2, "file not found"),
    "status-buffer-under-file": (["status", "buffer-under-file.yaml"], 3, "cannot create the folder of buffer"),
    "export-bad-stream": (["export", "ok.yaml", "--stream", "nope"], 2, "expected telemetry, units or events"),
    "export-output-folder": (["export", "ok.yaml", "--stream", "units", "-o", "folder"], 2, "is a folder"),
    "export-output-no-folder": (["export", "ok.yaml", "--stream", "units", "-o", "nodir/x.jsonl"], 2,
                                "does not exist"),
    "export-bad-since": (["export", "ok.yaml", "--stream", "units", "--since", "yesterday"], 2, "ISO"),
    "replay-bad-seq": (["replay", "ok.yaml", "--stream", "units", "--from-seq", "abc"], 2, "from-seq"),
    "replay-missing": (["replay", "nope.yaml", "--stream", "units", "--from-seq", "1"], 2, "file not found"),
    "verify-missing": (["verify", "nope.jsonl"], 2, "no such file"),
    "verify-folder": (["verify", "folder"], 2, "a folder, not a capture file"),
    "browse-bad-endpoint": (["browse", "nope"], 2, "is not an OPC UA endpoint"),
    "browse-bad-port": (["browse", "opc.tcp://127.0.0.1:99999"], 2, "1..65535"),
    "browse-bad-depth": (["browse", "opc.tcp://127.0.0.1:4840", "--depth", "-1"], 2, "--depth"),
    "browse-missing-cert": (["browse", "opc.tcp://127.0.0.1:4840", "--cert", "nope.der"], 2, "does not exist"),
    "browse-refused": (["browse", f"opc.tcp://127.0.0.1:{BUSY.getsockname()[1] + 0}", "--depth", "1"], 3,
                       "cannot connect"),
    "certs-cert-folder": (["certs", "create", "--cert", "folder", "--key", "k.pem"], 2, "is a folder"),
    "certs-under-file": (["certs", "create", "--cert", "afile/x.der", "--key", "k.pem"], 2, "is a file, not a folder"),
    "certs-bad-days": (["certs", "create", "--days", "-5", "--cert", "c.der", "--key", "k2.pem"], 2, "days"),
    "simulate-modbus-port": (["simulate", "modbus", "--port", "70000"], 2, "--port"),
    "simulate-opcua-port": (["simulate", "opcua", "--port", "-1"], 2, "--port"),
    "simulate-modbus-busy": (["simulate", "modbus", "--port", str(BUSY.getsockname()[1])], 3, "cannot listen"),
    "simulate-modbus-share": (["simulate", "modbus", "--out-of-limit", "2"], 2, "between 0 and 1"),
    "simulate-opcua-host": (["simulate", "opcua", "--host", "no-such-host.invalid", "--port", "0"], 3,
                            "cannot listen"),
    "schema-extra": (["schema", "extra"], 2, "unexpected extra argument"),
    "sink-password-file-missing": (["sink", "--broker", "127.0.0.1:1", "--db", "mes-sink.duckdb", "--username", "mes",
                                    "--password-file", "no-such-pw"], 2, "--password-file no-such-pw does not exist"),
    "sink-password-file-empty": (["sink", "--broker", "127.0.0.1:1", "--db", "mes-sink.duckdb", "--username", "mes",
                                  "--password-file", "afile-empty"], 2, "is empty: its first line must be the password"),
    "demo-interval": (["demo", "--interval", "abc"], 2, "is not a duration"),
    "demo-duration": (["demo", "--duration", "-1"], 2, "--duration"),
    "demo-broker": (["demo", "--broker", "x:99999"], 2, "HOST:PORT"),
    "demo-tags": (["demo", "--tags", "-3"], 2, "--tags"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_a_message(name: str, place: Path) -> None:
    args, code, fragment = CASES[name]
    proc = subprocess.run([str(LINETAP), *args], cwd=place, capture_output=True, text=True, timeout=45,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert proc.returncode == code, out
    assert fragment in " ".join(out.replace("│", " ").split()), out
