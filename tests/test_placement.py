"""Placement policies of the tier manager (DESIGN.md, "Tiered optimizer state")."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from dataclasses import replace
from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from runtime.policies import (
    Access,
    DevicePlacement,
    HostPlacement,
    LifecyclePlacement,
    LinkKind,
    MemoryView,
    Move,
    PlacementPolicy,
    PressurePlacement,
    SlotInfo,
    SlotKind,
    Traffic,
    apply_moves,
    check_budget,
    parse_placement,
    peak_device_bytes,
    step_traffic,
    tier_bytes,
)
from traces.schema import Tier

KIB, MIB = 1 << 10, 1 << 20
DEVICE, HOST, NVME = Tier.DEVICE, Tier.HOST, Tier.NVME
PRECONDITIONER = (
    SlotKind.FACTOR,
    SlotKind.BASIS,
    SlotKind.ROOT,
    SlotKind.SNAPSHOT,
    SlotKind.SHADOW,
)


def soap_block(
    block: str, side: int, tier: Tier = DEVICE, next_use: int | None = 0
) -> list[SlotInfo]:
    """A SOAP-like block of side x side fp32 words, plus a snapshot and a shadow on the host."""
    matrix, moment = side * side * 4, side * side * 4

    def slot(name: str, kind: SlotKind, nbytes: int, where: Tier = tier) -> SlotInfo:
        return SlotInfo(block, name, kind, nbytes, where, next_use_step=next_use)

    return [
        slot("L", SlotKind.FACTOR, matrix),
        slot("R", SlotKind.FACTOR, matrix),
        slot("QL", SlotKind.BASIS, matrix),
        slot("QR", SlotKind.BASIS, matrix),
        slot("M", SlotKind.MOMENT, moment),
        slot("V", SlotKind.MOMENT, moment),
        slot("snap", SlotKind.SNAPSHOT, 2 * matrix, HOST),
        slot("shadow", SlotKind.SHADOW, 2 * matrix, HOST),
    ]


def view(step: int = 0, link: LinkKind = LinkKind.PCIE, **kw: object) -> MemoryView:
    args: dict[str, object] = {"device_budget_bytes": 1 << 40, "host_budget_bytes": 1 << 40}
    args.update(kw)
    return MemoryView(step, link=link, **args)  # type: ignore[arg-type]


def moment(block: str, nbytes: int, next_use: int | None, tier: Tier = DEVICE) -> SlotInfo:
    return SlotInfo(block, "M", SlotKind.MOMENT, nbytes, tier, next_use_step=next_use)


def settle(policy: PlacementPolicy, slots: list[SlotInfo], v: MemoryView) -> list[SlotInfo]:
    return apply_moves(slots, policy.place(slots, v))


# --------------------------------------------------------------------------- simple policies


def test_device_placement_keeps_everything_on_the_device() -> None:
    policy = DevicePlacement()
    slots = soap_block("b0", 8)
    assert {policy.home(s) for s in slots} == {DEVICE}
    moves = policy.place(slots, view())
    assert {(m.slot, m.src, m.dst) for m in moves} == {
        ("snap", HOST, DEVICE),
        ("shadow", HOST, DEVICE),
    }
    settled = apply_moves(slots, moves)
    assert tier_bytes(settled)[DEVICE] == sum(s.nbytes for s in slots)
    assert policy.place(settled, view()) == []
    assert all(policy.access(s, 0) in (Access.RESIDENT, Access.NONE) for s in settled)


def test_host_placement_streams_every_preconditioner_slot_and_writes_it_back() -> None:
    policy = HostPlacement()
    slots = settle(policy, soap_block("b0", 8), view())
    for s in slots:
        assert s.tier is (DEVICE if s.kind is SlotKind.MOMENT else HOST)
        expected = {
            SlotKind.MOMENT: Access.RESIDENT,
            SlotKind.FACTOR: Access.FETCH_WRITE_BACK,
            SlotKind.BASIS: Access.FETCH_WRITE_BACK,  # static: written back although read-only
        }.get(s.kind, Access.NONE)
        assert policy.access(s, 0) is expected
        assert policy.access(s, 1) is Access.NONE  # not used in step 1
        assert policy.needed_on_device(s, 0) is expected.occupies_device
    matrices = sum(s.nbytes for s in slots if s.kind in (SlotKind.FACTOR, SlotKind.BASIS))
    traffic = step_traffic(slots, policy, 0)
    assert (traffic.h2d_bytes, traffic.d2h_bytes) == (matrices, matrices)


@pytest.mark.parametrize(
    ("link", "factor", "basis"),
    [
        (LinkKind.PCIE, Access.FETCH_WRITE_BACK, Access.FETCH),
        (LinkKind.NVLINK_C2C, Access.IN_PLACE, Access.FETCH),
        (LinkKind.UNIFIED, Access.IN_PLACE, Access.IN_PLACE),
    ],
)
def test_lifecycle_access_depends_on_the_link(
    link: LinkKind, factor: Access, basis: Access
) -> None:
    policy = LifecyclePlacement(link=link)
    by_kind = {s.kind: s for s in soap_block("b0", 4, tier=HOST)}
    assert policy.access(by_kind[SlotKind.FACTOR], 0) is factor
    assert policy.access(by_kind[SlotKind.BASIS], 0) is basis
    assert policy.access(by_kind[SlotKind.SNAPSHOT], 0) is Access.NONE
    assert policy.access(by_kind[SlotKind.SHADOW], 0) is Access.NONE
    resting_moment = SlotInfo("b0", "M", SlotKind.MOMENT, 64, DEVICE, next_use_step=0)
    assert policy.access(resting_moment, 0) is Access.RESIDENT


def test_lifecycle_keeps_only_the_moments_on_the_device_between_uses() -> None:
    policy = LifecyclePlacement()
    slots = [s for b, side in (("b0", 8), ("b1", 16), ("b2", 4)) for s in soap_block(b, side)]
    moments = sum(s.nbytes for s in slots if s.kind is SlotKind.MOMENT)
    moves = policy.place(slots, view(0))
    assert all(m.src is DEVICE and m.dst is HOST for m in moves)
    assert any("factor rests on the host between uses" in m.reason for m in moves)
    for step in range(4):  # steady state: nothing moves, and only the moments rest on the device
        slots = apply_moves(slots, moves)
        assert tier_bytes(slots)[DEVICE] == moments
        moves = policy.place(slots, view(step))
        assert moves == []
    # during a step the largest block's matrices visit the device, one block at a time
    b1 = sum(
        s.nbytes for s in slots if s.block == "b1" and s.kind in (SlotKind.FACTOR, SlotKind.BASIS)
    )
    assert peak_device_bytes(slots, policy, 0) == moments + b1
    assert peak_device_bytes(slots, policy, 1) == moments  # nothing used in step 1


def test_lifecycle_writes_back_only_what_the_update_wrote() -> None:
    slots = settle(LifecyclePlacement(), soap_block("b0", 8), view())
    factors = sum(s.nbytes for s in slots if s.kind is SlotKind.FACTOR)
    bases = sum(s.nbytes for s in slots if s.kind is SlotKind.BASIS)
    pcie = step_traffic(slots, LifecyclePlacement(), 0)
    assert (pcie.h2d_bytes, pcie.d2h_bytes) == (factors + bases, factors)
    c2c = step_traffic(slots, LifecyclePlacement(link=LinkKind.NVLINK_C2C), 0)
    assert (c2c.h2d_bytes, c2c.d2h_bytes) == (factors + bases, factors)
    assert peak_device_bytes(slots, LifecyclePlacement(link=LinkKind.NVLINK_C2C), 0) < (
        peak_device_bytes(slots, LifecyclePlacement(), 0)
    )


def test_unified_memory_moves_nothing_but_accounts_for_everything() -> None:
    policy = LifecyclePlacement(link=LinkKind.UNIFIED)
    unified = view(0, LinkKind.UNIFIED)
    on_device = [s for b in ("b0", "b1") for s in soap_block(b, 8)]
    assert policy.place(on_device, unified) == []  # a label is not a copy
    slots = [replace(s, tier=policy.home(s)) for s in on_device]
    total = sum(s.nbytes for s in slots)
    moments = sum(s.nbytes for s in slots if s.kind is SlotKind.MOMENT)
    for step in range(3):
        assert policy.place(slots, view(step, LinkKind.UNIFIED)) == []
        assert tier_bytes(slots) == {DEVICE: moments, HOST: total - moments, NVME: 0}
        assert peak_device_bytes(slots, policy, step) == total  # one memory holds both labels
        assert step_traffic(slots, policy, step) == Traffic(0, 0)  # no link bytes
        assert not any(policy.needed_on_device(s, step) for s in slots if s.tier is HOST)
    assert step_traffic(slots, LifecyclePlacement(), 0).h2d_bytes > 0  # PCIe would copy


# --------------------------------------------------------------------------- pressure


def test_pressure_evicts_the_furthest_next_use_first() -> None:
    policy = PressurePlacement(4 * MIB, 8 * MIB)
    slots = [moment("a", 2 * MIB, 5), moment("b", 2 * MIB, 9), moment("c", 2 * MIB, 7)]
    # 8 MiB budget, 6 MiB resting: 2 MiB free < 4 MiB low watermark; one eviction suffices
    moves = policy.place(slots, view(0, device_budget_bytes=8 * MIB))
    assert [(m.block, m.src, m.dst) for m in moves] == [("b", DEVICE, HOST)]
    assert moves[0].reason.startswith("pressure: device free 2 MiB < low watermark 4 MiB;")
    assert "next use in 9 steps, furthest first" in moves[0].reason
    # measured free memory (activations, other tensors) adds pressure beyond the budget
    moves = policy.place(slots, view(0, device_budget_bytes=8 * MIB, device_free_bytes=0))
    assert [m.block for m in moves] == ["b", "c"]


def test_pressure_ties_break_by_size_then_name_whatever_the_input_order() -> None:
    policy = PressurePlacement(3 * MIB, 6 * MIB)
    slots = [
        moment("x", 1 * MIB, 4),
        moment("b", 1 * MIB, 4),
        moment("a", 1 * MIB, 4),
        moment("big", 2 * MIB, 4),
        moment("never", 1 * MIB, None),
    ]
    v = view(0, device_budget_bytes=7 * MIB)  # 6 MiB resting, 1 MiB free: evict to 3 MiB free
    expected = policy.place(slots, v)
    assert [m.block for m in expected] == ["never", "big"]
    assert "next use not scheduled" in expected[0].reason
    rng = random.Random(0)
    for _ in range(5):
        shuffled = slots[:]
        rng.shuffle(shuffled)
        assert policy.place(shuffled, v) == expected


@pytest.mark.parametrize(
    ("host_budget", "nvme", "spilled"), [(64, True, False), (5, False, False), (5, True, True)]
)
def test_pressure_spills_to_nvme_only_when_the_host_is_pressed(
    host_budget: int, nvme: bool, spilled: bool
) -> None:
    policy = PressurePlacement(2 * MIB, 4 * MIB)
    slots = [moment(f"m{i}", 1 * MIB, i) for i in range(8)]
    slots += [SlotInfo("h", "L", SlotKind.FACTOR, 2 * MIB, HOST, next_use_step=30)]
    v = view(
        0, device_budget_bytes=8 * MIB, host_budget_bytes=host_budget * MIB, nvme_available=nvme
    )
    moves = policy.place(slots, v)
    after = apply_moves(slots, moves)
    assert tier_bytes(after)[DEVICE] <= 6 * MIB
    to_nvme = [m for m in moves if m.dst is NVME]
    assert bool(to_nvme) is spilled
    if spilled:  # the host's slot used furthest away goes: the factor
        assert to_nvme[0].block == "h" and to_nvme[0].src is HOST
        assert any("host free" in m.reason for m in to_nvme)


def test_pressure_promotes_back_only_over_the_high_watermark() -> None:
    policy = PressurePlacement(3 * MIB, 6 * MIB)
    slots = [moment(f"m{i}", 1 * MIB, 10 + i) for i in range(6)]

    def run(capacity_mib: int) -> list[Move]:
        nonlocal slots
        used = tier_bytes(slots)[DEVICE]
        v = view(0, device_budget_bytes=64 * MIB, device_free_bytes=capacity_mib * MIB - used)
        moves = policy.place(slots, v)
        slots = apply_moves(slots, moves)
        return moves

    evicted = run(7)  # 1 MiB free: evict the two used furthest away
    assert [m.block for m in evicted] == ["m5", "m4"]
    # free memory swings between the watermarks: nothing moves either way
    for capacity in (9, 7, 9, 8, 7, 9):
        assert run(capacity) == []
    promoted = run(13)  # 9 MiB free: promote while free stays >= 6 MiB, nearest use first
    assert [(m.block, m.dst) for m in promoted] == [("m4", DEVICE), ("m5", DEVICE)]
    assert promoted[0].reason.startswith("promote: device free 9 MiB >= high watermark 6 MiB")
    assert run(13) == []


def test_pressure_never_evicts_and_promotes_on_the_same_tier_in_one_call() -> None:
    policy = PressurePlacement(2 * MIB, 3 * MIB)
    slots = [moment("x", 8 * MIB, 9), moment("z", 1 * MIB, 1, tier=HOST)]
    v = view(0, device_budget_bytes=19 * MIB // 2)  # 1.5 MiB free: evict x, which frees plenty
    first = policy.place(slots, v)
    assert [(m.block, m.dst) for m in first] == [("x", HOST)]
    second = policy.place(apply_moves(slots, first), v)  # z comes home at the next boundary
    assert [(m.block, m.dst) for m in second] == [("z", DEVICE)]


def test_an_nvme_spill_over_a_coherent_link_makes_room_for_its_staging() -> None:
    # over NVLink-C2C a factor resting on the host is used in place; spilled to NVMe it must be
    # staged on the device, which pushes out the moment that is not used this step
    policy = PressurePlacement(0, 0, link=LinkKind.NVLINK_C2C)
    factor = SlotInfo("a", "L", SlotKind.FACTOR, 4 * MIB, HOST, next_use_step=0)
    slots = [factor, moment("b", 4 * MIB, 5)]
    v = view(
        0,
        LinkKind.NVLINK_C2C,
        device_budget_bytes=6 * MIB,
        host_budget_bytes=3 * MIB,
        nvme_available=True,
    )
    assert policy.access(factor, 0) is Access.IN_PLACE
    moves = policy.place(slots, v)
    assert [(m.block, m.src, m.dst) for m in moves] == [("a", HOST, NVME), ("b", DEVICE, NVME)]
    after = apply_moves(slots, moves)
    assert policy.access(after[0], 0) is Access.FETCH_WRITE_BACK
    assert peak_device_bytes(after, policy, 0) == 4 * MIB


def test_pressure_on_unified_memory_spills_only_to_nvme() -> None:
    policy = PressurePlacement(1 * MIB, 2 * MIB, link=LinkKind.UNIFIED)
    slots = [replace(s, tier=policy.home(s)) for s in soap_block("b0", 256, next_use=3)]
    total = sum(s.nbytes for s in slots)
    roomy = view(0, LinkKind.UNIFIED, device_budget_bytes=total + 4 * MIB, nvme_available=True)
    assert policy.place(slots, roomy) == []
    tight = view(0, LinkKind.UNIFIED, device_budget_bytes=total, nvme_available=True)
    moves = policy.place(slots, tight)
    assert moves and all(m.dst is NVME for m in moves)
    assert all("unified memory free" in m.reason for m in moves)
    assert policy.place(slots, view(0, LinkKind.UNIFIED, device_budget_bytes=total)) == []


STEP = 2
slot_sets = st.lists(
    st.tuples(
        st.sampled_from(["b0", "b1", "b2", "b3"]),
        st.sampled_from(list(SlotKind)),
        st.integers(1, 64 * KIB),
        st.sampled_from(list(Tier)),
        st.sampled_from([None, STEP, STEP, STEP, STEP + 1, STEP + 4]),  # mostly used this step
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=120, deadline=None)
@given(
    rows=slot_sets,
    link=st.sampled_from(list(LinkKind)),
    budget=st.integers(0, 512 * KIB),
    host_budget=st.integers(0, 1 << 20),
    low=st.one_of(st.just(0), st.integers(0, 128 * KIB)),
    gap=st.integers(0, 128 * KIB),
    nvme=st.booleans(),
)
def test_pressure_fits_the_device_budget_whenever_the_hot_set_does(
    rows: list[tuple[str, SlotKind, int, Tier, int | None]],
    link: LinkKind,
    budget: int,
    host_budget: int,
    low: int,
    gap: int,
    nvme: bool,
) -> None:
    slots = [
        SlotInfo(b, f"s{i}", k, n, t, next_use_step=u) for i, (b, k, n, t, u) in enumerate(rows)
    ]
    total = sum(s.nbytes for s in slots)
    hot: dict[str, int] = {}
    for s in slots:
        if s.used_in(STEP):
            hot[s.block] = hot.get(s.block, 0) + s.nbytes
    largest_hot = max(hot.values(), default=0)
    assume(largest_hot <= budget)  # one block's hot working set fits...
    if link is LinkKind.UNIFIED:  # ...and what need not be in memory has somewhere to go
        assume(nvme or total + largest_hot <= budget)
    else:
        assume(nvme or host_budget >= total)
    policy = PressurePlacement(low, low + gap, link=link)
    v = view(
        STEP, link, device_budget_bytes=budget, host_budget_bytes=host_budget, nvme_available=nvme
    )
    moves = policy.place(slots, v)
    assert policy.place(list(reversed(slots)), v) == moves  # deterministic
    after = apply_moves(slots, moves)
    assert peak_device_bytes(after, policy, STEP) <= budget
    if not nvme:
        assert all(m.dst is not NVME for m in moves)
    pressed = {m.reason.split()[1] for m in moves if m.reason.startswith("pressure:")}
    promoted = {m.dst for m in moves if m.reason.startswith("promote")}
    assert not ("device" in pressed and DEVICE in promoted), moves  # hysteresis within a call
    # no flip-flop: in a world that does not change it settles, and no slot is promoted and
    # then evicted again (an eviction that overshot may be undone once, at the next boundary)
    history = {s.key: [s.tier, a.tier] for s, a in zip(slots, after, strict=True)}
    for _ in range(3):
        after = apply_moves(after, policy.place(after, v))
        assert peak_device_bytes(after, policy, STEP) <= budget
        for s in after:
            history[s.key].append(s.tier)
    assert policy.place(after, v) == []
    rank = {DEVICE: 0, HOST: 1, NVME: 2}
    for tiers in history.values():
        turns = "".join("v" if rank[b] > rank[a] else "^" for a, b in pairwise(tiers) if a != b)
        assert "^v" not in turns and turns.count("v^") <= 1, tiers


# --------------------------------------------------------------------------- budgets, parsing, layering


def test_check_budget_names_the_block_and_the_bytes_it_needs() -> None:
    slots = soap_block("small", 4) + soap_block("w.r0.c1", 8)
    hot_kinds = (SlotKind.FACTOR, SlotKind.BASIS, SlotKind.MOMENT)  # not the snapshot or shadow
    hot = sum(s.nbytes for s in slots if s.block == "w.r0.c1" and s.kind in hot_kinds)
    check_budget(slots, hot)  # exactly enough
    with pytest.raises(
        ValueError, match=rf"block 'w.r0.c1': .*\({hot} bytes: L, R, QL, QR, M, V\)"
    ):
        check_budget(slots, hot - 1)
    with pytest.raises(ValueError, match="1 more block"):
        check_budget(slots, 10)


def test_parse_placement() -> None:
    assert parse_placement("device") == DevicePlacement()
    assert parse_placement(" Host ") == HostPlacement()
    assert parse_placement("lifecycle", link="nvlink-c2c") == LifecyclePlacement(
        link=LinkKind.NVLINK_C2C
    )
    assert parse_placement("pressure") == PressurePlacement()
    policy = parse_placement("pressure:64:128", link=LinkKind.UNIFIED)
    assert policy == PressurePlacement(64 * MIB, 128 * MIB, link=LinkKind.UNIFIED)
    odd = PressurePlacement(123_456_789, 987_654_321, link=LinkKind.NVLINK_C2C)
    assert policy.name == "pressure:64:128" and odd.name.startswith("pressure:117.737")
    for p in (DevicePlacement(), HostPlacement(), LifecyclePlacement(), policy, odd):
        assert isinstance(p, PlacementPolicy)
        assert parse_placement(p.name, link=p.link) == p
    for bad in ("nowhere", "pressure:64", "device:1", "pressure:a:b"):
        with pytest.raises(ValueError, match="expected device, host, lifecycle, pressure"):
            parse_placement(bad)
    with pytest.raises(ValueError, match="low watermark <= high watermark"):
        parse_placement("pressure:128:64")


def test_a_view_of_another_machine_is_refused() -> None:
    with pytest.raises(ValueError, match="build the policy with link='unified'"):
        LifecyclePlacement().place([], view(0, LinkKind.UNIFIED))


def test_apply_moves_checks_where_a_slot_rests() -> None:
    slots = [moment("a", 8, 0)]
    with pytest.raises(ValueError, match="it rests on device"):
        apply_moves(slots, [Move("a", "M", HOST, NVME, "test", 8)])
    with pytest.raises(ValueError, match="unknown slot"):
        apply_moves(slots, [Move("z", "M", DEVICE, HOST, "test", 8)])


def test_placement_imports_without_torch() -> None:
    code = textwrap.dedent(
        """
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None
        sys.meta_path.insert(0, _Block())
        import runtime.policies.placement
        assert "torch" not in sys.modules
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("name", "link"),
    [
        ("NVIDIA GH200 480GB", LinkKind.NVLINK_C2C),
        ("NVIDIA GB10", LinkKind.UNIFIED),
        ("NVIDIA H100 80GB HBM3", LinkKind.PCIE),
        ("NVIDIA H200", LinkKind.PCIE),
    ],
)
def test_the_link_follows_the_gpu_name(name: str, link: LinkKind) -> None:
    from runtime.policies.placement import link_of_gpu

    assert link_of_gpu(name) is link
