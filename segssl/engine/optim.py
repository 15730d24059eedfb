"""Optimizers and learning-rate schedules.

Schedules are pure functions of (step, max_steps), wrapped in ``LambdaLR``: a resumed run
with a larger ``train.max_steps`` simply stretches the schedule instead of failing.
"""
from __future__ import annotations

import math

import torch

from ..config import OptimConfig
from ..methods.base import OptimizerSpec


def lr_factor(kind: str, step: int, total: int, warmup: float = 0.3, power: float = 0.9) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total`` steps."""
    t = min(max(step / max(total, 1), 0.0), 1.0)
    if kind == "constant":
        return 1.0
    if kind == "poly":
        return (1.0 - t) ** power
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if kind == "onecycle":  # cosine rise from peak/25, cosine fall to peak/25e4 (PyTorch's OneCycleLR shape)
        start, end = 1 / 25, 1 / 25e4
        if warmup > 0 and t < warmup:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * t / warmup))
        u = (t - warmup) / max(1 - warmup, 1e-8)
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * u))
    raise ValueError(f"unknown scheduler '{kind}'")


def build_optimizer(spec: OptimizerSpec, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in spec.params if p.requires_grad]
    name = spec.name or cfg.name
    lr = spec.lr if spec.lr is not None else cfg.lr
    weight_decay = spec.weight_decay if spec.weight_decay is not None else cfg.weight_decay
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=spec.betas or (0.9, 0.999))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=spec.betas or (0.9, 0.999))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=cfg.momentum, nesterov=False)
    raise ValueError(f"unknown optimizer '{name}'")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int, schedule: bool) -> torch.optim.lr_scheduler.LambdaLR:
    kind = cfg.scheduler if schedule else "constant"
    holder = {"total": max_steps}

    def factor(step: int) -> float:
        return lr_factor(kind, step, holder["total"], cfg.warmup, cfg.poly_power)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scheduler.total_steps = holder  # type: ignore[attr-defined]  # resume may stretch it
    return scheduler
