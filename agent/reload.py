"""Hot reload: SIGHUP (or `linetap reload CONFIG`) re-reads the line's YAML while the agent runs.

- A file that does not validate changes nothing: every error is logged as FILE:LINE and the agent
  keeps running on the config it has.
- Devices and stations may change; anything else (agent id, buffer, broker, logging, metrics, ...)
  needs a restart: such a reload is refused as a whole, with the settings named.
- Applied without a restart: an unchanged device keeps polling (its task is not touched); a
  removed device stops; a changed one restarts with its new settings; an added one starts. Seqs
  continue (the buffer is the same), nothing buffered is touched. A station whose unit is in
  progress finishes that unit under the config it started with (its limits, its
  `config_version`); its next unit uses the new definition. A station removed mid-unit closes
  the unit `incomplete`.
- A `config_changed` event records it: old and new `config_version` and what changed (devices,
  tags, stations, parameters and their limits: added, removed, modified).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import structlog

from linetap.agent.capture import config_version
from linetap.agent.deadband import ExceptionFilter
from linetap.agent.status_file import DeviceStatus
from linetap.agent.tasks import cancel_and_wait
from linetap.buffers.records import Event
from linetap.config.models import LineConfig
from linetap.drivers.samples import now_us

log = structlog.get_logger("linetap.agent")

__all__ = ["RELOADABLE", "Reloader", "config_changes"]

RELOADABLE = ("devices", "stations")  # the parts of a line config applied while running


def _by_name(items: list[Any]) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in items}


def _named_diff(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    a, b = _by_name(old), _by_name(new)
    return ([n for n in b if n not in a], [n for n in a if n not in b],
            [n for n in b if n in a and a[n] != b[n]])


def _settings(old: dict[str, Any], new: dict[str, Any], skip: str) -> list[str]:
    return sorted(k for k in set(old) | set(new) if k != skip and old.get(k) != new.get(k))


def config_changes(old: LineConfig, new: LineConfig) -> tuple[list[str], dict[str, Any]]:
    """(settings that need a restart, what changed in devices and stations)."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    refused = []
    for key in sorted(set(a) | set(b)):
        if key in RELOADABLE or a.get(key) == b.get(key):
            continue
        sub_a, sub_b = a.get(key), b.get(key)
        if isinstance(sub_a, dict) and isinstance(sub_b, dict):
            refused.extend(f"{key}.{k}" for k in _settings(sub_a, sub_b, ""))
        else:
            refused.append(key)
    changes: dict[str, Any] = {}
    added, removed, modified = _named_diff(a["devices"], b["devices"])
    if added or removed or modified:
        devs: dict[str, Any] = {"added": added, "removed": removed, "modified": {}}
        for name in modified:
            d_old, d_new = _by_name(a["devices"])[name], _by_name(b["devices"])[name]
            t_added, t_removed, t_modified = _named_diff(d_old["tags"], d_new["tags"])
            devs["modified"][name] = {k: v for k, v in (
                ("tags_added", t_added), ("tags_removed", t_removed), ("tags_modified", t_modified),
                ("settings", _settings(d_old, d_new, "tags"))) if v}
        changes["devices"] = devs
    added, removed, modified = _named_diff(a["stations"], b["stations"])
    if added or removed or modified:
        sts: dict[str, Any] = {"added": added, "removed": removed, "modified": {}}
        for name in modified:
            s_old, s_new = _by_name(a["stations"])[name], _by_name(b["stations"])[name]
            p_added, p_removed, p_modified = _named_diff(s_old["parameters"], s_new["parameters"])
            p_old, p_new = _by_name(s_old["parameters"]), _by_name(s_new["parameters"])
            limits = [{"parameter": p, "old": p_old[p].get("limits"), "new": p_new[p].get("limits"),
                       "spec": p_new[p].get("spec")}
                      for p in p_modified if p_old[p].get("limits") != p_new[p].get("limits")]
            sts["modified"][name] = {k: v for k, v in (
                ("parameters_added", p_added), ("parameters_removed", p_removed),
                ("parameters_modified", p_modified), ("limits", limits),
                ("settings", _settings(s_old, s_new, "parameters"))) if v}
        changes["stations"] = sts
    return refused, changes


class Reloader:
    """Owned by the agent: `request(path)` (from the SIGHUP handler) wakes `run()`, a task of the
    agent's TaskGroup, which loads the file and applies it."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self._wanted: asyncio.Queue[Path] = asyncio.Queue()
        self.applied = 0

    def request(self, path: Path) -> None:
        self._wanted.put_nowait(path)

    async def run(self) -> None:
        from linetap.config.loader import ConfigError, load_config

        while True:
            path = await self._wanted.get()
            log.info("config reload requested", config=str(path))
            try:
                new = await asyncio.to_thread(load_config, path)
            except ConfigError as err:
                log.error("config reload failed: the agent keeps running on the config it has",
                          config=str(path), errors=str(err).splitlines())
                continue
            except OSError as err:
                log.error("config reload failed: cannot read the file; the agent keeps running on the config it has",
                          config=str(path), error=err.strerror or str(err))
                continue
            try:
                await self.apply(new, path)
            except Exception as exc:  # noqa: BLE001 (a reload must never stop the agent)
                log.exception("config reload failed while applying it", config=str(path), error=str(exc))

    async def apply(self, new: LineConfig, path: Path | None = None) -> dict[str, Any] | None:
        a = self.agent
        old = a.config
        refused, changes = config_changes(old, new)
        if refused:
            log.error("config reload refused: these settings need a restart (systemctl restart, or stop and "
                      "start linetap run); nothing was changed", config=str(path), settings=refused)
            return None
        if not changes:
            log.info("config reload: nothing to change", config=str(path))
            return None
        old_version, new_version = config_version(old), config_version(new)
        devs = changes.get("devices", {})
        stopping = [*devs.get("removed", []), *devs.get("modified", {})]
        await cancel_and_wait([a._devices.pop(n) for n in stopping if n in a._devices])
        for name in devs.get("removed", []):  # kept (its last batches may still be on their way): marked
            status = a.stats.devices[name]
            status.state, status.since, status.reason = "removed", now_us(), "removed by a config reload"
        a.config = new
        filters = ExceptionFilter(new.devices)  # report by exception: unchanged devices keep their state
        for name, f in a.exceptions.devices.items():
            if name in filters.devices and name not in stopping:
                filters.devices[name] = f
        filters.offered, filters.passed = a.exceptions.offered, a.exceptions.passed
        a.exceptions = filters
        a.forwarder.encoder.topics.stations = {d.name: d.station_name for d in new.devices}
        units, events = a.capture.reconfigure(new, now_us())
        for d in new.devices:
            if d.name in devs.get("added", []) or d.name in devs.get("modified", {}):
                a.stats.devices.setdefault(d.name, DeviceStatus())
                a._devices[d.name] = a._tg.create_task(a._device_loop(d), name=f"device:{d.name}")
        body = {"old_version": old_version, "new_version": new_version, "config": str(path) if path else None,
                "changes": changes}
        a.put_captured(units, [*events, Event("config_changed", now_us(), data=body)])
        a.metrics.reconfigured(new_version)
        self.applied += 1
        log.warning("config reloaded", config=str(path), old_version=old_version, new_version=new_version,
                    **{k: v for k, v in changes.items()})
        return body
