"""Faults a long run must survive: a refresh that raises or is not finite, a slow worker, a damaged spill file.

A rejected refresh keeps the block's previous preconditioner (a staler
version), is counted in the trace, and never ends the run; whether the job
raised or returned NaN, the run goes on identically. A slow worker makes the
training thread wait at the install step (``wait_refresh`` spans) but never
changes the math: the bound holds.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from runtime import SOAP, ExecutionConfig, KLShampoo, Shampoo
from runtime.policies.staleness import Bounded, Sync
from traces.recorder import Recorder
from traces.schema import Category

OPTIMIZERS = {
    "shampoo": (Shampoo, dict(lr=1e-2, precondition_frequency=2, block_size=8)),
    "soap": (SOAP, dict(lr=3e-3, precondition_frequency=2)),
    "kl-shampoo": (KLShampoo, dict(lr=3e-3, precondition_frequency=2)),
}


def train(
    name: str, execution: ExecutionConfig, compute: Callable[[Any], Any] | None = None
) -> tuple[list[torch.Tensor], Any]:
    cls, kwargs = OPTIMIZERS[name]
    if compute is not None:
        cls = type(cls.__name__, (cls,), {"compute_refresh": staticmethod(compute)})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.Tanh(), torch.nn.Linear(20, 4))
    opt = cls(model.parameters(), **kwargs, execution=execution)
    g = torch.Generator().manual_seed(1)
    try:
        for _ in range(12):
            x, y = torch.randn(32, 12, generator=g), torch.randn(32, 4, generator=g)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    finally:
        opt.close()
    return [p.detach().clone() for p in model.parameters()], opt


def faulty(name: str, fault: str, victim: int = 2) -> Callable[[Any], Any]:
    """The optimizer's refresh, with its ``victim``-th call raising or returning NaN."""
    real = OPTIMIZERS[name][0].compute_refresh
    calls = {"n": 0}
    lock = threading.Lock()

    def compute(inputs: Any) -> Any:
        with lock:
            calls["n"] += 1
            n = calls["n"]
        result = real(inputs)
        if n != victim:
            return result
        if fault == "raise":
            raise torch.linalg.LinAlgError("the factor is singular (injected)")
        first = next(
            f.name for f in dataclasses.fields(result) if getattr(result, f.name) is not None
        )
        return dataclasses.replace(result, **{first: getattr(result, first) * math.nan})

    return compute


def execution(staleness: Any, recorder: Recorder) -> ExecutionConfig:
    workers = 1 if staleness.asynchronous else 0
    return ExecutionConfig(staleness=staleness, workers=max(1, workers), recorder=recorder)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("staleness", [Sync(), Bounded(2)], ids=["sync", "bounded"])
def test_a_refresh_that_raises_or_is_not_finite_is_rejected_and_the_run_goes_on(
    name: str, staleness: Any
) -> None:
    outcomes = {}
    for fault in ("raise", "nan"):
        recorder = Recorder()
        with pytest.warns(UserWarning, match="keeps its previous preconditioner"):
            params, opt = train(name, execution(staleness, recorder), faulty(name, fault))
        assert opt.rejected_refreshes == 1
        rejected = [s for s in recorder.spans if s.name == "refresh_rejected"]
        assert len(rejected) == 1 and rejected[0].category is Category.EVENT
        assert all(torch.isfinite(p).all() for p in params)
        outcomes[fault] = params
    clean, _ = train(name, execution(staleness, Recorder()))
    for a, b in zip(outcomes["raise"], outcomes["nan"], strict=True):
        assert torch.equal(a, b), "a job that raised and one that gave NaN are both just rejected"
    assert any(not torch.equal(a, c) for a, c in zip(outcomes["raise"], clean, strict=True))


def test_a_slow_worker_makes_the_step_wait_but_never_changes_the_math() -> None:
    real = SOAP.compute_refresh

    def slow(inputs: Any) -> Any:
        time.sleep(0.05)
        return real(inputs)

    recorder = Recorder()
    slow_params, _ = train("soap", execution(Bounded(1), recorder), slow)
    fast_params, _ = train("soap", execution(Bounded(1), Recorder()))
    for a, b in zip(slow_params, fast_params, strict=True):
        assert torch.equal(a, b)
    waits = [s for s in recorder.spans if s.name == "wait_refresh"]
    assert waits and sum(s.end_ns - s.start_ns for s in waits) > 10_000_000


def test_a_damaged_spill_file_is_named_when_it_is_read(tmp_path: Path) -> None:
    from runtime.policies.placement import parse_placement
    from runtime.spill import ChecksumError, SpillStore

    spill = SpillStore(tmp_path, direct_io=False)
    cls, kwargs = OPTIMIZERS["soap"]
    model = torch.nn.Linear(12, 20)
    opt = cls(
        model.parameters(),
        **kwargs,
        execution=ExecutionConfig(
            placement=parse_placement("pressure:1:2"),
            device_budget_bytes=20000,
            host_budget_bytes=8000,
            spill=spill,
        ),
    )
    try:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 12)).square().mean().backward()
            opt.step()
        spill.flush()
        entry = spill.entry(spill.keys()[0])
        victim = entry.path
        data = bytearray(victim.read_bytes())
        data[entry.payload_offset] ^= 0xFF
        victim.write_bytes(bytes(data))
        opt.zero_grad()
        with pytest.raises(ChecksumError, match=victim.name):  # prefetch in backward, or the step
            model(torch.randn(8, 12)).square().mean().backward()
            opt.step()
    finally:
        opt.close()
        spill.close()
