"""The simulator executing the runtime's placement policies: moves, staging, links, CLI."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_runner import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.plan.costmodel import CostConfig, Optimizer, block_state
from runtime.policies.placement import (
    LinkKind,
    PressurePlacement,
    parse_placement,
    step_traffic,
)
from runtime.policies.staleness import Bounded, Sync
from simulator.engine import SimConfig, SimResult, fast_sync_step_ns, simulate
from simulator.links import LinkRates
from simulator.placement_model import MemoryBudget, Occupancy, SlotTable, block_slot_bytes
from simulator.replay import replay_run
from simulator.tiering import Tiering, static_staging
from simulator.whatif import SCENARIOS, WhatIf, run_whatif
from simulator.workload import BlockCost, StepCost, WorkloadModel
from traces.io import read_trace, spans_frame

MS = 1_000_000
MIB = 1 << 20


def model(
    optimizer: str = "soap", *, blocks: int = 4, f: int = 5, side: int = 256
) -> WorkloadModel:
    """A small workload whose blocks carry their state slots (side x side, 2 layers each)."""
    return WorkloadModel(
        optimizer=optimizer,
        precondition_frequency=f,
        start_preconditioning_step=f,
        step=StepCost(
            forward_ns=10 * MS,
            backward_ns=20 * MS,
            optimizer_other_ns=MS,
            loop_other_ns=MS // 2,
            first_step_ns=50 * MS,
        ),
        blocks=tuple(
            BlockCost(
                f"p{i}.r0.c0",
                (side, side),
                hot_ns=MS,
                refresh_ns=5 * MS,
                snapshot_ns=MS // 10,
                install_ns=MS // 5,
                slots=block_slot_bytes(side, side, optimizer, count=2),
            )
            for i in range(blocks)
        ),
    )


def rates(kind: LinkKind = LinkKind.PCIE, gb_per_s: float = 10.0) -> LinkRates:
    return LinkRates(
        kind=kind,
        h2d_bytes_per_ns=gb_per_s,
        d2h_bytes_per_ns=gb_per_s,
        nvme_read_bytes_per_ns=2.0,
        nvme_write_bytes_per_ns=1.0,
        copy_latency_ns=5_000,
        nvme_latency_ns=100_000,
    )


def tiering(
    placement: str, kind: LinkKind = LinkKind.PCIE, memory: MemoryBudget | None = None
) -> Tiering:
    return Tiering(parse_placement(placement, link=kind), rates(kind), memory or MemoryBudget())


def per_step_bytes(result: SimResult, name: str) -> dict[int, int]:
    frame = spans_frame(result.recorder.spans)
    sel = frame[frame["name"] == name]
    return {int(k): int(v) for k, v in sel.groupby("step")["bytes"].sum().items()}


def test_slot_bytes_add_up_to_the_cost_models_state() -> None:
    for optimizer in ("shampoo", "soap", "kl-shampoo"):
        for a, b in ((64, 32), (1024, 1024), (12000, 512)):
            slots = block_slot_bytes(a, b, optimizer, count=3)
            words = block_state(a, b, CostConfig(Optimizer(optimizer))).total
            counter = 8 if optimizer == "shampoo" else 0  # root_failures: int64, not a state word
            assert sum(s.nbytes for s in slots) == (4 * words + counter) * 3
    one_sided = {s.slot for s in block_slot_bytes(12000, 512, "soap")}
    assert one_sided == {"R", "QR", "M", "V"}  # SOAP does not rotate a side over 10000


def test_device_placement_moves_nothing_and_changes_no_step() -> None:
    for staleness in (Sync(), Bounded(2)):
        plain = simulate(model(), SimConfig(steps=20, staleness=staleness, workers=1))
        placed = simulate(
            model(),
            SimConfig(steps=20, staleness=staleness, workers=1, tiering=tiering("device")),
        )
        assert np.array_equal(plain.step_ns, placed.step_ns)
        frame = spans_frame(placed.recorder.spans)
        assert not (frame["category"] == "transfer").any()
        assert placed.link_bytes.sum() == 0 and placed.transfer_wait_ns.sum() == 0
        device = [
            c.value
            for c in placed.recorder.counters
            if c.name == "state_bytes" and c.key == "device"
        ]
        assert device and set(device) == {sum(s.nbytes for b in model().blocks for s in b.slots)}


@pytest.mark.parametrize("kind", [LinkKind.PCIE, LinkKind.NVLINK_C2C])
def test_host_placement_fetches_what_step_traffic_says(kind: LinkKind) -> None:
    m = model()
    t = tiering("host", kind)
    result = simulate(m, SimConfig(steps=12, tiering=t))
    table = SlotTable([(b.id, b.slots) for b in m.blocks], t.policy)
    fetched = per_step_bytes(result, "fetch")
    written = per_step_bytes(result, "write_back")
    for step in range(2, 13):  # step 1 initialises SOAP's state: no update, no copy
        traffic = step_traffic(table.infos(step), t.policy, step)
        assert fetched[step] == traffic.h2d_bytes
        assert written[step] == traffic.d2h_bytes
        assert result.link_bytes[step - 1] == traffic.h2d_bytes + traffic.d2h_bytes


def test_lifecycle_keeps_less_state_on_the_device_than_device() -> None:
    device = simulate(model(), SimConfig(steps=10, tiering=tiering("device")))
    lifecycle = simulate(model(), SimConfig(steps=10, tiering=tiering("lifecycle")))
    assert 0 < lifecycle.peak_device_state_bytes < device.peak_device_state_bytes
    # the prefetch during backward hides the copies: no step is longer than under device
    assert lifecycle.step_ns.max() <= device.step_ns.max()
    assert lifecycle.transfer_wait_ns.sum() == 0 and lifecycle.link_bytes.sum() > 0


def test_prefetch_stays_within_the_room_the_placement_leaves() -> None:
    """As in the runtime: hooks prefetch (last layer first) only into budget - peak; the
    blocks left out are fetched by their update, which then waits on the copy."""
    free = simulate(model(), SimConfig(steps=10, tiering=tiering("lifecycle")))
    slots = block_slot_bytes(256, 256, "soap", count=2)
    staged = sum(s.nbytes for s in slots if s.kind.value in ("factor", "basis", "root"))
    budget = free.peak_device_state_bytes + staged + staged // 2  # room for one prefetch
    tight = simulate(
        model(),
        SimConfig(
            steps=10,
            tiering=tiering("lifecycle", memory=MemoryBudget(device_budget_bytes=budget)),
        ),
    )
    assert tight.peak_device_state_bytes == free.peak_device_state_bytes <= budget
    frame = spans_frame(tight.recorder.spans)
    step = frame["step"] == 5
    backward_end = int(frame.loc[step & (frame["name"] == "backward"), "end_ns"].iloc[0])
    fetches = frame[step & (frame["name"] == "fetch")]
    early = set(fetches.loc[fetches["start_ns"] < backward_end, "block"])
    assert early == {"p3.r0.c0"}  # the last block's hook fires first; only it fits
    assert set(fetches["block"]) == {f"p{i}.r0.c0" for i in range(4)}
    waits = frame[step & (frame["name"] == "wait_transfer")]
    assert set(waits["block"]) >= {"p0.r0.c0", "p1.r0.c0", "p2.r0.c0"}
    assert tight.transfer_wait_ns.sum() > 0 == free.transfer_wait_ns.sum()


def test_pressure_evicts_under_a_small_budget_and_promotes_when_it_grows() -> None:
    m = model(blocks=3, side=512)
    total = sum(s.nbytes for b in m.blocks for s in b.slots)
    policy = PressurePlacement(MIB, 2 * MIB)
    squeeze = Occupancy(first_step=4, last_step=8, nbytes=10**12)  # another tenant, steps 4-8
    matrices = sum(s.nbytes for b in m.blocks for s in b.slots if s.kind.value != "moment")
    memory = MemoryBudget(  # the host holds the matrices (lifecycle's home), not the moments too
        device_budget_bytes=total + 64 * MIB,
        host_budget_bytes=matrices + 3 * MIB,
        nvme_available=True,
        device_occupancy=(squeeze,),
    )
    result = simulate(m, SimConfig(steps=14, tiering=Tiering(policy, rates(), memory)))
    frame = spans_frame(result.recorder.spans)
    evicts, promotes = frame[frame["name"] == "evict"], frame[frame["name"] == "promote"]
    assert not evicts.empty and evicts["step"].between(4, 8).all()
    assert evicts["detail"].str.contains("pressure: device free").any()
    assert evicts["detail"].str.contains("furthest first").all()
    assert not promotes.empty and (promotes["step"] > 8).all()
    assert promotes["detail"].str.contains("high watermark").all()
    by_tier: dict[str, dict[int, float]] = defaultdict(dict)
    for c in result.recorder.counters:
        if c.name == "state_bytes":
            by_tier[str(c.key)][c.step] = c.value
    assert by_tier["nvme"][5] > 0 and by_tier["host"][5] > 0  # the host budget overflows to NVMe
    # promoted back, as far as the high watermark's hysteresis lets them
    assert (
        by_tier["device"][13] > by_tier["device"][5] and by_tier["nvme"][13] <= by_tier["nvme"][5]
    )
    moved = frame[frame["name"] == "move"]
    assert set(zip(moved["tier_from"], moved["tier_to"], strict=True)) >= {
        ("device", "host"),
        ("device", "nvme"),
    }


def test_link_kinds_order_the_cost_of_the_same_placement() -> None:
    steps = {}
    for kind in (LinkKind.PCIE, LinkKind.NVLINK_C2C, LinkKind.UNIFIED):
        slow_pcie = rates(kind, gb_per_s=1.0 if kind is LinkKind.PCIE else 10.0)
        t = Tiering(parse_placement("lifecycle", link=kind), slow_pcie, MemoryBudget())
        result = simulate(model(), SimConfig(steps=10, tiering=t, overlap=False))
        steps[kind] = int(result.step_ns[2:].sum())
        if kind is LinkKind.UNIFIED:
            assert result.link_bytes.sum() == 0 and result.transfer_wait_ns.sum() == 0
    base = int(simulate(model(), SimConfig(steps=10)).step_ns[2:].sum())
    assert base == steps[LinkKind.UNIFIED] < steps[LinkKind.NVLINK_C2C] < steps[LinkKind.PCIE]


@settings(max_examples=30, deadline=None)
@given(
    optimizer=st.sampled_from(["shampoo", "soap", "kl-shampoo"]),
    placement=st.sampled_from(["device", "host", "lifecycle"]),
    kind=st.sampled_from(list(LinkKind)),
    f=st.integers(1, 6),
    blocks=st.integers(1, 4),
    side=st.sampled_from([16, 200, 1024]),
    stagger=st.booleans(),
    steps=st.integers(1, 20),
)
def test_event_model_equals_the_closed_form_under_static_placements(
    optimizer: str,
    placement: str,
    kind: LinkKind,
    f: int,
    blocks: int,
    side: int,
    stagger: bool,
    steps: int,
) -> None:
    m = model(optimizer, blocks=blocks, f=f, side=side)
    t = tiering(placement, kind)
    events = simulate(m, SimConfig(steps=steps, stagger=stagger, tiering=t, overlap=False))
    staging = static_staging([(b.id, b.slots, b.hot_ns) for b in m.blocks], t)
    assert np.array_equal(events.step_ns, fast_sync_step_ns(m, steps, stagger, staging))


def test_closed_form_refuses_a_placement_that_moves() -> None:
    with pytest.raises(ValueError, match="static"):
        static_staging([], tiering("pressure"))


def test_the_allreduce_holds_the_network_links() -> None:
    m = model()
    ring = replace(
        m, step=replace(m.step, allreduce_intra_node_ns=3 * MS, allreduce_inter_node_ns=4 * MS)
    )
    before = simulate(m, SimConfig(steps=6)).step_ns
    after = simulate(ring, SimConfig(steps=6))
    assert np.array_equal(after.step_ns[1:], before[1:] + 7 * MS)
    assert (
        after.link_busy.intra_node_ns == 5 * 3 * MS and after.link_busy.inter_node_ns == 5 * 4 * MS
    )
    names = set(spans_frame(after.recorder.spans)["name"])
    assert "allreduce" in names
    busy = [c for c in after.recorder.counters if c.name == "link_busy_ns"]
    assert sum(c.value for c in busy if c.key == "inter_node") == 5 * 4 * MS


@settings(max_examples=12, deadline=None)
@given(
    hardware=st.sampled_from(["gb10", "gh200", "h100-pcie"]),
    optimizer=st.sampled_from(["shampoo", "soap", "kl-shampoo"]),
    placement=st.sampled_from(["device", "host", "lifecycle", "pressure"]),
    staleness=st.sampled_from(["sync", "bounded:2"]),
)
def test_no_step_beats_its_roofline_under_any_placement(
    hardware: str, optimizer: str, placement: str, staleness: str
) -> None:
    w = WhatIf(
        hardware=hardware,
        model="gpt-default",
        optimizer=optimizer,
        staleness=staleness,
        root_device="host",
        steps=12,
        precondition_frequency=4,
        placement=placement,
    )
    result = run_whatif(w)
    assert result.min_step_ms >= result.lower_bound_ms * (1 - 1e-9)


def test_tiered_scenario_fits_where_device_does_not() -> None:
    _, whatifs = SCENARIOS["gh200-7b-1gpu"]
    by_label = {w.describe(): replace(w, steps=3) for w in whatifs}
    # The whole memory counted (7B: 8 bytes per parameter before any optimizer state):
    # KL-Shampoo's moments fit beside it, SOAP's two moments do not.
    sync = run_whatif(by_label["KL-Shampoo, synchronous"])
    asteria = run_whatif(by_label["KL-Shampoo, asteria (bounded:4, host roots)"])
    assert asteria.whatif.placement == "lifecycle"
    assert not sync.fits and asteria.fits
    assert (
        asteria.peak_device_state_gib
        < sync.peak_device_state_gib
        == pytest.approx(sync.state_gib_per_rank)
    )


def test_simulate_sweeps_placements_into_one_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", "--hardware", "h100-pcie", "--model", "gpt-default", "--steps", "8"]
    rc = run_cli(
        [
            *args,
            "--placement",
            "lifecycle,pressure",
            "--device-budget",
            "1GiB,2GiB",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    frame = pd.read_csv(tmp_path / "simulate.csv")
    assert len(frame) == 4 and set(frame["placement"]) == {"lifecycle", "pressure"}
    assert set(frame["device_budget"]) == {2**30, 2**31}
    assert (frame["link_gb_per_step"] > 0).all() and frame["fits"].all()
    out = capsys.readouterr().out
    assert "simulated sweep of 4 configurations" in out and "lifecycle" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--placement", "x"], "--placement"),
        (["--placement", "pressure:a:b"], "--placement"),
        (["--device-budget", "lots"], "--device-budget"),
        (["--host-budget", "0"], "--host-budget"),
        (["--placement", "host", "--device-budget", "1KiB"], "--device-budget"),
    ],
)
def test_simulate_bad_placement_options(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    assert run_cli(["simulate", "--model", "gpt-default", "--steps", "5", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


@pytest.mark.slow
def test_replay_of_a_lifecycle_run_simulates_its_copies(tmp_path: Path) -> None:
    out = tmp_path / "lifecycle"
    tiny = [
        *("--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "16"),
        *("--batch-size", "4", "--eval-every", "100", "--eval-batches", "1"),
        *("--corpus-bytes", "20000", "--quiet", "--precondition-frequency", "4"),
    ]
    args = [
        "run",
        "--optimizer",
        "soap",
        "--steps",
        "10",
        "--placement",
        "lifecycle",
        "--out",
        str(out),
    ]
    assert run_cli([*args, *tiny]) == 0
    _, result = replay_run(out)
    measured = read_trace(out).spans
    for name in ("fetch", "write_back"):
        sel = measured[measured["name"] == name]
        want = {int(k): int(v) for k, v in sel.groupby("step")["bytes"].sum().items()}
        got = per_step_bytes(result, name)
        assert want and got == want
