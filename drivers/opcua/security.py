"""OPC UA security: the secure channel's policy and mode, linetap's own certificate, and whether the
server's certificate is trusted (the configured one, or one in the trust folder, and valid now)."""

from __future__ import annotations

import asyncio
import datetime as _dt
from pathlib import Path

from linetap.config.devices.opcua import OpcUaSecurity

from ..base import DeviceConfigError, DeviceUnreachable, DriverError
from .errors import describe_error

_POLICY_CLASS = {
    "Basic256Sha256": "SecurityPolicyBasic256Sha256",
    "Aes128_Sha256_RsaOaep": "SecurityPolicyAes128Sha256RsaOaep",
    "Aes256_Sha256_RsaPss": "SecurityPolicyAes256Sha256RsaPss",
}



async def apply_security(client, security: OpcUaSecurity, timeout: float, where: str) -> None:
    from asyncua import ua
    from asyncua.crypto import security_policies, uacrypto

    policy_cls = getattr(security_policies, _POLICY_CLASS[security.policy])
    mode = getattr(ua.MessageSecurityMode, security.effective_mode)
    for label, path in (("certificate", security.certificate), ("private_key", security.private_key)):
        if path is None or not Path(path).is_file():
            raise DriverError(f"{where}: security {label} file {path} not found "
                              "(create one with `linetap certs create`)")
    try:
        own_cert = await uacrypto.load_certificate(str(security.certificate))
    except Exception as err:
        raise DriverError(f"{where}: cannot load certificate {security.certificate}: {err}") from None
    uris = _cert_uris(own_cert)
    if uris:
        client.application_uri = uris[0]  # must match the certificate, or servers reject the session
    try:
        endpoints = await asyncio.wait_for(client.connect_and_get_server_endpoints(), timeout)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise DeviceUnreachable(f"cannot connect to {where}: {describe_error(exc, timeout)}") from None
    chosen = None
    for ep in endpoints:
        if ep.SecurityPolicyUri == policy_cls.URI and ep.SecurityMode == mode:
            chosen = ep
            break
    if chosen is None:
        offered = sorted({f"{ep.SecurityPolicyUri.rsplit('#', 1)[-1]}/{ep.SecurityMode.name}" for ep in endpoints})
        raise DeviceConfigError(f"{where}: the server offers no endpoint with {security.policy}/"
                                f"{security.effective_mode}; it offers {', '.join(offered)}")
    from asyncua.client.client import _first_cert_from_chain

    server_der = _first_cert_from_chain(chosen.ServerCertificate)
    await check_server_trusted(server_der, security, where)
    pk_password = security.private_key_password.get_secret_value() if security.private_key_password else None
    try:
        await client.set_security(policy_cls, str(security.certificate), str(security.private_key),
                                  pk_password, server_der, mode)
    except Exception as err:
        raise DriverError(f"{where}: cannot use certificate/key {security.certificate}, {security.private_key}: "
                          f"{err}") from None



def _cert_uris(cert) -> list[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return san.value.get_values_for_type(x509.UniformResourceIdentifier)



async def check_server_trusted(server_der: bytes, security: OpcUaSecurity, where: str) -> None:
    """Raise DriverError unless the server certificate is the configured one or in the trust folder."""
    from asyncua.crypto import uacrypto
    from cryptography.hazmat.primitives import hashes

    cert = uacrypto.x509_from_der(server_der)
    thumb = cert.fingerprint(hashes.SHA1()).hex()
    subject = cert.subject.rfc4514_string()
    now = _dt.datetime.now(_dt.UTC)
    if security.server_certificate is not None:
        try:
            pinned = await uacrypto.load_certificate(str(security.server_certificate))
        except Exception as err:
            raise DriverError(f"{where}: cannot load server_certificate {security.server_certificate}: {err}") from None
        if uacrypto.der_from_x509(pinned) == server_der:
            _check_validity(cert, now, where)
            return
    if security.trust_dir is not None:
        from asyncua.crypto.truststore import TrustStore

        if not Path(security.trust_dir).is_dir():
            raise DriverError(f"{where}: trust_dir {security.trust_dir} is not a folder")
        store = TrustStore([Path(security.trust_dir)], [])
        try:
            await store.load()
            trusted = store.validate(cert)
        except Exception:
            trusted = False
        if trusted:
            _check_validity(cert, now, where)
            return
    places = " or ".join(str(p) for p in (security.server_certificate, security.trust_dir) if p is not None)
    raise DriverError(f"{where}: server certificate not trusted (subject {subject}, SHA-1 thumbprint {thumb}); "
                      f"it is not the one in {places}. If this is the right server, put its certificate there.")



def _check_validity(cert, now: _dt.datetime, where: str) -> None:
    if cert.not_valid_after_utc < now or cert.not_valid_before_utc > now:
        raise DriverError(f"{where}: server certificate is trusted but not valid now (valid "
                          f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})")

