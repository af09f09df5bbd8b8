"""The TLS context of the broker connection, built from `mqtt.tls`; used by the agent and by `validate`.

It never reads from a terminal: an encrypted client key is decrypted with `key_password` /
`key_password_file`, and without one the load fails with a message instead of OpenSSL's
`Enter PEM pass phrase:` prompt.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from .secrets import FileProblem, describe_os_error, secret_value

if TYPE_CHECKING:
    from .models import TLSConfig


def client_context(tls: TLSConfig) -> ssl.SSLContext:
    """An ssl.SSLContext that verifies the broker (its CA, or the system's) and presents the client
    certificate if configured. Raises FileProblem naming the field, the file and what is wrong."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.ca_file))
        except OSError as err:
            if not isinstance(err, ssl.SSLError):
                raise FileProblem("ca_file", f"ca_file {tls.ca_file} {describe_os_error(err)}") from None
            raise FileProblem("ca_file", f"ca_file {tls.ca_file} holds no PEM certificate that can be read "
                                         f"({_reason(err)})") from None
    if tls.cert_file is not None and tls.key_file is not None:
        password = secret_value(tls.key_password, tls.key_password_file, "key_password_file")
        asked = []

        def give_password() -> str:
            asked.append(True)
            if password is None:
                raise FileProblem("key_file", f"key_file {tls.key_file} is encrypted: set tls.key_password "
                                              "(${ENV_VAR}) or tls.key_password_file")
            return password

        for field, path in (("cert_file", tls.cert_file), ("key_file", tls.key_file)):
            try:
                with open(path, "rb"):
                    pass
            except OSError as err:
                raise FileProblem(field, f"{field} {path} {describe_os_error(err)}") from None
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=give_password)
        except FileProblem:
            raise
        except ssl.SSLError as err:
            reason = _reason(err)
            if "KEY_VALUES_MISMATCH" in str(err) or "key values mismatch" in reason:
                raise FileProblem("key_file", f"key_file {tls.key_file} is not the key of cert_file "
                                              f"{tls.cert_file}") from None
            if asked:  # the key is encrypted and the password did not open it
                field = "key_password" if tls.key_password is not None else "key_password_file"
                raise FileProblem(field, f"the key password does not decrypt key_file {tls.key_file}") from None
            raise FileProblem("cert_file", f"cert_file {tls.cert_file} / key_file {tls.key_file}: not a PEM "
                                           f"certificate and its private key ({reason})") from None
    if tls.insecure:
        ctx.check_hostname = False
    return ctx


def _reason(err: ssl.SSLError) -> str:
    reason = getattr(err, "reason", None) or ""
    text = str(err)
    return (reason.replace("_", " ").lower() if reason else text)[:120]
