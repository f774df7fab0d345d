"""Asynchronous refreshes: bounded staleness is deterministic and equals a delayed sync run.

The delayed synchronous reference is ``DelayedSync`` below: it computes every
refresh inline at its version (the reference's code path) and holds the result
until version + τ. A ``Bounded(τ)`` run, whose jobs run on worker threads from
snapshots, must give the same parameters, whatever the number of workers and
however slow they are.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
import torch

import runtime.optim.soap as soap_module
from runtime import SOAP, ExecutionConfig, KLShampoo, Shampoo
from runtime.policies.staleness import Adaptive, Bounded, Replay, Sync
from runtime.refresh import InlineExecutor, RefreshError
from traces.recorder import Recorder

OPTIMIZERS = {
    "shampoo": (
        Shampoo,
        dict(lr=1e-2, betas=(0.9, 0.999), precondition_frequency=3, grafting="adam", block_size=8),
    ),
    "soap": (SOAP, dict(lr=3e-3, precondition_frequency=3)),
    "kl-shampoo": (KLShampoo, dict(lr=3e-3, precondition_frequency=3)),
}


@dataclass(frozen=True)
class DelayedSync:
    """Synchronous reference with every refresh applied τ steps after its version."""

    tau: int

    @property
    def name(self) -> str:
        return f"delayed-sync:{self.tau}"

    @property
    def asynchronous(self) -> bool:
        return False

    def install_step(self, block: str, version: int, reference_tau: int) -> int:
        return version + max(self.tau, reference_tau)


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 20),
        torch.nn.Tanh(),
        torch.nn.Linear(20, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 4),
    )


def train(name: str, execution: ExecutionConfig, steps: int = 100) -> list[torch.Tensor]:
    cls, kwargs = OPTIMIZERS[name]
    model = make_model()
    opt = cls(model.parameters(), **kwargs, execution=execution)
    g = torch.Generator().manual_seed(1)
    try:
        for _ in range(steps):
            x = torch.randn(32, 12, generator=g)
            y = torch.randn(32, 4, generator=g)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    finally:
        opt.close()
    return [p.detach().clone() for p in model.parameters()]


def max_rel_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).norm() / y.norm()).item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_bounded_at_reference_tau_matches_sync(name: str) -> None:
    reference_tau = OPTIMIZERS[name][0].reference_tau
    sync = train(name, ExecutionConfig())
    bounded = train(name, ExecutionConfig(staleness=Bounded(reference_tau), workers=2))
    assert max_rel_error(bounded, sync) <= 1e-6


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("tau", [2, 4])
def test_bounded_equals_the_delayed_synchronous_reference(name: str, tau: int) -> None:
    delayed = train(name, ExecutionConfig(staleness=DelayedSync(tau)), steps=40)
    bounded = train(name, ExecutionConfig(staleness=Bounded(tau), workers=1), steps=40)
    assert max_rel_error(bounded, delayed) <= 1e-6
    # and staleness really changes the run, so the comparison above is not vacuous
    assert max_rel_error(delayed, train(name, ExecutionConfig(), steps=40)) > 1e-7


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_bitwise_identical_whatever_the_number_of_workers(name: str) -> None:
    one = train(name, ExecutionConfig(staleness=Bounded(3), workers=1, stagger=True), steps=40)
    three = train(name, ExecutionConfig(staleness=Bounded(3), workers=3, stagger=True), steps=40)
    for a, b in zip(one, three, strict=True):
        assert torch.equal(a, b)


def test_slow_workers_make_the_step_wait_and_the_bound_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = soap_module.compute_soap_refresh

    def slow(inputs: object) -> object:
        time.sleep(0.05)
        return real(inputs)  # type: ignore[arg-type]

    monkeypatch.setattr(SOAP, "compute_refresh", slow)
    recorder = Recorder()
    slow_run = train(
        "soap", ExecutionConfig(staleness=Bounded(2), workers=1, recorder=recorder), steps=30
    )
    monkeypatch.setattr(SOAP, "compute_refresh", real)
    delayed = train("soap", ExecutionConfig(staleness=DelayedSync(2)), steps=30)
    assert max_rel_error(slow_run, delayed) <= 1e-6
    waits = [s for s in recorder.spans if s.name == "wait_refresh"]
    assert waits, "a 50 ms job against a sub-millisecond step must be waited for"
    taus = [c.value for c in recorder.counters if c.name == "staleness"]
    assert taus and max(taus) <= 2 and min(taus) == 2


def test_a_worker_failing_every_time_stops_the_run_naming_block_and_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One failed refresh is rejected (tests/test_faults.py); three in a row are a bug."""

    def broken(inputs: object) -> object:
        raise FloatingPointError("synthetic failure")

    monkeypatch.setattr(SOAP, "compute_refresh", broken)
    with (
        pytest.warns(UserWarning, match="keeps its previous preconditioner"),
        pytest.raises(
            RefreshError,
            match=r"block p\d+\.r0\.c0 failed 3 times in a row, last at version \d+:"
            r".*synthetic failure",
        ),
    ):
        train("soap", ExecutionConfig(staleness=Bounded(1), workers=1), steps=12)
    assert not [t for t in threading.enumerate() if t.name.startswith("refresh-worker")]


