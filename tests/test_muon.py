"""Muon on the hidden matrices, AdamW on the rest: the split, the schedule, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli

from asteria_bench.muon import MuonWithAdamW, muon_parameter_groups
from asteria_bench.optimizers import build_optimizer, optimizer_parameter_groups
from asteria_bench.workload.model import GPT, GPTConfig
from tests.samples import TINY_RUN

needs_muon = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch without Muon")
SMALL = GPTConfig(n_layer=2, n_head=2, n_embd=16, context=8)


def small_model() -> GPT:
    torch.manual_seed(0)
    return GPT(SMALL)


def test_groups_put_only_hidden_matrices_on_muon() -> None:
    model = small_model()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = muon_parameter_groups(model, 0.1)
    muon = [names[id(p)] for g in groups if g["muon"] for p in g["params"]]
    adamw = [names[id(p)] for g in groups if not g["muon"] for p in g["params"]]
    assert muon and all(n.startswith("blocks.") and n.endswith(".weight") for n in muon)
    assert {"wte.weight", "wpe.weight"} <= set(adamw)  # embeddings and the tied head
    assert not [n for n in adamw if n.startswith("blocks.") and n.endswith("fc.weight")]
    assert sorted(muon + adamw) == sorted(names.values())  # every parameter, once
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    assert all(p.dim() == 1 for g in no_decay for p in g["params"])


@needs_muon
def test_step_moves_every_parameter_and_schedule_reaches_both_parts() -> None:
    model = small_model()
    groups = optimizer_parameter_groups("muon", model, 0.1)
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, momentum=0.95)
    optimizer = build_optimizer("muon", groups, hp, execution=None)  # type: ignore[arg-type]
    assert isinstance(optimizer, MuonWithAdamW)
    inner = [*optimizer.muon.param_groups, *optimizer.adamw.param_groups]
    assert all(a is b for a, b in zip(optimizer.param_groups, inner, strict=True))
    for group in optimizer.param_groups:
        group["lr"] = 0.5e-2  # a scheduler's edit reaches the inner optimizers
    assert {g["lr"] for g in inner} == {0.5e-2}
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(0, 256, (2, 8))
    _, loss = model(x, x)
    assert loss is not None
    loss.backward()
    optimizer.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert all(moved)
    assert len(optimizer.state) == len(before)  # both parts' state, one entry per param
    state = optimizer.state_dict()
    assert set(state) == {"muon", "adamw"}
    optimizer.load_state_dict(state)


@needs_muon
def test_run_optimizer_muon(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = run_cli(["run", "--optimizer", "muon", "--steps", "3", "--out", str(out), *TINY_RUN])
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["optim"]["name"] == "muon" and config["optim"]["momentum"] == 0.95


def test_torch_without_muon_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    out = tmp_path / "run"
    rc = run_cli(["run", "--optimizer", "muon", "--steps", "3", "--out", str(out), *TINY_RUN])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--optimizer muon" in err[0] and "torch >= 2.9" in err[0], err
    assert not out.exists() and not out.with_name("run.incomplete").exists()
    assert list(tmp_path.iterdir()) == []
