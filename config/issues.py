"""One problem in a config file (`ConfigIssue`) and the error carrying all of them (`ConfigError`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Path_ = tuple[str | int, ...]  # a position in the document: keys and sequence indexes


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file. `line` is 1-based (None when the file could not be read);
    `field` is the path in the document, e.g. `devices[0].tags[2].type` ("" when unknown)."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigError(Exception):
    """The config file is wrong. `str()` is one `FILE:LINE: field: message` line per issue."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line if i.line is not None else 0))
        super().__init__("\n".join(str(i) for i in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)



def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def describe(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value!r}" if len(value) <= 40 else "a text"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    return f"a {type(value).__name__}"


class At(ValueError):
    """A model check's error that knows where the mistake is, so that the loader points at that line
    rather than guessing from names (a station and a device may share a name).

    `loc` is relative to the model that raises it, e.g. ("stations", 1, "start", "tag");
    `first` optionally points at an earlier place the message refers to (a first definition)."""

    def __init__(self, loc: Path_, message: str, first: Path_ | None = None) -> None:
        super().__init__(message)
        self.loc = tuple(loc)
        self.first = tuple(first) if first is not None else None


def unique_names(items, key: str, what: str) -> None:
    """Raise At at the second of two `items` (under `key`) with the same `.name`, pointing back at
    the first: `duplicate <what> name 'x'`. One check for tags, parameters, devices and stations."""
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.name in seen:
            raise At((key, i, "name"), f"duplicate {what} name {item.name!r}", first=(key, seen[item.name], "name"))
        seen[item.name] = i
