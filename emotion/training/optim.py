"""Optimisation pieces of the training loop: AdamW parameter groups, the learning-rate schedule,
CLIP's frozen and unfrozen phases, and the moving average of the weights."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from ..models.networks import ClipEmotionModel
from .config import TrainConfig


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate: linear warmup to 1, then cosine down to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: adapter/CNN and unfreezable CLIP parameters, each split into decay and no-decay."""

    def split(params: list[nn.Parameter], lr: float, name: str) -> list[dict]:
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # biases, norm weights, and CLIP's class embedding
        return [
            g
            for g in (
                {"params": decay, "lr": lr, "weight_decay": cfg.weight_decay, "name": name},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}_no_decay"},
            )
            if g["params"]
        ]

    if isinstance(model, ClipEmotionModel):
        groups = split(list(model.adapter.parameters()), cfg.lr, "adapter")
        if cfg.unfreeze_epoch > 0 or cfg.unfreeze_blocks > 0:
            groups += split(model.unfreezable_parameters(cfg.unfreeze_blocks), cfg.clip_lr, "clip")
        return groups
    return split(list(model.parameters()), cfg.lr, "model")


def set_phase(model: nn.Module, cfg: TrainConfig, epoch: int) -> str:
    """Freeze or unfreeze CLIP for ``epoch`` (1-based); returns the phase name."""
    if not isinstance(model, ClipEmotionModel):
        return "full"
    # unfreeze_epoch <= 0 means "never frozen": the chosen blocks train from the first epoch.
    frozen = epoch < cfg.unfreeze_epoch if cfg.unfreeze_epoch > 0 else False
    model.encoder.requires_grad_(False)
    if not frozen:
        for p in model.unfreezable_parameters(cfg.unfreeze_blocks):
            p.requires_grad_(True)
    return "frozen" if frozen else "unfrozen"


class WeightEMA:
    """Exponential moving average of a model's weights and buffers (BatchNorm statistics included).

    The decay ramps up as ``min(decay, (1 + t) / (10 + t))`` so the average is not dominated by the
    random initial weights in short runs.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self._pairs = list(zip(self.module.state_dict().values(), model.state_dict().values(), strict=False))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after each optimizer step)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        floats = [(e, m) for e, m in self._pairs if e.dtype.is_floating_point]
        torch._foreach_lerp_([e for e, _ in floats], [m for _, m in floats], 1.0 - decay)
        for e, m in self._pairs:
            if not e.dtype.is_floating_point:
                e.copy_(m)
