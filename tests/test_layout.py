"""The house rules that a reader of the tree relies on, checked by reading the code."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clipkit"
ON_TOP = ("shapes", "labs", "cli", "__main__.py")        # may import anything
FORBIDDEN = ("clipkit.shapes", "clipkit.labs", "clipkit.cli")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _core_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in ON_TOP]


def test_the_core_never_imports_the_shapes_world_experiments_or_cli():
    bad = [(str(p.relative_to(ROOT)), name) for p in _core_modules() for name in _imports(p)
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)]
    assert not bad, f"core modules importing experiment / CLI code: {bad}"


def test_modules_stay_readable_in_one_sitting():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert not long, f"modules over ~400 lines: {long}"


def test_cli_help_builds_without_torch():
    code = "import sys; from clipkit.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.slow
def test_wheel_runs_the_quick_demo_outside_the_checkout(tmp_path):
    """Build the wheel, install it alone into a fresh venv (dependencies seen from this one, the checkout
    not on the path) and run `clipkit demo --quick` from an empty folder: configs come from the package."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("clipkit-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    # A plain path entry: this venv's packages are importable, its editable-install hook is not.
    Path(site, "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", MPLCONFIGDIR=str(tmp_path / "mpl"))
    where = subprocess.run([str(python), "-c", "import clipkit; print(clipkit.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in where and "site-packages" in where
    proc = subprocess.run([str(env_dir / "bin" / "clipkit"), "demo", "--quick", "--out", "demo"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "demo" / "report.html").is_file() and (work / "demo" / "clip" / "model").is_dir()
