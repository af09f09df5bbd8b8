"""The house rules that a wrong import or an overgrown module would break (README, "Architecture").

The layer contracts live in pyproject.toml ([tool.importlinter]) and run here, so CI fails on an
import that points upwards.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("config", "drivers", "buffers", "agent", "simulators", "benchmarks")
MAX_LINES = 500  # "a module small enough to read in one sitting"
# `--nodered` npm-installs Node-RED here (git-ignored); npm brings Python files of its own (node-gyp)
NOT_OURS = ROOT / "benchmarks" / "node-red"


def _lint_imports(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a test dependency: pip install -e '.[test]'"
    return subprocess.run([exe, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_are_kept() -> None:
    r = _lint_imports()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_the_contracts_see_real_imports(tmp_path: Path) -> None:
    """The same tool, with the layers turned upside down, must find broken contracts: the import
    graph it checks is the real one, not an empty one."""
    (tmp_path / "upside-down.toml").write_text(
        '[tool.importlinter]\nroot_packages = ["linetap.agent", "linetap.buffers", "linetap.drivers", '
        '"linetap.config"]\n\n[[tool.importlinter.contracts]]\nname = "upside down"\ntype = "layers"\n'
        'layers = ["linetap.config", "linetap.drivers", "linetap.buffers", "linetap.agent"]\n')
    r = _lint_imports(str(tmp_path / "upside-down.toml"))
    assert r.returncode == 1 and "upside down BROKEN" in r.stdout, r.stdout + r.stderr
    assert "linetap.drivers is not allowed to import linetap.config" in r.stdout


def test_no_module_is_too_long_to_read_in_one_sitting() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if NOT_OURS not in p.parents}
    assert len(sizes) > 50, "the walk found the project's modules"
    long = {f: n for f, n in sizes.items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_every_device_model_has_a_driver() -> None:
    from linetap.config.devices import DEVICE_MODELS
    from linetap.drivers import REGISTRY

    assert set(DEVICE_MODELS) == set(REGISTRY)
    for protocol, model in DEVICE_MODELS.items():
        assert model.model_fields["protocol"].annotation.__args__ == (protocol,)
