"""The optimiser's set-up for both stages: the warm-up + cosine learning-rate schedule and AdamW's
parameter groups."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from reroute.demo.training.config import TrainConfig


def cosine_lr(step: int, steps: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then a cosine decay to ``floor * peak`` at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Stage 2's learning rate at ``step``."""
    return cosine_lr(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio)


def param_groups(modules: Iterable[torch.nn.Module], weight_decay: float, qk_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: no decay on biases, norms and embeddings; the decoder's query/key projections
    may take a larger step (``qk_lr_scale``): sharp content-based attention needs them to grow
    several times their initial scale, which Adam's bounded steps make the slowest thing to learn.
    Each group's ``lr_scale`` multiplies the scheduled learning rate."""
    groups: dict[tuple[bool, bool], list] = {}
    seen = set()
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            decay = p.ndim >= 2 and "embed" not in name
            qk = "language_model" in name and ("q_proj" in name or "k_proj" in name)
            groups.setdefault((decay, qk), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": qk_lr_scale if qk else 1.0}
        for (decay, qk), params in groups.items()
    ]
