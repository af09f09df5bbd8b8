"""The benchmark harness cannot rot: its smoke mode runs (a few seconds) and prints its tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(180)
def test_benchmark_smoke_mode_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--workdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=170, cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for heading in ("End to end", "Latency", "Buffer append", "Backlog drain"):
        assert heading in r.stdout, heading