def test_workers_are_joined_on_close() -> None:
    train("kl-shampoo", ExecutionConfig(staleness=Bounded(2), workers=2), steps=12)
    assert not [t for t in threading.enumerate() if t.name.startswith("refresh-worker")]


def test_adaptive_choices_replay_to_the_same_parameters() -> None:
    policy = Adaptive(tau_max=6)
    adaptive = train("soap", ExecutionConfig(staleness=policy, workers=1), steps=40)
    assert policy.choices, "the adaptive policy recorded no choice"
    taus = {install - version for (_, version), install in policy.choices.items()}
    assert taus <= set(range(1, 7))
    replayed = train(
        "soap", ExecutionConfig(staleness=Replay(dict(policy.choices)), workers=2), steps=40
    )
    for a, b in zip(adaptive, replayed, strict=True):
        assert torch.equal(a, b)


def test_replay_of_an_unknown_job_is_an_error() -> None:
    with pytest.raises(KeyError, match="no install step"):
        train("soap", ExecutionConfig(staleness=Replay({}), workers=1), steps=6)


def test_adaptive_policy_picks_tau_from_measured_job_time() -> None:
    policy = Adaptive(tau_max=8)
    assert policy.install_step("b", 10, 1) == 18  # never observed: τ_max
    policy.observe("b", job_ns=25_000_000, step_ns=10_000_000)  # 2.5 steps per job
    assert policy.install_step("b", 20, 1) == 24  # ceil(2.5) + 1 = 4
    policy.observe("c", job_ns=1_000, step_ns=10_000_000)
    assert policy.install_step("c", 20, 1) == 22  # 1 step of margin, at least the reference
    assert policy.install_step("b", 20, 1) == 24  # a choice, once made, is kept


def test_sync_policy_never_uses_workers() -> None:
    opt = SOAP(make_model().parameters())
    assert isinstance(opt.pipeline.executor, InlineExecutor)
    assert not opt.pipeline.executor.asynchronous
    assert isinstance(opt.execution.staleness, Sync)


def test_hooks_prefetch_finished_results_during_backward() -> None:
    recorder = Recorder()
    with_hooks = train(
        "soap", ExecutionConfig(staleness=Bounded(3), workers=1, recorder=recorder), steps=30
    )
    without = train("soap", ExecutionConfig(staleness=Bounded(3), workers=1, hooks=False), steps=30)
    prefetched = [c for c in recorder.counters if c.name == "prefetched"]
    assert prefetched, "jobs finish well within 3 steps here, so hooks must find results to move"
    for a, b in zip(with_hooks, without, strict=True):
        assert torch.equal(a, b)
