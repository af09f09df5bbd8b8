"""`linetap service install|uninstall CONFIG`: the agent as a hardened systemd service.

The unit: `Type=notify` (the agent says READY once its buffer is open and its tasks run, and pings
the watchdog from its event loop: a hung agent is restarted), `Restart=always`, a dedicated user,
`ProtectSystem=strict` with the buffer's folder as the only writable path (the buffer, its WAL,
the status file and kept copies all live there), `ExecReload` sending SIGHUP.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import typer

from .common import EXIT_RUNTIME, app, load_or_exit

service_app = typer.Typer(help="Run the agent as a systemd service (Linux line PCs).", no_args_is_help=True)
app.add_typer(service_app, name="service")

UNIT_DIR = Path("/etc/systemd/system")


def quote(value: str) -> str:
    """A word of a list setting (ExecStart=, ReadWritePaths=): quoted (paths with spaces), `%` doubled
    (systemd's specifiers). Single-path settings (WorkingDirectory=) take the rest of the line as it is."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def unit_name(agent_id: str) -> str:
    return f"linetap-{agent_id}.service"


def _command() -> list[str]:
    script = Path(sys.executable).with_name("linetap")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "linetap.agent.cli"]


def render_unit(config_path: Path, cfg, user: str, watchdog_sec: int) -> str:
    config_path = config_path.resolve()
    buffer_dir = cfg.buffer.path.resolve().parent
    exec_start = " ".join(quote(w) for w in [*_command(), "run", str(config_path)])
    return f"""# written by `linetap service install` for agent {cfg.agent.id}
[Unit]
Description=linetap agent {cfg.agent.id} ({config_path.name})
Documentation=https://linetap.dev/docs
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
WorkingDirectory={str(config_path.parent).replace("%", "%%")}
# ${{VAR}} secrets of the config (e.g. LINETAP_MQTT_PASSWORD=...), root-readable only
EnvironmentFile=-/etc/linetap/{cfg.agent.id}.env
Restart=always
RestartSec=5
WatchdogSec={watchdog_sec}
TimeoutStartSec=120
TimeoutStopSec=60
User={user}
Group={user}
# RS-485 adapters (/dev/ttyUSB*) belong to dialout
SupplementaryGroups=dialout
ProtectSystem=strict
ReadWritePaths={quote(str(buffer_dir))}
ProtectHome=read-only
PrivateTmp=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
CapabilityBoundingSet=
AmbientCapabilities=
UMask=0027

[Install]
WantedBy=multi-user.target
"""


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


@service_app.command()
def install(
    config: Path = typer.Argument(..., help="line config (YAML)"),
    print_only: bool = typer.Option(False, "--print", help="print the unit instead of writing it"),
    user: str = typer.Option("linetap", help="the service's own user (create it first: see the steps printed)"),
    watchdog_sec: int = typer.Option(30, min=5, help="systemd restarts an agent whose event loop stops this long"),
    unit_dir: Path = typer.Option(UNIT_DIR, help="where the unit is written"),
) -> None:
    """Write (or print) a systemd unit that runs `linetap run CONFIG`, hardened."""
    cfg = load_or_exit(config)
    text = render_unit(config, cfg, user, watchdog_sec)
    if print_only:
        sys.stdout.write(text)
        return
    path = unit_dir / unit_name(cfg.agent.id)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        typer.echo(f"linetap service install: cannot write {path}: {err.strerror or err} "
                   f"({'run it as root: sudo linetap service install ...' if os.geteuid() != 0 else 'check the folder'})",
                   err=True)
        raise typer.Exit(EXIT_RUNTIME) from None
    reloaded = unit_dir == UNIT_DIR and _systemd_running()
    if reloaded:
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    buffer_dir = cfg.buffer.path.resolve().parent
    typer.echo(f"wrote {path}{' (systemctl daemon-reload done)' if reloaded else ''}. Then, as root:\n"
               f"  id {user} || useradd --system --no-create-home --shell /usr/sbin/nologin {user}\n"
               f"  mkdir -p {quote(str(buffer_dir))} && chown -R {user}:{user} {quote(str(buffer_dir))}\n"
               f"  systemctl enable --now {path.name}\n"
               f"  systemctl status {path.name}; journalctl -u {path.name} -f")


@service_app.command()
def uninstall(
    config: Path = typer.Argument(..., help="line config (YAML) the service was installed for"),
    unit_dir: Path = typer.Option(UNIT_DIR, help="where the unit was written"),
) -> None:
    """Stop and disable the agent's service and remove its unit (the buffer is kept)."""
    cfg = load_or_exit(config)
    path = unit_dir / unit_name(cfg.agent.id)
    if not path.exists():
        typer.echo(f"linetap service uninstall: no unit {path}: nothing to remove", err=True)
        raise typer.Exit(EXIT_RUNTIME)
    systemd = unit_dir == UNIT_DIR and _systemd_running()
    if systemd:
        subprocess.run(["systemctl", "disable", "--now", path.name], check=False)
    try:
        path.unlink()
    except OSError as err:
        typer.echo(f"linetap service uninstall: cannot remove {path}: {err.strerror or err}", err=True)
        raise typer.Exit(EXIT_RUNTIME) from None
    if systemd:
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    typer.echo(f"removed {path}; the buffer {cfg.buffer.path} is kept")
