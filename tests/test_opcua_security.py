"""OpcUaDriver on a secured simulator: SignAndEncrypt, certificates, user/password, clear errors."""

from __future__ import annotations

import orjson
import pytest
from fixtures_opcua import *  # noqa: F401,F403
from fixtures_opcua import collect, make_driver

from linetap.agent.cli.certs import create_certificate, describe_certificate
from linetap.drivers import DeviceConfigError, DeviceUnreachable, DriverError
from linetap.drivers.samples import Quality
from linetap.simulators.opcua_server import OpcUaStationServer
from linetap.simulators.station import StationModel

pytestmark = pytest.mark.timeout(60)

USERS = {"linetap": "s3cret-Pa55"}


@pytest.fixture
async def secure_sim(opcua_pki):
    server = OpcUaStationServer(StationModel(seed=5), port=0, certificate=opcua_pki["server_cert"],
                                private_key=opcua_pki["server_key"], secure_only=True, users=USERS,
                                trust_dir=opcua_pki["trusted_clients"])
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def security(pki, **kw):
    base = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "certificate": str(pki["client_cert"]),
            "private_key": str(pki["client_key"]), "server_certificate": str(pki["server_cert"]),
            "username": "linetap", "password": USERS["linetap"]}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"])
async def test_sign_and_encrypt_with_user(secure_sim, opcua_pki, policy):
    driver = make_driver(secure_sim.endpoint, security=security(opcua_pki, policy=policy))
    await driver.connect()
    try:
        batches = await collect(driver, 5.0, until=lambda bs: bool(bs))
    finally:
        await driver.close()
    assert batches and set(batches[0].tag) == set(driver.tag_names)
    assert all(q == Quality.GOOD for q in batches[0].quality)


async def test_trust_folder_and_password_file(secure_sim, opcua_pki, tmp_path):
    pw = tmp_path / "pw.txt"
    pw.write_text(USERS["linetap"] + "\n")
    sec = security(opcua_pki, server_certificate=None, trust_dir=str(opcua_pki["trusted_servers"]), password=None,
                   password_file=str(pw))
    driver = make_driver(secure_sim.endpoint, mode="poll", poll_interval="100ms", security=sec)
    await driver.connect()
    try:
        assert await collect(driver, 3.0, until=lambda bs: bool(bs))
    finally:
        await driver.close()


async def test_wrong_password_is_a_clear_driver_error(secure_sim, opcua_pki):
    driver = make_driver(secure_sim.endpoint, security=security(opcua_pki, password="wrong"))
    with pytest.raises(DriverError) as err:
        await driver.connect()
    msg = str(err.value)
    assert not isinstance(err.value, DeviceUnreachable), "a wrong password is not a network problem"
    assert "sealer1" in msg and secure_sim.endpoint in msg
    assert "BadUserAccessDenied" in msg and "wrong user or password" in msg, msg


async def test_anonymous_refused_when_users_required(secure_sim, opcua_pki):
    driver = make_driver(secure_sim.endpoint, security=security(opcua_pki, username=None, password=None))
    with pytest.raises(DriverError) as err:
        await driver.connect()
    assert "sealer1" in str(err.value) and "refuses anonymous users" in str(err.value)


@pytest.mark.parametrize("trust", ["other_file", "empty_folder"])
async def test_untrusted_server_certificate(secure_sim, opcua_pki, trust):
    sec = (security(opcua_pki, server_certificate=str(opcua_pki["other_server_cert"])) if trust == "other_file"
           else security(opcua_pki, server_certificate=None, trust_dir=str(opcua_pki["empty_trust"])))
    driver = make_driver(secure_sim.endpoint, security=sec)
    with pytest.raises(DriverError) as err:
        await driver.connect()
    msg = str(err.value)
    assert "sealer1" in msg and secure_sim.endpoint in msg and "server certificate not trusted" in msg, msg
    assert "thumbprint" in msg


