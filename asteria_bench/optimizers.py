"""Build an optimizer by name from a resolved hyperparameter mapping."""

from __future__ import annotations

from typing import Any

import torch

from runtime.execution import ExecutionConfig


def build_optimizer(
    name: str, params: Any, hp: dict[str, Any], execution: ExecutionConfig
) -> torch.optim.Optimizer:
    """``hp`` is ``config.resolved_optimizer``'s output for ``name``."""
    betas = (hp["beta1"], hp["beta2"])
    if name == "muon":
        from asteria_bench.muon import MuonWithAdamW

        return MuonWithAdamW(
            params,
            lr=hp["lr"],
            weight_decay=hp["weight_decay"],
            momentum=hp["momentum"],
            betas=betas,
            eps=hp["eps"],
        )
    if name == "adamw":
        return torch.optim.AdamW(
            params, lr=hp["lr"], betas=betas, eps=hp["eps"], weight_decay=hp["weight_decay"]
        )
    if name == "soap":
        from runtime.optim.soap import SOAP

        return SOAP(
            params,
            lr=hp["lr"],
            betas=betas,
            shampoo_beta=hp.get("shampoo_beta"),
            eps=hp["eps"],
            weight_decay=hp["weight_decay"],
            precondition_frequency=hp["precondition_frequency"],
            max_precond_dim=hp["max_precond_dim"],
            block_size=hp.get("block_size"),
            normalize_grads=hp["normalize_grads"],
            execution=execution,
        )
    if name == "shampoo":
        from runtime.optim.shampoo import Shampoo

        return Shampoo(
            params,
            lr=hp["lr"],
            betas=betas,
            eps=hp["eps"],
            weight_decay=hp["weight_decay"],
            block_size=hp.get("block_size"),
            precondition_frequency=hp["precondition_frequency"],
            start_preconditioning_step=hp.get("start_preconditioning_step"),
            root_exponent=hp["root_exponent"],
            grafting=hp["grafting"],
            grafting_beta2=hp["grafting_beta2"],
            execution=execution,
        )
    if name == "kl-shampoo":
        from runtime.optim.kl_shampoo import KLShampoo

        return KLShampoo(
            params,
            lr=hp["lr"],
            betas=betas,
            shampoo_beta=hp.get("shampoo_beta"),
            eps=hp["eps"],
            weight_decay=hp["weight_decay"],
            precondition_frequency=hp["precondition_frequency"],
            eigenvalue_init=hp["eigenvalue_init"],
            max_precond_dim=hp.get("max_precond_dim"),
            block_size=hp.get("block_size"),
            execution=execution,
        )
    raise ValueError(f"unknown optimizer {name!r}")


def optimizer_parameter_groups(
    name: str, model: torch.nn.Module, weight_decay: float
) -> list[dict[str, Any]]:
    """The parameter groups ``build_optimizer(name, ...)`` expects for ``model``."""
    if name == "muon":
        from asteria_bench.muon import muon_parameter_groups, require_muon

        require_muon()
        return muon_parameter_groups(model, weight_decay)
    return parameter_groups(model, weight_decay)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices, not biases and norm gains (the usual GPT recipe)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
