"""The asteria runtime: second-order optimizers and the machinery that runs them.

Where things live:

- ``runtime.matrix_functions``: pure matrix math (eigh with fp64 retry, inverse
  roots, warm-started QR refresh). No optimizer state, no I/O.
- ``runtime.blocking``: how a parameter is cut into blocks, and their ids.
- ``runtime.plan``: the torch-free plan the runtime and the simulator share:
  each optimizer's block spec (slots, reference staleness, phase order, due
  rule), the cost model of ALGORITHMS.md §8 and owner assignment over ranks.
- ``runtime.optim``: the optimizer shell, which runs each block's phases in
  the plan's order, and the Shampoo / SOAP / KL-Shampoo block rules;
  ``runtime.optim.adamw`` is the 1-D fallback.
- ``runtime.state``: the ``StateStore`` interface and the all-on-device store;
  ``runtime.tiers`` the tiered one (device / host / NVMe, ``runtime.spill``).
- ``runtime.refresh``: amortized work in three objects: an executor (who
  computes: inline, host threads, a CUDA stream), a publisher (how results
  move between ranks) and the install queue (when they are installed).
- ``runtime.execution``: ``ExecutionConfig``, the one keyword-only argument
  through which placement, staleness and tracing plug into an optimizer.
- ``runtime.policies``: placement and staleness policies (no torch; the
  simulator imports them unchanged).
- ``runtime.telemetry``: hardware metadata and host/GPU counters.

This module stays light: the optimizers are imported lazily so that
``import runtime.plan`` and ``import runtime.policies`` never pull in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.execution import ExecutionConfig
    from runtime.optim.kl_shampoo import KLShampoo
    from runtime.optim.shampoo import Shampoo
    from runtime.optim.soap import SOAP

__all__ = ["SOAP", "ExecutionConfig", "KLShampoo", "Shampoo"]

_LAZY = {
    "Shampoo": "runtime.optim.shampoo",
    "SOAP": "runtime.optim.soap",
    "KLShampoo": "runtime.optim.kl_shampoo",
    "ExecutionConfig": "runtime.execution",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)
