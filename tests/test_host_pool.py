"""The host pool: aligned, non-overlapping buffers, reused by size, released after copies."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import SOAP, ExecutionConfig
from runtime.host_pool import ALIGN, HostPool
from runtime.policies.placement import parse_placement
from runtime.tiers import TieredStateStore
from traces.recorder import Recorder


def span(t: torch.Tensor, nbytes: int) -> tuple[int, int]:
    return t.data_ptr(), t.data_ptr() + nbytes


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 3 * ALIGN + 7)),
        min_size=1,
        max_size=40,
    )
)
def test_live_buffers_are_aligned_disjoint_and_keep_their_bytes(
    ops: list[tuple[bool, int]],
) -> None:
    pool = HostPool(pin_memory=False, chunk_bytes=4 * ALIGN)
    live: list[tuple[torch.Tensor, int, int]] = []  # buffer, nbytes, fill value
    for i, (release, nbytes) in enumerate(ops):
        if release and live:
            buffer, _, _ = live.pop(i % len(live))
            pool.release(buffer)
            continue
        buffer = pool.acquire(nbytes)
        assert buffer.data_ptr() % ALIGN == 0 and buffer.numel() >= nbytes
        buffer[:nbytes].fill_(i % 251)
        live.append((buffer, nbytes, i % 251))
    spans = sorted(span(b, n) for b, n, _ in live)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    for buffer, nbytes, value in live:
        assert bool((buffer[:nbytes] == value).all())
    assert pool.stats().in_use_bytes == sum(-(-n // ALIGN) * ALIGN for _, n, _ in live)


def test_a_released_buffer_is_the_next_one_of_its_size() -> None:
    pool = HostPool(pin_memory=False)
    a = pool.tensor(torch.float32, (3, 5))
    address = a.data_ptr()
    pool.release(a)
    b = pool.tensor(torch.float32, (5, 3))  # same bytes, other shape
    assert b.data_ptr() == address and b.shape == (5, 3) and b.is_contiguous()
    stats = pool.stats()
    assert (stats.acquires, stats.reuses, stats.chunks) == (2, 1, 1)


def test_copy_of_is_an_exact_copy_in_pool_memory() -> None:
    pool = HostPool(pin_memory=False)
    source = torch.randn(7, 9, dtype=torch.float64)
    copy = pool.copy_of(source)
    assert torch.equal(copy, source) and copy.data_ptr() != source.data_ptr()
    assert pool.owns(copy) and not pool.owns(source)


def test_release_of_a_foreign_or_released_tensor_is_an_error() -> None:
    pool = HostPool(pin_memory=False)
    with pytest.raises(ValueError, match="does not start a buffer"):
        pool.release(torch.zeros(4))
    t = pool.acquire(10)
    pool.release(t)
    with pytest.raises(ValueError, match="does not start a buffer"):
        pool.release(t)


class FakeEvent:
    """Stands for a CUDA event: ``query()`` is True once the copy it marks has completed."""

    def __init__(self) -> None:
        self.done = False

    def query(self) -> bool:
        return self.done


def test_a_buffer_released_after_an_event_waits_for_it() -> None:
    pool = HostPool(pin_memory=False)
    a = pool.acquire(ALIGN)
    event = FakeEvent()
    pool.release(a, after=event)
    b = pool.acquire(ALIGN)
    assert b.data_ptr() != a.data_ptr(), "reused while a copy may still read it"
    event.done = True
    c = pool.acquire(ALIGN)
    assert c.data_ptr() == a.data_ptr()


def test_chunks_grow_on_demand_and_are_recorded() -> None:
    recorder = Recorder()
    pool = HostPool(pin_memory=False, chunk_bytes=2 * ALIGN, recorder=recorder)
    pool.reserve(3 * ALIGN)
    bufs = [pool.acquire(ALIGN) for _ in range(3)]
    assert pool.stats().chunks == 1, "reserve made room for all three"
    big = pool.acquire(5 * ALIGN)  # larger than a chunk: a chunk of its own
    assert big.numel() == 5 * ALIGN
    stats = pool.stats()
    assert stats.chunks == 2 and stats.reserved_bytes == 8 * ALIGN
    assert len([s for s in recorder.spans if s.name == "host_pool_grow"]) == 2
    for b in bufs:
        pool.release(b)


@pytest.mark.parametrize("placement", ["host", "pressure:1:2"])
def test_tiered_training_stops_allocating_host_memory(placement: str, tmp_path: Path) -> None:
    """After the first steps every host buffer a step needs is one a previous step released."""
    from runtime.spill import SpillStore

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.Tanh(), torch.nn.Linear(20, 4))
    spill = SpillStore(tmp_path)
    opt = SOAP(
        model.parameters(),
        lr=3e-3,
        precondition_frequency=3,
        execution=ExecutionConfig(
            placement=parse_placement(placement),
            device_budget_bytes=8000,
            host_budget_bytes=8000,
            spill=spill,
        ),
    )
    g = torch.Generator().manual_seed(1)
    try:
        chunks_after = []
        for _ in range(12):
            x, y = torch.randn(32, 12, generator=g), torch.randn(32, 4, generator=g)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            assert isinstance(opt.store, TieredStateStore)
            chunks_after.append(opt.store.pool.stats())
    finally:
        opt.close()
        spill.close()
    first, last = chunks_after[3], chunks_after[-1]
    assert last.reserved_bytes == first.reserved_bytes > 0
    assert last.reuses - first.reuses == last.acquires - first.acquires
    if placement == "host":  # write-backs overwrite the resting copies in place
        assert last.acquires == first.acquires
    else:  # NVMe reads and writes go through buffers, each one released and reused
        assert last.acquires > first.acquires
