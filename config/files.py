"""The files a line config refers to, checked before the agent runs (`validate`, `run`, every command).

Each problem comes back as (document path, message), e.g. (("mqtt", "tls", "ca_file"), "ca_file
/etc/x.pem does not exist"); the loader turns them into FILE:LINE errors. Paths are the resolved
ones (relative paths already joined to the config file's folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .secrets import FileProblem, describe_os_error, read_secret_file, secret_value
from .tls import client_context

if TYPE_CHECKING:
    from .models import LineConfig

Problem = tuple[tuple[str | int, ...], str]
CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")


def check_files(cfg: LineConfig, buffer: bool = False) -> list[Problem]:
    """Problems with the files the config names; with `buffer`, also whether buffer.path can be a
    buffer (`validate` asks; `run`/`status`/`export` find out when they open it, exit 3)."""
    out = mqtt_files(cfg.mqtt)
    for i, device in enumerate(cfg.devices):
        security = getattr(device, "security", None)
        if security is not None:
            out += _opcua(("devices", i, "security"), security)
    if buffer:
        out += _buffer(cfg.buffer.path)
    return out


def mqtt_files(m) -> list[Problem]:
    """The password file and TLS files of an `mqtt:` block (the agent's, or the sink's)."""
    out: list[Problem] = []
    if m.password_file is not None:
        out += _secret(("mqtt", "password_file"), m.password_file)
    if m.tls is not None:
        tls_path = ("mqtt", "tls")
        if m.tls.key_password_file is not None:
            out += _secret((*tls_path, "key_password_file"), m.tls.key_password_file, "key_password_file")
        if not any(p == (*tls_path, "key_password_file") for p, _ in out):
            try:
                client_context(m.tls)
            except FileProblem as err:
                out.append(((*tls_path, err.field), str(err)))
    return out


def _secret(path: tuple[str | int, ...], file: Path, field: str = "password_file") -> list[Problem]:
    try:
        read_secret_file(file, field)
    except FileProblem as err:
        return [(path, str(err))]
    return []


def _read(path: Path, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise FileProblem(field, f"{field} {path} {describe_os_error(err)}") from None


def load_certificate(data: bytes):
    """A certificate from DER or PEM bytes (ValueError if neither)."""
    from cryptography import x509

    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _opcua(base: tuple[str | int, ...], security) -> list[Problem]:
    out: list[Problem] = []
    for field in ("certificate", "server_certificate"):
        path = getattr(security, field)
        if path is None:
            continue
        try:
            load_certificate(_read(path, field))
        except FileProblem as err:
            out.append(((*base, field), str(err)))
        except ValueError:
            out.append(((*base, field), f"{field} {path} is not a certificate (DER or PEM)"))
    if security.private_key is not None:
        try:
            _private_key(security)
        except FileProblem as err:
            out.append(((*base, err.field), str(err)))
    if security.trust_dir is not None:
        out += [((*base, "trust_dir"), m) for m in _trust_dir(security.trust_dir)]
    if security.password_file is not None:
        out += _secret((*base, "password_file"), security.password_file)
    return out


def _private_key(security) -> None:
    from cryptography.hazmat.primitives import serialization

    path = security.private_key
    data = _read(path, "private_key")
    password = secret_value(security.private_key_password, None)
    pem = data.lstrip().startswith(b"-----BEGIN")
    load = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    try:
        load(data, password=password.encode() if password is not None else None)
    except TypeError:  # encrypted and no password, or a password for a key that is not encrypted
        if password is None:
            raise FileProblem("private_key", f"private_key {path} is encrypted: set private_key_password "
                                             "(${ENV_VAR})") from None
        raise FileProblem("private_key_password", f"private_key {path} is not encrypted: remove "
                                                  "private_key_password") from None
    except ValueError:
        if password is not None and b"ENCRYPTED" in data:
            raise FileProblem("private_key_password", f"private_key_password does not decrypt private_key "
                                                      f"{path}") from None
        raise FileProblem("private_key", f"private_key {path} is not a private key (PEM or DER)") from None
    except Exception as err:  # noqa: BLE001 (an unsupported key type, ...)
        raise FileProblem("private_key", f"private_key {path} cannot be used: {err}") from None


def _trust_dir(folder: Path) -> list[str]:
    if not folder.exists():
        return [f"trust_dir {folder} does not exist"]
    if not folder.is_dir():
        return [f"trust_dir {folder} is a file, not a folder of certificates"]
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in CERT_SUFFIXES and p.is_file())
    except OSError as err:
        return [f"trust_dir {folder} {describe_os_error(err)}"]
    if not files:
        return [f"trust_dir {folder} holds no certificates ({', '.join('*' + s for s in CERT_SUFFIXES)}): put "
                "the server's certificate there"]
    out = []
    for file in files:
        try:
            load_certificate(_read(file, "trust_dir"))
        except FileProblem as err:
            out.append(str(err))
        except ValueError:
            out.append(f"trust_dir {folder}: {file.name} is not a certificate (DER or PEM)")
    return out


def _buffer(path: Path) -> list[Problem]:
    where = ("buffer", "path")
    if path.is_dir():
        return [(where, f"buffer.path {path} is a folder: give a file name, e.g. {path / 'linetap-buffer.duckdb'}")]
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return [(where, f"buffer.path {path} cannot be created: {ancestor} is a file, not a folder")]
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            return [(where, f"buffer.path {path} cannot be written by this user (permission denied)")]
    elif not os.access(ancestor, os.W_OK | os.X_OK):
        return [(where, f"buffer.path {path} cannot be created: this user may not write in {ancestor}")]
    return []
