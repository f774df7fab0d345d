"""Model shapes and the §8 cost model, checked against numbers computed by hand here."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.plan.costmodel import (
    ELEMENTWISE_FLOPS_PER_ELEMENT,
    CostConfig,
    Optimizer,
    Traffic,
    basis_refresh_flops,
    block_hot_path_bytes,
    block_hot_path_flops,
    block_refresh_flops,
    block_state,
    block_state_bytes,
    blocks_of,
    eigh_flops,
    factor_refresh_flops,
    fwd_bwd_flops,
    invroot_flops,
    model_hot_path_bytes,
    model_hot_path_flops,
    model_refresh_flops,
    model_state,
    model_state_bytes,
    preconditioned_dims,
    roofline_time_s,
)
from simulator.profiles import load_profile
from simulator.shapes import Family, ModelShape, ShapeError, get_shape, gpt_shape, list_shapes

E = ELEMENTWISE_FLOPS_PER_ELEMENT

# ---------------------------------------------------------------------------------------
# Shapes


def test_the_known_shapes() -> None:
    assert list_shapes() == ["gpt-default", "gpt-small", "125m", "350m", "1b", "7b", "13b"]


def test_gpt_default_is_the_cli_default_model() -> None:
    shape = get_shape("gpt-default")
    assert (shape.n_layer, shape.hidden, shape.n_head, shape.context, shape.vocab) == (
        4,
        128,
        4,
        64,
        256,
    )
    # By hand, nanoGPT layout with biases and a tied head: wte 256·128 + wpe 64·128; per layer
    # qkv 384·128+384, proj 128·128+128, fc 512·128+512, proj 128·512+128, two LayerNorms 4·128;
    # final LayerNorm 2·128.
    per_layer = (384 * 128 + 384) + (128 * 128 + 128) + (512 * 128 + 512) + (128 * 512 + 128) + 512
    assert shape.parameters() == 256 * 128 + 64 * 128 + 4 * per_layer + 256 == 834_304
    assert gpt_shape(4, 128, 4, 64, name="gpt-default") == shape


@pytest.mark.parametrize(
    ("name", "nominal", "tolerance"),
    [
        ("7b", 6.7e9, 0.05),
        ("13b", 13.0e9, 0.05),
        ("1b", 1.0e9, 0.06),
        ("350m", 350e6, 0.06),
        ("125m", 125e6, 0.08),
    ],
)
def test_parameter_counts_are_near_the_nominal_sizes(
    name: str, nominal: float, tolerance: float
) -> None:
    assert abs(get_shape(name).parameters() / nominal - 1) < tolerance


def test_llama_7b_and_13b_match_the_published_counts() -> None:
    # Llama-2-7B and -13B as published (embedding and head untied, RMSNorm gains).
    assert get_shape("7b").parameters() == 6_738_415_616
    assert get_shape("13b").parameters() == 13_015_864_320


def test_llama_matrices_are_every_2d_weight() -> None:
    shape = get_shape("7b")
    got = {m.name: (m.rows, m.cols, m.count) for m in shape.matrices()}
    assert got == {
        "embedding": (32000, 4096, 1),
        "q": (4096, 4096, 32),
        "k": (4096, 4096, 32),
        "v": (4096, 4096, 32),
        "o": (4096, 4096, 32),
        "gate": (11008, 4096, 32),
        "up": (11008, 4096, 32),
        "down": (4096, 11008, 32),
        "lm_head": (32000, 4096, 1),
    }


def test_grouped_query_attention_shrinks_k_and_v() -> None:
    shape = ModelShape("gqa", Family.LLAMA, 2, 2048, 5632, 32, 32000, 2048, n_kv_head=4)
    got = {m.name: (m.rows, m.cols) for m in shape.matrices()}
    assert got["k"] == got["v"] == (4 * 64, 2048)


def test_bad_shapes_raise_shape_error() -> None:
    with pytest.raises(ShapeError) as info:
        get_shape("70b")
    assert str(info.value) == (
        "unknown model shape '70b'; known shapes: gpt-default, gpt-small, 125m, 350m, 1b, 7b, 13b"
    )
    with pytest.raises(ShapeError, match="hidden"):
        gpt_shape(2, 30, 4, 16)
    with pytest.raises(ShapeError, match="n_layer"):
        gpt_shape(0, 32, 4, 16)
    with pytest.raises(ShapeError, match="n_kv_head"):
        ModelShape("x", Family.LLAMA, 2, 64, 128, 8, 100, 16, n_kv_head=3)


# ---------------------------------------------------------------------------------------
# Per-block state (§8 first table)


def test_section_8_unblocked_mlp_weight() -> None:
    # "a 4096×11008 MLP weight carries 2·(4096² + 11008²) ≈ 276 M words of matrix state"
    shampoo = block_state(4096, 11008, "shampoo")
    assert shampoo.factors + shampoo.bases == 2 * (4096**2 + 11008**2) == 275_906_560
    assert (shampoo.factors + shampoo.bases) / (4096 * 11008) == pytest.approx(6.12, abs=0.01)
    assert shampoo.moments == 2 * 4096 * 11008  # M and the Adam graft V
    # SOAP's reference leaves the 11008 side unrotated (D_max = 10000): only 2·4096².
    soap = block_state(4096, 11008, "soap")
    assert soap.factors + soap.bases == 2 * 4096**2
    unlimited = block_state(4096, 11008, CostConfig(Optimizer.SOAP, max_precond_dim=None))
    assert unlimited.factors + unlimited.bases == 275_906_560
    # KL-Shampoo's reference rotates every side.
    kl = block_state(4096, 11008, "kl-shampoo")
    assert kl.factors + kl.bases == 275_906_560
    assert kl.moments == 4096 * 11008 + 4096 + 11008


def test_block_state_formulas_by_hand() -> None:
    a, b = 3, 5
    assert block_state(a, b, "adamw").total == 2 * 15
    assert block_state(a, b, "shampoo").total == 2 * (9 + 25) + 2 * 15
    no_graft = CostConfig(Optimizer.SHAMPOO, grafting=False)
    assert block_state(a, b, no_graft).total == 2 * (9 + 25) + 15
    assert block_state(a, b, "soap").total == 2 * (9 + 25) + 2 * 15
    assert block_state(a, b, "kl-shampoo").total == 2 * (9 + 25) + 15 + 8
    assert block_state_bytes(a, b, "kl-shampoo") == 4 * 91
    # One side beyond the limit: SOAP keeps only the other side's factor and basis.
    limited = CostConfig(Optimizer.SOAP, max_precond_dim=4)
    assert block_state(a, b, limited).total == 2 * 9 + 2 * 15
    assert preconditioned_dims(a, b, limited) == [3]
    assert preconditioned_dims(a, b, "adamw") == []


@pytest.mark.parametrize("optimizer", ["shampoo", "soap"])
def test_blocked_square_blocks_carry_16_bytes_per_parameter(optimizer: str) -> None:
    # 2(B² + B²) words per B×B block, mn/B² blocks: 4mn words = 16 B/param.
    shape = ModelShape("m", Family.LLAMA, 1, 4096, 8192, 32, 1024, 16)
    cfg = CostConfig(Optimizer(optimizer), block_size=1024)
    for m in shape.matrices():
        words = 0
        for blk in blocks_of(shape, 1024):
            if blk.matrix == m.name:
                state = block_state(blk.rows, blk.cols, cfg)
                words += blk.count * (state.factors + state.bases)
        assert 4 * words == 16 * m.numel * m.count, m.name


def test_blocked_7b_matrix_state_is_about_16_bytes_per_parameter() -> None:
    shape = get_shape("7b")
    state = model_state(shape, CostConfig(Optimizer.SOAP, block_size=1024))
    per_param = 4 * (state.factors + state.bases) / shape.matrix_parameters()
    # Ragged edge blocks (11008 and 32000 are not multiples of 1024) carry a little more,
    # since 2(a² + b²) ≥ 4ab.
    assert 16.0 <= per_param < 16.1
    # On top: M and V for every parameter, 8 B/param.
    assert state.moments == 2 * shape.parameters()


def test_adamw_is_8_bytes_per_parameter_whatever_the_blocking() -> None:
    for name in ("gpt-default", "7b"):
        shape = get_shape(name)
        for block in (None, 512):
            assert model_state_bytes(shape, CostConfig(Optimizer.ADAMW, block_size=block)) == (
                8 * shape.parameters()
            )


def test_blocking_with_b_at_least_the_largest_side_changes_nothing() -> None:
    shape = get_shape("gpt-small")
    for opt in Optimizer:
        unblocked = CostConfig(opt)
        huge = CostConfig(opt, block_size=10**6)
        assert model_state(shape, unblocked) == model_state(shape, huge)
        assert model_hot_path_flops(shape, unblocked) == model_hot_path_flops(shape, huge)
        assert model_refresh_flops(shape, unblocked) == model_refresh_flops(shape, huge)


# ---------------------------------------------------------------------------------------
# FLOPs (§8 second and third tables)


def test_hot_path_flops_by_hand() -> None:
    a, b = 128, 512
    ab = a * b
    assert block_hot_path_flops(a, b, "adamw") == E * ab
    assert block_hot_path_flops(a, b, "shampoo") == 2 * ab * (a + b) * 2 + E * ab
    assert block_hot_path_flops(a, b, "soap") == (2 + 4) * ab * (a + b) + E * ab
    assert block_hot_path_flops(a, b, "kl-shampoo") == 8 * ab * (a + b) + E * ab
    # SOAP with the 11008 side unrotated: statistics and rotations on the 4096 side only.
    ab = 4096 * 11008
    assert block_hot_path_flops(4096, 11008, "soap") == 6 * ab * 4096 + E * ab


def test_refresh_flops_by_hand() -> None:
    d = 1024
    assert eigh_flops(d) == 9 * d**3
    assert invroot_flops(d) == 11 * d**3
    assert basis_refresh_flops(d) == pytest.approx(4.7 * d**3)
    assert factor_refresh_flops(d, "shampoo") == 11 * d**3
    assert factor_refresh_flops(d, "soap") == factor_refresh_flops(d, Optimizer.KL_SHAMPOO)
    assert factor_refresh_flops(d, "adamw") == 0.0
    assert block_refresh_flops(128, 512, "shampoo") == 11 * (128**3 + 512**3)
    assert block_refresh_flops(128, 512, "soap") == pytest.approx(4.7 * (128**3 + 512**3))
    assert block_refresh_flops(4096, 11008, "soap") == pytest.approx(4.7 * 4096**3)
    assert block_refresh_flops(4096, 11008, "adamw") == 0.0


def test_model_refresh_flops_sum_the_blocks() -> None:
    shape = get_shape("gpt-default")
    # B = 128: every matrix splits into 128×128 blocks; count them by hand.
    # embedding 256×128 → 2, position 64×128 → 1 (64×128), per layer qkv 3, o 1, up 4, down 4.
    square_blocks = 2 + 4 * (3 + 1 + 4 + 4)
    expected = square_blocks * 2 * 11 * 128**3 + 11 * (64**3 + 128**3)
    assert model_refresh_flops(shape, CostConfig(Optimizer.SHAMPOO, block_size=128)) == expected


def test_fwd_bwd_flops() -> None:
    assert fwd_bwd_flops(6_738_415_616, 4096) == 6 * 6_738_415_616 * 4096
    with pytest.raises(ValueError):
        fwd_bwd_flops(-1, 10)


# ---------------------------------------------------------------------------------------
# Bytes and the roofline


def test_hot_path_bytes_by_hand() -> None:
    a, b = 64, 32
    ab = a * b
    # AdamW reads G, W, M, V and writes W, M, V.
    assert block_hot_path_bytes(a, b, "adamw") == Traffic(4 * 4 * ab, 4 * 3 * ab)
    # Shampoo: also reads L, R, L̃, R̃ and writes L, R.
    sq = a * a + b * b
    assert block_hot_path_bytes(a, b, "shampoo") == Traffic(
        4 * (4 * ab + 2 * sq), 4 * (3 * ab + sq)
    )
    # KL-Shampoo: no V, but the eigenvalue vectors d_L, d_R.
    assert block_hot_path_bytes(a, b, "kl-shampoo") == Traffic(
        4 * (3 * ab + (a + b) + 2 * sq), 4 * (2 * ab + (a + b) + sq)
    )


def test_model_hot_path_bytes_include_the_vectors() -> None:
    shape = get_shape("gpt-default")
    traffic = model_hot_path_bytes(shape, "adamw")
    assert traffic.read_bytes == 16 * shape.parameters()
    assert traffic.written_bytes == 12 * shape.parameters()
    assert traffic.total_bytes == 28 * shape.parameters()


def test_roofline_time() -> None:
    # Compute-bound: 1e12 FLOP at 1e12 FLOP/s = 1 s beats 1e9 B at 1e10 B/s = 0.1 s.
    assert roofline_time_s(1e12, 1e9, 1e12, 1e10) == 1.0
    # Memory-bound.
    assert roofline_time_s(1e9, 1e10, 1e12, 1e10) == 1.0
    assert roofline_time_s(0, 0, 1.0, 1.0) == 0.0
    for bad in [
        (1.0, 1.0, 0.0, 1.0),
        (1.0, 1.0, 1.0, -1.0),
        (-1.0, 1.0, 1.0, 1.0),
        (1.0, float("nan"), 1.0, 1.0),
    ]:
        with pytest.raises(ValueError):
            roofline_time_s(*bad)


def test_a_blocked_soap_step_of_7b_on_h100_is_compute_bound_in_fp32() -> None:
    # §7 keeps the optimizer's matmuls in fp32 (no TF32), so the peak is the 67 TFLOPS
    # FP32 rate: ≈ 8.2e13 hot-path FLOPs take ≈ 1.2 s, the ≈ 3.5e11 bytes ≈ 0.1 s.
    h100 = load_profile("h100-sxm")
    shape = get_shape("7b")
    cfg = CostConfig(Optimizer.SOAP, block_size=1024)
    flops, traffic = model_hot_path_flops(shape, cfg), model_hot_path_bytes(shape, cfg)
    peak, bw = h100.gpu.fp32_flops.value, h100.gpu.memory_bandwidth.value
    assert flops == pytest.approx(8.24e13, rel=0.01)
    assert traffic.total_bytes == pytest.approx(3.51e11, rel=0.01)
    t = roofline_time_s(flops, traffic.total_bytes, peak, bw)
    assert t == flops / peak > traffic.total_bytes / bw
    # AdamW has no matmuls: bandwidth-bound.
    adamw = model_hot_path_bytes(shape, "adamw").total_bytes
    t = roofline_time_s(model_hot_path_flops(shape, "adamw"), adamw, peak, bw)
    assert t == adamw / bw


# ---------------------------------------------------------------------------------------
# Blocks and configuration


def test_blocks_of_cut_like_section_1_2() -> None:
    shape = get_shape("7b")
    down = [b for b in blocks_of(shape, 4096) if b.matrix == "down"]
    # 4096 × 11008 with B = 4096: one row chunk, column chunks 4096, 4096, 2816.
    assert [(b.row, b.col, b.rows, b.cols, b.count) for b in down] == [
        (0, 0, 4096, 4096, 32),
        (0, 1, 4096, 4096, 32),
        (0, 2, 4096, 2816, 32),
    ]
    assert [(b.rows, b.cols) for b in blocks_of(shape, None) if b.matrix == "down"] == [
        (4096, 11008)
    ]
    with pytest.raises(ValueError, match="block_size"):
        blocks_of(shape, 0)


@settings(max_examples=40, deadline=None)
@given(
    block_size=st.one_of(st.none(), st.integers(16, 600)),
    name=st.sampled_from(["gpt-default", "gpt-small"]),
)
def test_blocks_cover_every_matrix_exactly(block_size: int | None, name: str) -> None:
    shape = get_shape(name)
    blocks = blocks_of(shape, block_size)
    assert sum(b.rows * b.cols * b.count for b in blocks) == shape.matrix_parameters()
    if block_size is not None:
        assert all(b.rows <= block_size and b.cols <= block_size for b in blocks)


def test_cost_config_validation_and_defaults() -> None:
    assert CostConfig(Optimizer.SOAP).rotation_limit == 10000
    assert CostConfig(Optimizer.KL_SHAMPOO).rotation_limit is None
    assert CostConfig("shampoo").optimizer is Optimizer.SHAMPOO  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match="optimizer: expected one of adamw, shampoo, soap, kl-shampoo"
    ):
        CostConfig("lion")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="block_size"):
        CostConfig(Optimizer.SOAP, block_size=-4)
    with pytest.raises(ValueError, match="max_precond_dim"):
        CostConfig(Optimizer.SHAMPOO, max_precond_dim=512)
    with pytest.raises(ValueError, match="block side"):
        block_state(0, 4, "soap")