async def test_client_certificate_not_trusted_by_server(secure_sim, opcua_pki):
    sec = security(opcua_pki, certificate=str(opcua_pki["rogue_cert"]), private_key=str(opcua_pki["rogue_key"]))
    driver = make_driver(secure_sim.endpoint, security=sec)
    with pytest.raises(DriverError) as err:
        await driver.connect()
    msg = str(err.value)
    assert "sealer1" in msg and secure_sim.endpoint in msg
    assert "BadCertificateUntrusted" in msg or "BadSecurityChecksFailed" in msg, msg


async def test_mode_not_offered_lists_what_the_server_offers(secure_sim, opcua_pki):
    driver = make_driver(secure_sim.endpoint, security=security(opcua_pki, mode="Sign"))
    with pytest.raises(DeviceConfigError, match="offers no endpoint with Basic256Sha256/Sign; it offers .*"
                                               "Basic256Sha256/SignAndEncrypt"):
        await driver.connect()


async def test_plain_client_refused_by_secure_only_server(secure_sim):
    driver = make_driver(secure_sim.endpoint, security={"username": "linetap", "password": USERS["linetap"]})
    with pytest.raises(DeviceConfigError) as err:
        await driver.connect()
    assert "sealer1" in str(err.value) and "no endpoint for security policy None" in str(err.value)


async def test_missing_key_file(secure_sim, opcua_pki, tmp_path):
    driver = make_driver(secure_sim.endpoint, security=security(opcua_pki, private_key=str(tmp_path / "nope.pem")))
    with pytest.raises(DriverError, match="private_key file .*nope.pem not found"):
        await driver.connect()


def test_certs_create_and_describe(tmp_path):
    cert, key = create_certificate(tmp_path / "c.pem", tmp_path / "k.pem", application_uri="urn:x:y",
                                   hostnames=["line3-pc", "10.1.2.3"], days=30)
    text = describe_certificate(cert)
    assert "urn:x:y" in text and "line3-pc" in text and "10.1.2.3" in text and "(valid)" in text
    assert (key.stat().st_mode & 0o777) == 0o600
    with pytest.raises(FileExistsError):
        create_certificate(cert, key)


@pytest.fixture
async def strict_sim(opcua_pki):
    """Refuses an untrusted client certificate at OpenSecureChannel (ErrorMessage
    BadSecurityChecksFailed, socket closed), as open62541 / Prosys / PLC servers do."""
    server = OpcUaStationServer(StationModel(seed=5), port=0, certificate=opcua_pki["server_cert"],
                                private_key=opcua_pki["server_key"], secure_only=True, users=USERS,
                                trust_dir=opcua_pki["trusted_clients"], reject_untrusted_at="channel")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _rogue(pki):
    return security(pki, certificate=str(pki["rogue_cert"]), private_key=str(pki["rogue_key"]))


async def test_channel_level_certificate_rejection_names_the_cert_to_trust(strict_sim, opcua_pki):
    driver = make_driver(strict_sim.endpoint, security=_rogue(opcua_pki))
    with pytest.raises(DriverError) as err:
        await driver.connect()
    msg = str(err.value)
    assert not isinstance(err.value, DeviceUnreachable), msg
    assert "AssertionError" not in msg, msg
    assert "BadSecurityChecksFailed" in msg, msg
    assert f"the server does not trust linetap's certificate: trust `{opcua_pki['rogue_cert'].resolve()}` " \
           "on the server" in msg, msg


async def test_channel_level_rejection_trusted_cert_still_connects(strict_sim, opcua_pki):
    driver = make_driver(strict_sim.endpoint, mode="poll", poll_interval="100ms", security=security(opcua_pki))
    await driver.connect()
    try:
        assert await collect(driver, 3.0, until=lambda bs: bool(bs))
    finally:
        await driver.close()


