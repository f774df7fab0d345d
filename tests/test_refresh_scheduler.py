"""The refresh scheduler and the synchronous staleness policy (ALGORITHMS.md §6)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from runtime.policies.staleness import Sync, parse_staleness
from runtime.refresh import RefreshScheduler, StalenessViolation
from traces.recorder import Recorder

CPU = torch.device("cpu")


@dataclass
class Result:
    value: torch.Tensor | None = None


def test_sync_installs_at_reference_staleness() -> None:
    policy = Sync()
    assert policy.install_step("p0.r0.c0", 10, 0) == 10
    assert policy.install_step("p0.r0.c0", 10, 1) == 11
    assert parse_staleness(" SYNC ") == policy
    with pytest.raises(ValueError, match="unknown staleness"):
        parse_staleness("eventually")


def test_results_are_installed_exactly_at_their_step() -> None:
    recorder = Recorder()
    scheduler = RefreshScheduler(Sync(), recorder)
    scheduler.submit("b", 4, 1, lambda x: Result(x * 2), torch.tensor(3.0), step=4)
    assert scheduler.take_due("b", 4, CPU) == []
    (item,) = scheduler.take_due("b", 5, CPU)
    assert item.version == 4 and float(item.result.value) == 6.0
    assert scheduler.pending_count() == 0
    (span,) = [s for s in recorder.spans if s.name == "refresh"]
    assert span.block == "b" and span.detail == "v4" and span.step == 4


def test_a_missed_install_is_an_error() -> None:
    scheduler = RefreshScheduler(Sync(), Recorder(enabled=False))
    scheduler.submit("b", 2, 1, lambda x: Result(x), torch.zeros(1), step=2)
    with pytest.raises(StalenessViolation, match="due at step 3"):
        scheduler.take_due("b", 5, CPU)


def test_a_policy_installing_before_its_version_is_refused() -> None:
    @dataclass(frozen=True)
    class Broken:
        name: str = "broken"
        asynchronous: bool = False

        def install_step(self, block: str, version: int, reference_tau: int) -> int:
            return version - 1

    scheduler = RefreshScheduler(Broken(), Recorder(enabled=False))
    with pytest.raises(StalenessViolation, match="before it was computed"):
        scheduler.submit("b", 2, 1, lambda x: Result(x), torch.zeros(1), step=2)


def test_pending_results_round_trip_through_state_dict() -> None:
    scheduler = RefreshScheduler(Sync(), Recorder(enabled=False))
    scheduler.submit("b", 7, 1, lambda x: Result(x + 1), torch.ones(2), step=7)
    saved = scheduler.state_dict()
    restored = RefreshScheduler(Sync(), Recorder(enabled=False))
    restored.load_state_dict(saved, Result, {"b": torch.device("cpu")})
    (item,) = restored.take_due("b", 8, CPU)
    assert torch.equal(item.result.value, torch.full((2,), 2.0))
