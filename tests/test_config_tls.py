"""TLS client keys: an encrypted key is decrypted with tls.key_password / key_password_file, never
by a prompt; without a password, a clear error. Real keys (cryptography), a real Mosquitto listener."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fixtures_broker import Broker, find_mosquitto
from pydantic import SecretStr

from linetap.config.models import LineConfig, TLSConfig
from linetap.config.secrets import FileProblem
from linetap.config.tls import client_context

LINETAP = Path(sys.executable).with_name("linetap")


def _cert(subject: str, key, issuer_key, issuer: str, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(
            "127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("linetap-test-ca", ca_key, ca_key, "linetap-test-ca", ca=True)
    out: dict[str, Path] = {"dir": d}

    def pem(name: str, data: bytes) -> None:
        out[name] = d / name
        out[name].write_bytes(data)

    pem("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"linetap-{who}", key, ca_key, "linetap-test-ca", ca=False)
        pem(f"{who}.pem", cert.public_bytes(serialization.Encoding.PEM))
        pem(f"{who}.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
        if who == "client":
            pem("client-encrypted.key", key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"k3y-pass")))
    pem("key-password", b"k3y-pass\n")
    return out


def test_encrypted_key_loads_with_its_password(pki) -> None:
    for tls in (TLSConfig(ca_file=pki["ca.pem"], cert_file=pki["client.pem"], key_file=pki["client-encrypted.key"],
                          key_password=SecretStr("k3y-pass")),
                TLSConfig(ca_file=pki["ca.pem"], cert_file=pki["client.pem"], key_file=pki["client-encrypted.key"],
                          key_password_file=pki["key-password"])):
        assert isinstance(client_context(tls), ssl.SSLContext)


def test_encrypted_key_without_password_is_an_error_not_a_prompt(pki) -> None:
    tls = TLSConfig(cert_file=pki["client.pem"], key_file=pki["client-encrypted.key"])
    with pytest.raises(FileProblem, match="is encrypted: set tls.key_password") as err:
        client_context(tls)
    assert err.value.field == "key_file"
    wrong = TLSConfig(cert_file=pki["client.pem"], key_file=pki["client-encrypted.key"],
                      key_password=SecretStr("nope"))
    with pytest.raises(FileProblem, match="does not decrypt"):
        client_context(wrong)
    mismatch = TLSConfig(cert_file=pki["server.pem"], key_file=pki["client.key"])
    with pytest.raises(FileProblem, match="is not the key of cert_file"):
        client_context(mismatch)


def _yaml(pki, tls: str, extra: str = "") -> str:
    return (f"{extra}agent: {{id: a1, enterprise: e, site: s, area: a, line: l}}\n"
            f"mqtt:\n  url: mqtts://127.0.0.1:8883\n  tls:\n{tls}"
            "devices:\n  - {protocol: modbus, name: d, host: h, addressing: zero_based, tags: [{name: t, address: 0}]}\n")


def test_validate_on_a_terminal_never_prompts(pki, tmp_path) -> None:
    """`linetap validate` on a pseudo-terminal, an encrypted key without password: a message, exit 2."""
    import os
    import pty

    path = tmp_path / "line.yaml"
    path.write_text(_yaml(pki, f"    cert_file: {pki['client.pem']}\n    key_file: {pki['client-encrypted.key']}\n"))
    leader, follower = pty.openpty()
    try:
        started = time.monotonic()
        proc = subprocess.run([str(LINETAP), "validate", str(path)], stdin=follower, stdout=follower,
                              stderr=subprocess.PIPE, timeout=20, text=True)
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}:6: mqtt.tls.key_file: key_file {pki['client-encrypted.key']} is encrypted" in proc.stderr
    assert "PEM pass phrase" not in proc.stderr and time.monotonic() - started < 15


@pytest.mark.timeout(60)
@pytest.mark.skipif(find_mosquitto() is None, reason="needs mosquitto")
async def test_forwarder_connects_with_an_encrypted_client_key(pki, tmp_path) -> None:
    from linetap.agent.forwarder import MQTTForwarder
    from linetap.buffers import AsyncBuffer

    broker = Broker(tmp_path / "broker", listener_conf=(
        f"cafile {pki['ca.pem']}\ncertfile {pki['server.pem']}\nkeyfile {pki['server.key']}\n"
        "require_certificate true\n"))
    broker.start()
    buf = await AsyncBuffer.open(tmp_path / "buffer.duckdb", "a1")
    try:
        cfg = LineConfig.model_validate({
            "agent": {"id": "a1", "enterprise": "e", "site": "s", "area": "a", "line": "l"},
            "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min": 0.05, "reconnect_max": 0.5,
                     "tls": {"ca_file": str(pki["ca.pem"]), "cert_file": str(pki["client.pem"]),
                             "key_file": str(pki["client-encrypted.key"]),
                             "key_password_file": str(pki["key-password"])}},
            "devices": [{"protocol": "modbus", "name": "d", "host": "h", "addressing": "zero_based",
                         "tags": [{"name": "t", "address": 0}]}]})
        fwd = MQTTForwarder(cfg, buf)
        task = asyncio.create_task(fwd.run())
        try:
            for _ in range(500):
                if fwd.stats.connected:
                    break
                await asyncio.sleep(0.02)
            assert fwd.stats.connected, fwd.stats.last_error
        finally:
            task.cancel()
            await asyncio.wait({task}, timeout=10)
    finally:
        await buf.close()
        broker.stop()