async def test_session_level_certificate_rejection_names_the_cert(secure_sim, opcua_pki):
    driver = make_driver(secure_sim.endpoint, security=_rogue(opcua_pki))
    with pytest.raises(DriverError) as err:
        await driver.connect()
    assert f"trust `{opcua_pki['rogue_cert'].resolve()}` on the server" in str(err.value)


async def test_wrong_password_names_user_and_fix(secure_sim, opcua_pki):
    driver = make_driver(secure_sim.endpoint, security=security(opcua_pki, password="wrong"))
    with pytest.raises(DriverError, match="wrong user or password for user 'linetap': check security.username"):
        await driver.connect()


async def test_browse_reports_certificate_rejection_in_words(strict_sim, opcua_pki):
    from linetap.agent.cli.browse import browse_async

    with pytest.raises(DriverError) as err:
        await browse_async(strict_sim.endpoint, security=_rogue(opcua_pki))
    msg = str(err.value)
    assert "AssertionError" not in msg and "does not trust linetap's certificate" in msg, msg


async def test_agent_reports_the_rejection_in_the_event_and_bad_samples(tmp_path, broker, capture, strict_sim,
                                                                        opcua_pki):
    """The agent end to end: the device_state event and the bad samples carry the cause and the fix."""
    from agent_helpers import line_config, payloads, running_agent

    from linetap.simulators.opcua_address_space import STATION_OPCUA_TAGS

    device = {"protocol": "opcua", "name": "sealer1", "endpoint": strict_sim.endpoint, "timeout": "2s",
              "tags": STATION_OPCUA_TAGS, "security": _rogue(opcua_pki)}
    want = f"trust `{opcua_pki['rogue_cert'].resolve()}` on the server"

    def events(m):
        return [d for d in payloads(m, "/events") if want in orjson.dumps(d).decode()]

    def bad(m):
        return [d for d in payloads(m, "/telemetry") if want in orjson.dumps(d).decode()]

    async with running_agent(line_config(tmp_path, broker, [device])):
        await capture.until(lambda m: events(m) and bad(m), timeout=20)
    text = orjson.dumps(payloads(capture.messages, "/events") + payloads(capture.messages, "/telemetry")).decode()
    assert "AssertionError" not in text
    assert "BadSecurityChecksFailed" in text


@pytest.fixture
async def fault_sim(opcua_pki):
    """Answers OpenSecureChannel from an untrusted client with a ServiceFault BadSecurityChecksFailed
    (inside the secure channel), which asyncua alone reports as a bare AssertionError."""
    server = OpcUaStationServer(StationModel(seed=5), port=0, certificate=opcua_pki["server_cert"],
                                private_key=opcua_pki["server_key"], secure_only=True, users=USERS,
                                trust_dir=opcua_pki["trusted_clients"], reject_untrusted_at="channel_fault")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_service_fault_answering_open_secure_channel_names_the_cert(fault_sim, opcua_pki):
    from linetap.agent.cli.browse import browse_async

    want = f"the server does not trust linetap's certificate: trust `{opcua_pki['rogue_cert'].resolve()}` on the server"
    driver = make_driver(fault_sim.endpoint, security=_rogue(opcua_pki))
    with pytest.raises(DriverError) as err:
        await driver.connect()
    msg = str(err.value)
    assert not isinstance(err.value, DeviceUnreachable), msg
    assert "AssertionError" not in msg and "BadSecurityChecksFailed" in msg and want in msg, msg
    with pytest.raises(DriverError) as err:
        await browse_async(fault_sim.endpoint, security=_rogue(opcua_pki))
    assert "AssertionError" not in str(err.value) and want in str(err.value), str(err.value)
    # a trusted client still connects through the same server
    driver = make_driver(fault_sim.endpoint, mode="poll", poll_interval="100ms", security=security(opcua_pki))
    await driver.connect()
    try:
        assert await collect(driver, 3.0, until=lambda bs: bool(bs))
    finally:
        await driver.close()
