"""The import rules of DESIGN.md, checked mechanically in fresh interpreters."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BLOCK_TORCH = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


@pytest.mark.parametrize(
    "module", ["runtime.plan", "runtime.policies", "simulator", "traces", "runtime"]
)
def test_torch_free_modules_import_without_torch(module: str) -> None:
    code = BLOCK_TORCH + f"import {module}\nassert 'torch' not in sys.modules\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_traces_depends_on_nothing_of_ours() -> None:
    code = (
        "import sys, traces, traces.io, traces.perfetto, traces.atomic\n"
        "ours = {'runtime', 'simulator', 'reports', 'asteria_bench'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ours)\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_lazy_optimizer_exports() -> None:
    import runtime

    assert runtime.SOAP.__name__ == "SOAP"
    assert runtime.Shampoo.__name__ == "Shampoo"
    assert runtime.KLShampoo.__name__ == "KLShampoo"
    with pytest.raises(AttributeError):
        _ = runtime.NotAnOptimizer  # type: ignore[attr-defined]


def test_simulator_imports_only_the_torch_free_packages_of_the_runtime() -> None:
    """Every simulator module: of ``runtime`` only ``runtime.plan`` and ``runtime.policies``."""
    code = BLOCK_TORCH + textwrap.dedent(
        """
        import importlib, pkgutil, simulator
        for info in pkgutil.walk_packages(simulator.__path__, "simulator."):
            importlib.import_module(info.name)
        allowed = ("runtime.plan", "runtime.policies")
        bad = sorted(
            m for m in sys.modules
            if (m.split(".")[0] in {"runtime", "reports", "asteria_bench"} and m != "runtime"
                and not m.startswith(allowed))
        )
        assert not bad, bad
        assert "torch" not in sys.modules
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_plan_imports_nothing_of_ours_but_traces() -> None:
    code = BLOCK_TORCH + (
        "import runtime.plan, runtime.plan.costmodel, runtime.plan.ownership\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'simulator', 'reports',"
        " 'asteria_bench'} or (m.startswith('runtime.') and not m.startswith('runtime.plan')))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def _imported_names(path: Path) -> set[str]:
    """Every module a file imports, statically or through ``importlib.import_module("...")``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


@pytest.mark.parametrize("layer", ["runtime", "simulator", "traces"])
def test_lower_layers_never_import_the_cli(layer: str) -> None:
    root = Path(__file__).resolve().parents[1] / layer
    offenders = {
        str(path.relative_to(root.parent)): sorted(
            n for n in _imported_names(path) if n.split(".")[0] in {"asteria_bench", "reports"}
        )
        for path in root.rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}
