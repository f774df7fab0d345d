"""The byte-level GPT: shapes, initial loss, causality, tying, init and trainability."""

from __future__ import annotations

import math

import pytest
import torch

from asteria_bench.workload.model import GPT, Block, GPTConfig

torch.set_num_threads(1)

SMALL = GPTConfig(context=16, n_layer=2, n_head=2, n_embd=32)


def make_model(config: GPTConfig = SMALL, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(config)


def random_bytes(batch: int, time: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, time), generator=generator)


def test_default_config_is_the_documented_shape() -> None:
    config = GPTConfig()
    assert (config.vocab_size, config.context, config.n_layer) == (256, 64, 4)
    assert (config.n_head, config.n_embd, config.dropout, config.bias) == (4, 128, 0.0, True)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_embd": 30, "n_head": 4}, "n_embd"),
        ({"n_layer": 0}, "n_layer"),
        ({"n_head": -1}, "n_head"),
        ({"context": 0}, "context"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_config_rejects_bad_fields_by_name(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        GPTConfig(**kwargs)  # type: ignore[arg-type]


def test_forward_shapes_with_and_without_targets() -> None:
    model = make_model()
    idx = random_bytes(3, 10)
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 256)
    assert logits.dtype == torch.float32
    assert loss is None
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 10, 256)
    assert loss is not None and loss.shape == ()


def test_sequence_longer_than_context_is_rejected() -> None:
    with pytest.raises(ValueError, match="context"):
        make_model()(random_bytes(1, SMALL.context + 1))


def test_initial_loss_is_close_to_uniform_over_bytes() -> None:
    model = make_model(GPTConfig())
    idx = random_bytes(8, 64)
    targets = random_bytes(8, 64, seed=2)
    _, loss = model(idx, targets)
    assert loss is not None
    assert abs(loss.item() - math.log(256)) < 0.3


def test_loss_is_cross_entropy_over_bytes() -> None:
    model = make_model()
    idx, targets = random_bytes(2, 8), random_bytes(2, 8, seed=3)
    logits, loss = model(idx, targets)
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    expected = -log_probs.gather(-1, targets.unsqueeze(-1)).mean()
    assert loss is not None
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_changing_a_future_byte_leaves_earlier_logits_unchanged() -> None:
    model = make_model().eval()
    idx = random_bytes(2, SMALL.context)
    t = 9
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 256
    with torch.no_grad():
        before, _ = model(idx)
        after, _ = model(changed)
    torch.testing.assert_close(before[:, :t], after[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, t:], after[:, t:])


def test_head_is_tied_to_the_token_embedding() -> None:
    model = make_model()
    assert model.lm_head.weight is model.wte.weight
    names = [name for name, _ in model.named_parameters()]
    assert "lm_head.weight" not in names


def test_parameter_count_matches_an_independent_formula() -> None:
    c, v, t, n = SMALL.n_embd, SMALL.vocab_size, SMALL.context, SMALL.n_layer
    per_block = 2 * c + (3 * c * c + 3 * c) + (c * c + c) + 2 * c + (4 * c * c + 4 * c)
    per_block += 4 * c * c + c
    expected = v * c + t * c + n * per_block + 2 * c
    model = make_model()
    assert model.num_parameters() == expected
    assert model.shape_summary() == {
        "n_layer": n,
        "n_head": SMALL.n_head,
        "n_embd": c,
        "context": t,
        "vocab_size": v,
        "parameters": expected,
    }


def test_no_bias_variant_has_no_bias_parameters() -> None:
    model = make_model(GPTConfig(context=8, n_layer=1, n_head=2, n_embd=16, bias=False))
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    logits, _ = model(random_bytes(1, 8))
    assert logits.shape == (1, 8, 256)


def test_parameter_order_is_fixed() -> None:
    names = [name for name, _ in make_model().named_parameters()]
    assert names[:4] == ["wte.weight", "wpe.weight", "blocks.0.ln_1.weight", "blocks.0.ln_1.bias"]
    assert names[4:8] == [
        "blocks.0.attn.c_attn.weight",
        "blocks.0.attn.c_attn.bias",
        "blocks.0.attn.c_proj.weight",
        "blocks.0.attn.c_proj.bias",
    ]
    assert names[-2:] == ["ln_f.weight", "ln_f.bias"]


def test_same_seed_gives_identical_weights_and_another_seed_does_not() -> None:
    first, second, other = make_model(seed=5), make_model(seed=5), make_model(seed=6)
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(first.wte.weight, other.wte.weight)


def test_init_follows_nanogpt_scales() -> None:
    config = GPTConfig(n_layer=4, n_embd=128)
    model = make_model(config)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    block = model.blocks[0]
    assert isinstance(block, Block)
    assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual = 0.02 / math.sqrt(2 * config.n_layer)
    assert block.attn.c_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert torch.count_nonzero(block.mlp.c_fc.bias) == 0
    assert torch.all(block.ln_1.weight == 1)


def test_a_few_adamw_steps_reduce_the_loss_on_a_fixed_batch() -> None:
    model = make_model()
    idx, targets = random_bytes(4, SMALL.context), random_bytes(4, SMALL.context, seed=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        _, loss = model(idx, targets)
        assert loss is not None
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] - 0.5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    model = make_model().eval()
    idx = random_bytes(2, SMALL.context)
    with torch.no_grad():
        cpu_logits, _ = model(idx)
        cuda_logits, _ = model.cuda()(idx.cuda())
    torch.testing.assert_close(cuda_logits.cpu(), cpu_logits, rtol=1e-3, atol=1e-3)
