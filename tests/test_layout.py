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
ON_TOP_UNITS = ("shapes", "labs", "cli")


# The packages in layers: a module imports only from its own layer or the ones below.
# (Cycles, within a layer too, are refused by test_no_import_cycles.)
LAYERS = (
    {"__init__", "io", "perf", "images", "losses", "config"},  # foundations: no model, no data
    {"hub", "model", "data", "diffusion"},  # models and data
    {"retrieval", "unclip"},  # embeddings, indexes, generation
    {"train", "evaluation", "wiseft"},  # training runs and measuring models
    {"serve"},  # the web layer over the library
    {"shapes", "labs"},  # the experiments' homes
    {"cli", "__main__"},  # the command line on top
)
# Imports inside functions hide the dependency graph; they are allowed where they buy start-up time:
# the CLI (its commands import torch & co. only when they run) and the package's lazy __getattr__.
LAZY_ALLOWED = ("cli/", "__init__.py", "__main__.py")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _target(name: str) -> str | None:
    """The clipkit module an imported name lives in (`clipkit.a.b.func` -> `clipkit.a.b`)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _edges(path: Path) -> list[tuple[str, bool, int]]:
    """(imported clipkit module, inside a function?, line) for every import statement of `path`."""
    tree = ast.parse(path.read_text(), str(path))
    out = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                # `from pkg import submodule` depends on the submodule; `from mod import name` on mod.
                names = [
                    f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in MODULES else child.module
                    for a in child.names
                ]
            else:
                visit(child, inner)
                continue
            out.extend(
                (t, in_function, child.lineno)
                for n in names
                if n.startswith("clipkit") and (t := _target(n)) is not None
            )

    visit(tree, False)
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    unit = _unit(module)
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"{module}: its package {unit!r} has no layer in tests/test_layout.py LAYERS; add it")


def test_every_package_has_a_layer_and_imports_only_its_layer_or_below():
    bad = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)}) at line {line}"
        for m, path in MODULES.items()
        for t, _, line in _edges(path)
        if _layer(t) > _layer(m)
    ]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycles():
    """Tarjan's strongly connected components over every clipkit -> clipkit import (in functions too)."""
    graph = {m: sorted({t for t, _, _ in _edges(p) if t != m}) for m, p in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_clipkit_imports_inside_functions_only_where_they_buy_start_up_time():
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {t}"
        for m, path in MODULES.items()
        if not str(path.relative_to(PACKAGE)).startswith(LAZY_ALLOWED)
        for t, inside, line in _edges(path)
        if inside
    ]
    assert not bad, "clipkit imports inside functions (move them to the top):\n" + "\n".join(bad)


def test_the_core_never_imports_the_shapes_world_labs_or_cli():
    core = [m for m in MODULES if _layer(m) < _layer("clipkit.shapes")]
    bad = [(m, t) for m in core for t, _, _ in _edges(MODULES[m]) if _unit(t) in ON_TOP_UNITS]
    assert not bad, f"core modules importing experiment / CLI code: {bad}"


def test_every_png_goes_through_save_figure():
    """One figure writer (clipkit/io/figures.py: Agg canvas, atomic write), not one per module."""
    bad = [
        str(p.relative_to(ROOT))
        for p in PACKAGE.rglob("*.py")
        if ".savefig(" in p.read_text() and p != PACKAGE / "io" / "figures.py"
    ]
    assert not bad, f"figures saved outside clipkit.io.figures.save_figure: {bad}"


def test_cli_help_builds_without_torch():
    code = "import sys; from clipkit.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.slow
def test_wheel_runs_the_quick_demo_outside_the_checkout(tmp_path):
    """Build the wheel, install it alone into a fresh venv (dependencies seen from this one, the checkout
    not on the path) and run `clipkit demo --quick` from an empty folder: configs come from the package."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("clipkit-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    # A plain path entry: this venv's packages are importable, its editable-install hook is not.
    Path(site, "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", MPLCONFIGDIR=str(tmp_path / "mpl"))
    where = subprocess.run(
        [str(python), "-c", "import clipkit; print(clipkit.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(ROOT) not in where and "site-packages" in where
    proc = subprocess.run(
        [str(env_dir / "bin" / "clipkit"), "demo", "--quick", "--out", "demo"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "demo" / "report.html").is_file() and (work / "demo" / "clip" / "model").is_dir()


def test_the_shapes_command_offers_every_split_of_the_world():
    """The parser names the splits without importing the world (and torch); they must stay the world's."""
    from clipkit.cli import build_parser
    from clipkit.shapes.world import SPLITS

    parser = build_parser()
    shapes = parser._subparsers._group_actions[0].choices["shapes"]
    split = next(a for a in shapes._actions if a.dest == "split")
    assert tuple(split.choices) == SPLITS
