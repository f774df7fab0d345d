"""The tiered state store: every placement policy gives the device run's parameters, bitwise."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from runtime import SOAP, ExecutionConfig, KLShampoo, Shampoo
from runtime.policies.placement import parse_placement
from runtime.policies.staleness import Bounded
from runtime.tiers import BudgetError, DeviceOutOfMemory, TieredStateStore
from traces.recorder import Recorder
from traces.schema import Tier

OPTIMIZERS = {
    "shampoo": (
        Shampoo,
        dict(lr=1e-2, betas=(0.9, 0.999), precondition_frequency=3, grafting="adam", block_size=8),
    ),
    "soap": (SOAP, dict(lr=3e-3, precondition_frequency=3)),
    "kl-shampoo": (KLShampoo, dict(lr=3e-3, precondition_frequency=3, eigenvalue_init=1e-3)),
}
POLICIES = ["device", "host", "lifecycle", "pressure:0:0", "pressure"]


def train(
    name: str, execution: ExecutionConfig, steps: int = 15
) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    cls, kwargs = OPTIMIZERS[name]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.Tanh(), torch.nn.Linear(20, 4))
    opt = cls(model.parameters(), **kwargs, execution=execution)
    g = torch.Generator().manual_seed(1)
    try:
        for _ in range(steps):
            x, y = torch.randn(32, 12, generator=g), torch.randn(32, 4, generator=g)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    finally:
        opt.close()
    return [p.detach().clone() for p in model.parameters()], opt


@functools.cache
def device_run(name: str) -> tuple[torch.Tensor, ...]:
    return tuple(train(name, ExecutionConfig())[0])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("placement", POLICIES)
def test_placement_never_changes_the_math(name: str, placement: str) -> None:
    reference = device_run(name)
    budget = 8000 if placement.startswith("pressure") else None  # the others would not fit it
    tiered, opt = train(
        name, ExecutionConfig(placement=parse_placement(placement), device_budget_bytes=budget)
    )
    for a, b in zip(tiered, reference, strict=True):
        assert torch.equal(a, b)
    assert isinstance(opt.store, TieredStateStore)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_placement_and_async_together(name: str) -> None:
    reference, _ = train(name, ExecutionConfig(staleness=Bounded(2), workers=1))
    tiered, _ = train(
        name,
        ExecutionConfig(staleness=Bounded(2), workers=1, placement=parse_placement("lifecycle")),
    )
    for a, b in zip(tiered, reference, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("placement", ["host", "lifecycle", "pressure:0:0", "pressure"])
def test_bounded_at_reference_tau_matches_sync_under_every_placement(
    name: str, placement: str
) -> None:
    tau = OPTIMIZERS[name][0].reference_tau
    tiered, _ = train(
        name,
        ExecutionConfig(
            staleness=Bounded(tau),
            workers=1,
            placement=parse_placement(placement),
            device_budget_bytes=8000,
        ),
    )
    for a, b in zip(tiered, device_run(name), strict=True):
        assert ((a - b).norm() / b.norm()).item() <= 1e-6


def test_lifecycle_keeps_only_moments_on_the_device() -> None:
    recorder = Recorder()
    _, opt = train(
        "soap", ExecutionConfig(placement=parse_placement("lifecycle"), recorder=recorder)
    )
    store = opt.store
    assert isinstance(store, TieredStateStore)
    resting = store.tier_bytes()
    moments = sum(
        t.numel() * t.element_size()
        for _, state in store.items()
        for name, t in vars(state).items()
        if name in ("M", "V") and t is not None
    )
    assert resting[Tier.DEVICE] == moments
    assert resting[Tier.HOST] > 0
    fetches = [s for s in recorder.spans if s.name == "fetch"]
    assert fetches and all(
        s.tier_from is Tier.HOST and s.tier_to is Tier.DEVICE and s.bytes > 0 for s in fetches
    )


def test_pressure_evicts_with_reasons_under_a_small_budget() -> None:
    recorder = Recorder()
    policy = parse_placement("pressure:0:0")
    train("soap", ExecutionConfig(placement=policy, device_budget_bytes=8000, recorder=recorder))
    counters = [c for c in recorder.counters if c.name == "state_bytes"]
    assert {c.key for c in counters} == {"device", "host", "nvme"}
    assert all(c.value <= 8000 for c in counters if c.key == "device")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_over_budget_placement_runs_out_of_memory_where_pressure_trains(name: str) -> None:
    """The emulated device has the budget's bytes: `device` cannot hold the state, `pressure` can."""
    _, opt = train(name, ExecutionConfig(placement=parse_placement("device")), steps=2)
    total = opt.store.total_bytes()  # type: ignore[attr-defined]
    budget = total * 3 // 4
    recorder = Recorder()
    device = ExecutionConfig(
        placement=parse_placement("device"), device_budget_bytes=budget, recorder=recorder
    )
    with pytest.raises(
        DeviceOutOfMemory, match=rf"placement device needs .*\({total} bytes\)"
    ) as err:
        train(name, device)
    assert (err.value.needed_bytes, err.value.budget_bytes) == (total, budget)
    assert [s.name for s in recorder.spans if s.category.value == "event"] == [
        "device_out_of_memory"
    ]
    pressured = ExecutionConfig(
        placement=parse_placement("pressure:0:0"), device_budget_bytes=budget
    )
    params, _ = train(name, pressured)
    for got, want in zip(params, device_run(name), strict=True):
        assert torch.equal(got, want)


