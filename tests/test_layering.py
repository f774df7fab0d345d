"""The import rules of DESIGN.md, checked mechanically in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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


@pytest.mark.parametrize("module", ["runtime.policies", "simulator", "traces", "runtime"])
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
