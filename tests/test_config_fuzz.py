"""Random mutations of the shipped examples (seeded): every one loads or is a ConfigError, quickly;
never another exception, never a hang. A few go through `linetap validate` too."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from linetap.config import models
from linetap.config.loader import ConfigError, LineConfig, parse_config

EXAMPLES = Path(models.__file__).parent / "examples"
SOURCES = sorted(EXAMPLES.glob("*.yaml"))
TOKENS = ["", "abc", "-1", "0", "1e400", "[", "]", "{", "}", "*x", "&a", "!!int z", "!!float q", "!foo", "0,1",
          "~", "true", "'", '"', ":", ": :", "\t", "- ", "${NOPE}", "${", "$${X}", "<<: *a", "? x", "|", ">",
          "%TAG", "---", "...", "@", "`", "65536", "2GB", "5s", "mqtts://u:p@h", "\\x00", "\u00e9", "#"]


def mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        if not lines:
            break
        i = rng.randrange(len(lines))
        op = rng.randrange(8)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:
            lines[i] = " " * rng.choice([1, 2, 3]) + lines[i] if rng.random() < 0.5 else lines[i].lstrip()
        elif op == 4 and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {rng.choice(TOKENS)}"
        elif op == 5:
            pos = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:pos] + rng.choice(TOKENS) + lines[i][pos:]
        elif op == 6:
            lines = lines[: rng.randrange(len(lines) + 1)]
        else:
            pos = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:pos] + lines[i][pos + rng.randint(1, 5):]
    return "\n".join(lines) + "\n"


def mutants(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        source = SOURCES[k % len(SOURCES)]
        out.append((f"{source.name}#{k}", mutate(source.read_text(), rng)))
    return out


def test_mutations_load_or_are_config_errors() -> None:
    outcomes = {"ok": 0, "error": 0}
    for name, text in mutants(400, seed=12):
        started = time.monotonic()
        try:
            cfg = parse_config(text, file=name, base=EXAMPLES, environ={})
        except ConfigError as err:
            outcomes["error"] += 1
            assert err.issues and all(str(i).startswith(name) for i in err.issues), str(err)
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"{name}: {type(exc).__name__}: {exc}\n--- mutated config:\n{text}")
        else:
            outcomes["ok"] += 1
            assert isinstance(cfg, LineConfig)
        assert time.monotonic() - started < 2.0, f"{name} took {time.monotonic() - started:.1f} s"
    assert outcomes["error"] > 100, outcomes  # the mutations do break things


@pytest.mark.timeout(120)
def test_a_few_mutations_through_the_cli(tmp_path: Path) -> None:
    linetap = Path(sys.executable).with_name("linetap")
    for k, (_, text) in enumerate(mutants(6, seed=99)):
        path = tmp_path / f"m{k}.yaml"
        path.write_text(text)
        proc = subprocess.run([str(linetap), "validate", str(path)], capture_output=True, text=True, timeout=30)
        assert proc.returncode in (0, 2), proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
