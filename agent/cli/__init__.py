"""The `linetap` command line: one module per command, each registering itself on `app`.

`linetap.agent.cli:app` is the console entry point. The import order below is the order of the
commands in `linetap --help`.
"""

from __future__ import annotations

# isort: off
from . import validate, run, simulate, demo, export, replay, verify, certs, browse, sink, archive, service  # noqa: F401,E501
# isort: on
from .common import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - entry point
    app()
