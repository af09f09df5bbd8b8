"""Secrets: a value from the YAML (normally `${ENV_VAR}`) or the first line of a file.

One behaviour everywhere (MQTT, OPC UA, TLS key passwords): a password file that is missing,
unreadable or empty is an error naming the file, never "no password".
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr


class FileProblem(ValueError):
    """A file the config refers to cannot be used. `field` is the config key that names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def describe_os_error(err: OSError) -> str:
    if isinstance(err, FileNotFoundError):
        return "does not exist"
    if isinstance(err, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(err, NotADirectoryError):
        return "does not exist (a part of the path is a file, not a folder)"
    if isinstance(err, PermissionError):
        return "cannot be read by this user (permission denied)"
    return f"cannot be read: {err.strerror or err}"


def read_secret_file(path: Path, field: str = "password_file") -> str:
    """The first line of `path` (without the line break). Raises FileProblem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise FileProblem(field, f"{field} {path} {describe_os_error(err)}") from None
    except UnicodeDecodeError:
        raise FileProblem(field, f"{field} {path} is not a text file") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise FileProblem(field, f"{field} {path} is empty: its first line must be the password")
    return lines[0]


def secret_value(value: SecretStr | None, file: Path | None, field: str = "password_file") -> str | None:
    """The secret given inline (already substituted from `${VAR}`), else the first line of `file`,
    else None (none configured). Raises FileProblem for a file that cannot be used."""
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        return read_secret_file(file, field)
    return None
