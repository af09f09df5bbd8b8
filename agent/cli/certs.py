"""`linetap certs create`: a self-signed OPC UA application certificate and its private key.

OPC UA authenticates applications, not hosts: the certificate carries the application URI (the
server compares it with the client's ApplicationDescription) and the host names / IP addresses in
its SubjectAltName. The certificate is written as DER (`.der`, the OPC UA convention) or PEM
(`.pem`), the key as PEM with mode 0600. Copy the certificate (never the key) into the server's
trusted-certificates folder, or let the PLC engineer accept it on the PLC.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import socket
from pathlib import Path

import typer

from .common import EXIT_CONFIG, app, describe_os_error


def default_application_uri(name: str = "linetap") -> str:
    return f"urn:linetap:{socket.gethostname()}:{name}"


def create_certificate(
    cert_path: str | Path,
    key_path: str | Path,
    *,
    application_uri: str | None = None,
    common_name: str = "linetap",
    hostnames: list[str] | None = None,
    days: int = 3650,
    server: bool = False,
    organization: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write a self-signed application certificate and key; return (cert_path, key_path).

    `hostnames`: DNS names and IP addresses for the SubjectAltName (default: this host's name,
    localhost, 127.0.0.1). `server=True` makes a server certificate (serverAuth), else a client one
    (clientAuth). Refuses to overwrite existing files unless `overwrite`.
    """
    from asyncua.crypto.cert_gen import (
        dump_private_key_as_pem,
        generate_private_key,
        generate_self_signed_app_certificate,
    )
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert_path, key_path = Path(cert_path), Path(key_path)
    for p in (cert_path, key_path):
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; remove it first (or pass overwrite) to make a new certificate")
    if days < 1:
        raise ValueError("days must be at least 1")
    application_uri = application_uri or default_application_uri(common_name)
    if hostnames is None:
        hostnames = sorted({socket.gethostname(), "localhost", "127.0.0.1"})
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    for host in hostnames:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    names = {"O": organization} if organization else {}
    key = generate_private_key()
    cert = generate_self_signed_app_certificate(
        key, common_name, names, alt_names,
        [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH], days=days)
    encoding = serialization.Encoding.PEM if cert_path.suffix.lower() == ".pem" else serialization.Encoding.DER
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(encoding))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(dump_private_key_as_pem(key))
    return cert_path, key_path


def describe_certificate(path: str | Path) -> str:
    """Subject, application URI, validity and SHA-1 thumbprint of a certificate file (DER or PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    data = Path(path).read_bytes()
    cert = x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----") else \
        x509.load_der_x509_certificate(data)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        hosts = [str(h) for h in san.get_values_for_type(x509.DNSName) + san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        uris, hosts = [], []
    now = _dt.datetime.now(_dt.UTC)
    state = "valid" if cert.not_valid_before_utc <= now <= cert.not_valid_after_utc else "NOT VALID NOW"
    return (f"subject {cert.subject.rfc4514_string()}\n"
            f"application URI {', '.join(uris) or '(none)'}\n"
            f"hosts {', '.join(hosts) or '(none)'}\n"
            f"valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d} ({state})\n"
            f"SHA-1 thumbprint {cert.fingerprint(hashes.SHA1()).hex()}")


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

certs_app = typer.Typer(help="OPC UA application certificates for secured connections.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")


@certs_app.command("create")
def certs_create(
    cert: Path = typer.Option(Path("pki/linetap-cert.der"), help="certificate file (.der or .pem)"),
    key: Path = typer.Option(Path("pki/linetap-key.pem"), help="private key file (PEM, mode 0600)"),
    application_uri: str | None = typer.Option(None, help="default: urn:linetap:<hostname>:linetap"),
    host: list[str] | None = typer.Option(None, help="DNS name or IP for the certificate (repeat); "
                                           "default: this host, localhost, 127.0.0.1"),
    days: int = typer.Option(3650, help="validity in days"),
    overwrite: bool = typer.Option(False, help="replace existing files"),
) -> None:
    """Create a self-signed OPC UA client certificate and key; give the certificate to the PLC engineer."""

    for option, path in (("--cert", cert), ("--key", key)):
        if path.is_dir():
            raise typer.BadParameter(f"{path} is a folder: give a file name", param_hint=option)
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise typer.BadParameter(f"{parent} is a file, not a folder", param_hint=option)
    try:
        create_certificate(cert, key, application_uri=application_uri, hostnames=host or None, days=days,
                           overwrite=overwrite)
    except (FileExistsError, ValueError) as err:
        typer.echo(f"linetap certs create: {err}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    except OSError as err:
        typer.echo(f"linetap certs create: cannot write {err.filename or cert}: {describe_os_error(err)}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    typer.echo(f"wrote {cert} and {key}\n{describe_certificate(cert)}\n"
               f"Next: copy {cert} (not the key) into the server's trusted certificates.")
