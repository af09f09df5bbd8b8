"""What every device config has, whatever its protocol: a name, a station, tags with unique names,
and the files it names resolved against the config file's folder.

A protocol's model extends `DeviceBase` with `protocol: Literal["x"]`, its connection settings and
`tags: list[XTag]` (XTag extending `TagBase`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from linetap.config.issues import unique_names

NAME_PATTERN = r"^[A-Za-z0-9_\-]+$"  # a topic level: no MQTT wildcards, separators or spaces


class TagBase(BaseModel):
    """One value of a device, as the agent names it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", description="tag name, unique per device")


class DeviceBase(BaseModel):
    """One piece of equipment the agent reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=NAME_PATTERN, description="device name, unique per line")
    station: str | None = Field(None, pattern=NAME_PATTERN,
                                description="ISA-95 station/work cell for topics; defaults to the device name")
    tags: list[TagBase] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_tag_names(self) -> Self:
        unique_names(self.tags, "tags", "tag")
        return self

    @property
    def station_name(self) -> str:
        return self.station or self.name

    def resolve_paths(self, base: Path) -> Self:
        """This device with the relative file paths it names joined to `base` (the config file's
        folder). A protocol that names files (certificates, password files) overrides this."""
        return self


def resolve(path: Path | None, base: Path) -> Path | None:
    """`path` joined to `base` when it is relative; absolute paths and None as they are."""
    return path if path is None or path.is_absolute() else base / path