def test_budget_below_one_blocks_working_set_is_refused_before_training() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 32)
    with pytest.raises(BudgetError, match=r"block p0\.r0\.c0.*\d+ bytes"):
        SOAP(
            model.parameters(),
            execution=ExecutionConfig(
                placement=parse_placement("pressure"), device_budget_bytes=1000
            ),
        )


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_nvme_tier_never_changes_the_math(name: str, tmp_path: Path) -> None:
    from runtime.spill import SpillStore

    spill = SpillStore(tmp_path)
    recorder = Recorder()
    try:
        policy = parse_placement("pressure:1:2")  # 1 MiB low watermark: everything is pressed down
        tiered, _ = train(
            name,
            ExecutionConfig(
                placement=policy,
                device_budget_bytes=8000,
                host_budget_bytes=8000,
                spill=spill,
                recorder=recorder,
            ),
        )
    finally:
        spill.close()
    for a, b in zip(tiered, device_run(name), strict=True):
        assert torch.equal(a, b)
    nvme = [c.value for c in recorder.counters if c.name == "state_bytes" and c.key == "nvme"]
    assert max(nvme) > 0, "the pressure policy must have spilled to NVMe"
    assert not list(tmp_path.iterdir()), "the spill directory is removed on close"


def test_disk_full_falls_back_to_host_and_keeps_training(tmp_path: Path) -> None:
    import errno

    from runtime.spill import SpillStore

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    spill = SpillStore(tmp_path, writer=full, direct_io=False)
    recorder = Recorder()
    try:
        with pytest.warns(UserWarning, match="spill tier unavailable"):
            tiered, _ = train(
                "soap",
                ExecutionConfig(
                    placement=parse_placement("pressure:1:2"),
                    device_budget_bytes=8000,
                    host_budget_bytes=8000,
                    spill=spill,
                    recorder=recorder,
                ),
            )
    finally:
        spill.close()
    for a, b in zip(tiered, device_run("soap"), strict=True):
        assert torch.equal(a, b)
    assert [s for s in recorder.spans if s.name == "spill_failed"]


def test_bench_tiers_quick_prints_its_table() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "bench_tiers.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| lifecycle |" in proc.stdout and "AdamW's 2 moments: met" in proc.stdout


@pytest.mark.parametrize("placement", ["lifecycle", "pressure:0.004:0.008"])
def test_prefetch_never_takes_the_device_past_its_budget(
    placement: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hooks prefetch only into what the placement leaves free, keeping room for one `get`."""
    budget = 8000 if placement.startswith("pressure") else 1 << 40
    on_device: list[int] = []
    prefetched: list[int] = []

    def occupancy(store: TieredStateStore) -> int:
        staged = sum(
            t.numel() * t.element_size() for ts in store._staged.values() for t in ts.values()
        )
        return store.tier_bytes()[Tier.DEVICE] + staged

    real_prefetch, real_get = TieredStateStore.prefetch, TieredStateStore.get

    def prefetch(self: TieredStateStore, block_id: str) -> int:
        nbytes = real_prefetch(self, block_id)
        prefetched.append(nbytes)
        on_device.append(occupancy(self))
        return nbytes

    def get(self: TieredStateStore, block_id: str) -> object:
        state = real_get(self, block_id)
        on_device.append(occupancy(self))
        return state

    monkeypatch.setattr(TieredStateStore, "prefetch", prefetch)
    monkeypatch.setattr(TieredStateStore, "get", get)
    params, _ = train(
        "soap",
        ExecutionConfig(placement=parse_placement(placement), device_budget_bytes=budget),
    )
    assert max(on_device) <= budget
    assert any(n > 0 for n in prefetched)  # prefetch still works where there is room
    if budget < 1 << 40:
        assert any(n == 0 for n in prefetched)  # and stands back where there is not
    for got, want in zip(params, device_run("soap"), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("link", ["nvlink-c2c", "unified"])
@pytest.mark.parametrize("placement", ["host", "lifecycle"])
def test_in_place_links_never_change_the_math(name: str, link: str, placement: str) -> None:
    """Where the policy reaches a slot in place, the store copies it: written slots go back."""
    params, _ = train(name, ExecutionConfig(placement=parse_placement(placement, link=link)))
    for got, want in zip(params, device_run(name), strict=True):
        assert torch.equal(got, want)


def test_device_peak_counts_the_copies_the_store_makes() -> None:
    """Over PCIe the store's peak is the policy's; over NVLink-C2C the store also copies
    the slots the policy reaches in place, and a budget that ignores them runs out."""
    from runtime.policies.placement import peak_device_bytes

    _, opt = train("soap", ExecutionConfig(placement=parse_placement("lifecycle")), steps=3)
    store = opt.store
    infos = store.slot_infos()
    assert store.device_peak_bytes() == peak_device_bytes(infos, store.policy, store._step)
    c2c = parse_placement("lifecycle", link="nvlink-c2c")
    _, opt = train("soap", ExecutionConfig(placement=c2c), steps=3)
    store = opt.store
    planned = peak_device_bytes(store.slot_infos(), c2c, store._step)
    actual = store.device_peak_bytes()
    assert actual > planned
    between = actual - 1
    with pytest.raises(DeviceOutOfMemory, match=rf"needs .*\({actual} bytes\)"):
        train("soap", ExecutionConfig(placement=c2c, device_budget_bytes=between), steps=3)
    train("soap", ExecutionConfig(placement=c2c, device_budget_bytes=actual), steps=3)
