"""Shared fixtures: each kind lives in its own module beside this file."""

from fixtures_broker import *  # noqa: F401,F403  (Mosquitto / embedded broker on a free port)
from fixtures_postgres import *  # noqa: F401,F403  (a private PostgreSQL, for the sink tests)
from fixtures_serial import *  # noqa: F401,F403  (a socat pty pair, for Modbus RTU)
from fixtures_sim import *  # noqa: F401,F403  (station simulators on port 0)


def pytest_report_header(config):
    return broker_report_header()  # noqa: F405
