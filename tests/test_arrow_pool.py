"""The agent takes Arrow's memory from the system allocator (agent/runtime.py: measured RSS), unless
the operator chose a pool with ARROW_DEFAULT_MEMORY_POOL. Run in a child: the pool is process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = ("import pyarrow as pa; from linetap.agent.runtime import use_system_arrow_pool; "
         "use_system_arrow_pool(); print(pa.default_memory_pool().backend_name)")


def pool_after(env_pool: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if env_pool is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = env_pool
    return subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def test_the_agent_uses_the_system_allocator_for_arrow() -> None:
    assert pool_after(None) == "system"


def test_an_operators_choice_of_pool_stands() -> None:
    assert pool_after("mimalloc") == "mimalloc"
