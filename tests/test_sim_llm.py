"""The LLM step at scale: FLOPs, the whole memory, collectives, and the closed form of long runs.

Figures are checked against formulas written out independently here (float64,
published formulas) and against numbers computed by hand for Llama-2-7B.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.policies.staleness import Bounded, Sync
from simulator import periodic
from simulator.data_parallel import (
    Collectives,
    collectives,
    exposed_seconds,
    ring_seconds,
    total_seconds,
)
from simulator.engine import SimConfig, fast_sync_step_ns, simulate
from simulator.llm_step import (
    ComputeEfficiency,
    DataParallel,
    MicroBatchTime,
    Recompute,
    TrainingSetup,
    attention_flops_per_sequence,
    attention_padding,
    compute_efficiency,
    matmul_flops_per_token,
    micro_batch_time,
    micro_batch_work,
)
from simulator.memory import activation_bytes, memory_per_rank
from simulator.model_config import load_model
from simulator.profiles import load_profile
from simulator.projection import Deployment, project
from simulator.whatif import SCENARIOS, WhatIf, run_whatif

P7 = 6_738_415_616  # Llama-2-7B's parameters (published)


# ------------------------------------------------------------------ FLOPs


def test_causal_attention_is_half_of_mosaics_full_attention_formula() -> None:
    # llm-foundry's benchmarking README: attn_flops_per_seq = n_layers * 2 * 2 * d_model * s^2
    # for full attention; causal attention computes the lower triangle, half of it.
    for name, seq in (("llama2-7b", 4096), ("llama3-70b", 8192), ("1b", 2048)):
        shape = load_model(name)
        full = shape.n_layer * 2 * 2 * (shape.hidden * float(seq) ** 2)
        assert attention_flops_per_sequence(shape, seq) == pytest.approx(full / 2, rel=1e-15)


def test_matmul_flops_are_two_per_weight_outside_the_lookups() -> None:
    shape = load_model("llama3-8b")
    vectors = sum(v.size * v.count for v in shape.vectors())
    lookup = shape.vocab * shape.hidden  # untied: the embedding is a lookup, the head a matmul
    assert matmul_flops_per_token(shape) == 2.0 * (shape.parameters() - lookup - vectors)
    gpt = load_model("gpt-small")  # tied: the one matrix is the head; positions are a lookup
    gpt_vectors = sum(v.size * v.count for v in gpt.vectors())
    positions = gpt.context * gpt.hidden
    assert matmul_flops_per_token(gpt) == 2.0 * (gpt.parameters() - positions - gpt_vectors)


def test_model_flops_match_torchtitans_formula_with_causal_attention() -> None:
    # torchtitan counts 6 * (params - embedding) + 12 * layers * hidden * seq per token for
    # full attention; with the causal half: 6 * (...) + 6 * layers * hidden * seq.
    shape, seq, batch = load_model("llama3-8b"), 8192, 2
    work = micro_batch_work(shape, TrainingSetup(seq_len=seq, micro_batch=batch))
    vectors = sum(v.size * v.count for v in shape.vectors())
    per_token = 6 * (shape.parameters() - shape.vocab * shape.hidden - vectors)
    per_token += 6 * shape.n_layer * shape.hidden * seq
    assert 3 * (work.matmul_flops + work.attention_flops) == pytest.approx(
        per_token * seq * batch, rel=1e-12
    )


def test_recompute_precision_and_padding_change_what_they_should() -> None:
    profile, shape = load_profile("h100-sxm"), load_model("llama3-8b")
    eff = compute_efficiency(profile)
    base = TrainingSetup(seq_len=4096, micro_batch=1)
    plain = micro_batch_time(shape, base, profile, eff)
    full = micro_batch_time(shape, dataclasses.replace(base, recompute="full"), profile, eff)
    assert full.forward_s == plain.forward_s
    # the layers' forward again; the LM head (2 V h per token) and the loss (12 V bytes) not
    tokens = 4096
    head = 2.0 * shape.vocab * shape.hidden * tokens / (989e12 * eff.matmul)
    loss = 12.0 * shape.vocab * tokens / (3.35e12 * eff.memory)
    assert full.backward_s == pytest.approx(
        plain.backward_s + plain.forward_s - head - loss, rel=1e-12
    )
    selective = micro_batch_time(
        shape, dataclasses.replace(base, recompute="selective"), profile, eff
    )
    assert plain.total_s < selective.total_s < full.total_s
    fp8 = micro_batch_time(shape, dataclasses.replace(base, precision="fp8"), profile, eff)
    assert plain.total_s / 2 < fp8.total_s < plain.total_s  # only the matmuls go twice as fast
    with pytest.raises(ValueError, match="no fp8 rate"):
        micro_batch_time(
            shape, dataclasses.replace(base, precision="fp8"), load_profile("h100-pcie"), eff
        )
    mpt30 = dataclasses.replace(shape, hidden=7168, n_head=64, n_kv_head=64)
    assert attention_padding(mpt30) == pytest.approx(128 / 112) and attention_padding(shape) == 1


# ------------------------------------------------------------------ memory


def test_whole_memory_of_llama2_7b_by_hand() -> None:
    shape = load_model("llama2-7b")
    assert shape.parameters() == P7
    # Per token and layer, bf16 elements: norms 4h + q 2h... h=4096, kv=4096, i=11008:
    # 4*4096 + (2*4096 + 2*4096) + 2*11008 + 11008 = 65,792 -> x2 bytes x 32 layers.
    setup = TrainingSetup(seq_len=4096, micro_batch=1, data_parallel="ddp")
    logits = 6 * 32000 * 4096
    assert activation_bytes(shape, setup) == 2 * 65_792 * 32 * 4096 + logits
    full = dataclasses.replace(setup, recompute="full")
    assert activation_bytes(shape, full) == 2 * 4096 * (4096 * 32 + 65_792) + logits
    selective = dataclasses.replace(setup, recompute="selective")  # norm outputs, SwiGLU out
    assert (
        activation_bytes(shape, selective) == 2 * (65_792 - 2 * 4096 - 11008) * 32 * 4096 + logits
    )
    # DDP, AdamW, one rank: 2 + 2 + 4 + 8 bytes per parameter (ZeRO paper's 16 P).
    memory = memory_per_rank(shape, setup, 1, 8 * P7)
    assert memory.total - memory.activations == 16 * P7 == 107_814_649_856
    # ZeRO-3 on 8 ranks: every kind /8, plus two gathered layers and one gradient bucket.
    layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096  # 202,383,360
    zero3 = memory_per_rank(shape, dataclasses.replace(setup, data_parallel="zero3"), 8, P7)
    assert zero3.parameters == 2 * P7 // 8 + 2 * 2 * layer
    assert zero3.gradients == 2 * P7 // 8 + 25 * 2**20
    assert zero3.master_weights == 4 * P7 // 8
    zero1 = memory_per_rank(shape, dataclasses.replace(setup, data_parallel="zero1"), 8, P7)
    assert (zero1.parameters, zero1.gradients, zero1.master_weights) == (
        2 * P7,
        2 * P7,
        4 * P7 // 8,
    )


def test_adamw_on_one_h100_does_not_fit_and_zero3_on_eight_does() -> None:
    base = dict(hardware="h100-sxm", model="llama2-7b", optimizer="adamw", steps=5)
    base |= dict(seq_len=4096, micro_batch=1, recompute="full")
    one = run_whatif(WhatIf(**base))  # type: ignore[arg-type]
    assert one.memory.optimizer_state == 8 * P7 and not one.fits
    eight = run_whatif(WhatIf(**base, gpus_per_node=8, data_parallel="zero3"))  # type: ignore[arg-type]
    assert eight.memory.optimizer_state == 8 * math.ceil(P7 / 8) and eight.fits


def test_a_comparison_shards_every_optimizer_alike() -> None:
    _, whatifs = SCENARIOS["gh200-7b"]
    results = {w.describe(): run_whatif(dataclasses.replace(w, steps=12)) for w in whatifs}
    adamw, soap = results["AdamW"], results["SOAP, synchronous"]
    ranks = 32
    assert adamw.memory.optimizer_state == 8 * math.ceil(P7 / ranks)
    assert soap.state_gib_per_rank < 8 and adamw.state_gib_per_rank < 2
    assert adamw.fits and soap.fits


# ------------------------------------------------------------------ collectives


@pytest.mark.parametrize(
    ("stage", "passes"),
    [("ddp", 2), ("zero1", 2), ("zero2", 4 + 1), ("zero3", 4 * 3)],
)
def test_collective_bytes_per_stage(stage: str, passes: int) -> None:
    shape = load_model("llama2-7b")
    setup = TrainingSetup(seq_len=4096, micro_batch=1, grad_accum=4, data_parallel=stage)
    parts = collectives(shape.parameters(), setup)
    payload = 2.0 * P7
    assert parts.sent_bytes(8, 4) == pytest.approx(7 / 8 * payload * passes, rel=1e-15)
    assert parts.sent_bytes(1, 4) == 0.0


def test_overlap_hides_what_compute_covers_and_never_the_last_bucket() -> None:
    profile = load_profile("h100-sxm")
    ring = ring_seconds(profile, 2, 8, 0.7)
    setup = TrainingSetup(seq_len=1024, data_parallel="ddp", bucket_bytes=2**20)
    parts = Collectives(all_reduce=2**30)
    comm = ring.seconds(2**30, passes=2)
    long = MicroBatchTime(forward_s=10.0, backward_s=20.0)
    assert exposed_seconds(parts, ring, setup, long, 32) == pytest.approx(comm / 2**10)
    none = MicroBatchTime(forward_s=0.0, backward_s=0.0)
    assert exposed_seconds(parts, ring, setup, none, 32) == pytest.approx(comm)
    # two-level ring: (g-1)/g at NVLink, then 1/g of the payload per NIC over (n-1)/n
    net = profile.network
    assert net.intra_node is not None and net.inter_node is not None
    per_byte = 7 / 8 / (net.intra_node.bandwidth.value * 0.7) + 1 / 2 / 8 / (
        net.inter_node.bandwidth.value * 0.7
    )
    assert ring.intra_s_per_byte + ring.inter_s_per_byte == pytest.approx(per_byte, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    interference=st.floats(0.0, 1.0),
    nodes=st.sampled_from([1, 2, 8]),
    cover_s=st.floats(0.0, 5.0),
    grad_accum=st.integers(1, 4),
)
def test_hidden_collectives_cost_their_interference_on_the_intra_node_leg(
    interference: float, nodes: int, cover_s: float, grad_accum: int
) -> None:
    ring = ring_seconds(load_profile("h100-sxm"), nodes, 8, 0.7)
    setup = TrainingSetup(seq_len=2048, grad_accum=grad_accum, data_parallel="zero3")
    parts = collectives(P7, setup)
    step = MicroBatchTime(forward_s=cover_s / 3, backward_s=2 * cover_s / 3)
    waited = exposed_seconds(parts, ring, setup, step, 32)
    total = total_seconds(parts, ring, setup)
    # by hand: FSDP gathers twice and reduce-scatters once per micro-batch
    by_hand = grad_accum * 3 * ring.seconds(2.0 * P7)
    assert total == pytest.approx(by_hand, rel=1e-12)
    assert 0.0 <= waited <= total + 1e-12
    charged = exposed_seconds(parts, ring, setup, step, 32, interference)
    expected = waited + interference * ring.intra_share * (total - waited)
    assert charged == pytest.approx(expected, rel=1e-12, abs=1e-15)
    if nodes == 1:  # one node: every hidden second is on NVLink; 1 is no overlap at all
        assert exposed_seconds(parts, ring, setup, step, 32, 1.0) == pytest.approx(total)


def test_interference_outside_zero_to_one_is_refused() -> None:
    ring = ring_seconds(load_profile("h100-sxm"), 1, 8, 0.7)
    setup = TrainingSetup(seq_len=1024, data_parallel="ddp")
    step = MicroBatchTime(1.0, 2.0)
    with pytest.raises(ValueError, match="interference"):
        exposed_seconds(Collectives(all_reduce=1e9), ring, setup, step, 8, 1.5)
    with pytest.raises(ValueError, match="interference"):
        ComputeEfficiency(0.5, 0.5, 0.5, -0.1)


def test_projection_uses_the_stage_collectives() -> None:
    shape, profile = load_model("llama2-7b"), load_profile("h100-sxm")
    common = dict(optimizer="adamw", tokens_per_rank=4096, nodes=2, gpus_per_node=8)
    for stage in DataParallel:
        proj = project(shape, profile, Deployment(**common, data_parallel=stage.value))  # type: ignore[arg-type]
        setup = TrainingSetup(seq_len=4096, data_parallel=stage)
        assert proj.collective_bytes_per_step == collectives(P7, setup).sent_bytes(16, 1)
        assert proj.memory is not None and proj.allreduce_ns >= 0
    replicated = project(shape, profile, Deployment(**common, shard_optimizer=False))  # type: ignore[arg-type]
    assert replicated.state_bytes_per_rank == 8 * P7  # DDP: the whole state on every rank


# ------------------------------------------------------------------ closed form vs event model


def _projected(optimizer: str, ranks: int, f: int) -> WhatIf:
    return WhatIf(
        hardware="gh200",
        model="gpt-small",
        optimizer=optimizer,
        gpus_per_node=ranks,
        precondition_frequency=f,
        tokens_per_rank=256 * 16,
    )


@settings(max_examples=6, deadline=None)
@given(
    optimizer=st.sampled_from(["soap", "kl-shampoo", "shampoo"]),
    staleness=st.sampled_from(["sync", "bounded:2", "bounded:4"]),
    placement=st.sampled_from(["device", "lifecycle"]),
    f=st.sampled_from([3, 5]),
)
def test_long_runs_in_closed_form_equal_the_event_model(
    optimizer: str, staleness: str, placement: str, f: int
) -> None:
    w = dataclasses.replace(
        _projected(optimizer, 1, f),
        staleness=staleness,
        placement=placement,
        root_device="host" if staleness != "sync" else "device",
        steps=60,
    )
    whole = run_whatif(w)
    old = periodic.LONG_RUN_BLOCK_STEPS
    periodic.LONG_RUN_BLOCK_STEPS = 0
    try:
        closed = run_whatif(w)
    finally:
        periodic.LONG_RUN_BLOCK_STEPS = old
    a, b = whole.simulated, closed.simulated  # settled and repeated, or simulated whole
    for name in ("step_ns", "compute_ns", "optimizer_ns", "wait_ns", "transfer_wait_ns"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.link_bytes, b.link_bytes)
    assert a.link_busy == b.link_busy and a.peak_device_state_bytes == b.peak_device_state_bytes


def test_synchronous_closed_form_matches_the_vectorized_cross_check() -> None:
    proj_w = _projected("soap", 1, 4)
    old = periodic.LONG_RUN_BLOCK_STEPS
    periodic.LONG_RUN_BLOCK_STEPS = 0
    try:
        result = run_whatif(dataclasses.replace(proj_w, steps=40))
    finally:
        periodic.LONG_RUN_BLOCK_STEPS = old
    assert result.event_steps < 40  # a synchronous run repeats every f steps
    model = result.projection.model
    expected = fast_sync_step_ns(model, 40)
    np.testing.assert_array_equal(result.simulated.step_ns, expected)
    full = simulate(model, SimConfig(steps=40, staleness=Sync()))
    np.testing.assert_array_equal(full.step_ns, expected)
    bounded = simulate(model, SimConfig(steps=40, staleness=Bounded(2), stagger=True))
    assert bounded.step_ns.shape == (40,)


def test_a_run_that_never_repeats_is_simulated_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(periodic, "LONG_RUN_BLOCK_STEPS", 0)
    monkeypatch.setattr(periodic, "_settled", lambda result, period: False)
    result = run_whatif(dataclasses.replace(_projected("soap", 1, 3), steps=60))
    assert result.event_steps == 60 and len(result.simulated.step_ns) == 60


# ------------------------------------------------------------------ GB10 and GH200


def test_gb10_counts_host_placed_state_in_its_one_pool() -> None:
    _, whatifs = SCENARIOS["gb10-1b"]
    for w in whatifs:
        r = run_whatif(dataclasses.replace(w, steps=12))
        assert r.training_device_gib == pytest.approx(r.memory.total / 2**30, rel=1e-9)


def test_gh200_host_placement_frees_hbm() -> None:
    _, whatifs = SCENARIOS["gh200-7b-1gpu"]
    by = {w.describe(): run_whatif(dataclasses.replace(w, steps=25)) for w in whatifs}
    sync, lifecycle = by["SOAP, synchronous"], by["SOAP, asteria (bounded:4, host roots)"]
    assert lifecycle.memory.total == sync.memory.total  # the same state, placed differently
    assert lifecycle.training_device_gib < sync.training_device_gib
    assert not sync.fits


def test_recompute_is_an_enum_of_three() -> None:
    assert [r.value for r in Recompute] == ["none", "selective", "full"]
