"""Batched training augmentation on float face tensors (N, 1, H, W) in [0, 1].

All geometric changes (random resized crop, horizontal flip, small rotation) are folded into one
affine matrix per image and applied with a single ``grid_sample``, so a batch costs one kernel
call rather than a Python loop over images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Strength of each augmentation; the defaults are the usual FER2013 recipe."""

    scale: tuple[float, float] = (0.8, 1.0)  # area fraction kept by the random resized crop
    ratio: tuple[float, float] = (0.9, 1.1)  # aspect ratio range of the crop
    flip: float = 0.5  # probability of a horizontal flip
    rotation: float = 10.0  # max rotation in degrees, either way
    brightness: float = 0.2  # brightness factor drawn from 1 +- this
    contrast: float = 0.2  # contrast factor drawn from 1 +- this
    erase: float = 0.25  # probability of random erasing
    erase_area: tuple[float, float] = (0.02, 0.15)  # area fraction of an erased rectangle


def _uniform(n: int, lo: float, hi: float, device: torch.device, gen: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=gen) * (hi - lo) + lo


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """Randomly augment a batch ``x`` (N, C, H, W), values in [0, 1]; returns a new tensor."""
    n, _, h, w = x.shape
    dev = x.device
    # Random resized crop: side lengths as fractions of the image, and a centre that keeps the crop inside.
    area = _uniform(n, *cfg.scale, dev, gen)
    log_ratio = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), dev, gen)
    ratio = torch.exp(log_ratio)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (torch.rand(n, device=dev, generator=gen) * 2 - 1) * (1 - sx)
    ty = (torch.rand(n, device=dev, generator=gen) * 2 - 1) * (1 - sy)
    angle = _uniform(n, -cfg.rotation, cfg.rotation, dev, gen) * (math.pi / 180)
    flip = torch.where(torch.rand(n, device=dev, generator=gen) < cfg.flip, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3, device=dev)
    # Output grid -> input coordinates: flip, then rotate, then scale into the crop and shift to its centre.
    theta[:, 0, 0] = sx * cos * flip
    theta[:, 0, 1] = -sx * sin
    theta[:, 1, 0] = sy * sin * flip
    theta[:, 1, 1] = sy * cos
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    bright = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, dev, gen).view(n, 1, 1, 1)
    contrast = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, dev, gen).view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean) * bright

    if cfg.erase > 0:
        # One rectangle per selected image, filled with noise, built as a mask so the batch stays vectorised.
        e_area = _uniform(n, *cfg.erase_area, dev, gen) * h * w
        e_ratio = torch.exp(_uniform(n, math.log(0.5), math.log(2.0), dev, gen))
        eh = torch.sqrt(e_area * e_ratio).clamp(1, h - 1)
        ew = torch.sqrt(e_area / e_ratio).clamp(1, w - 1)
        y0 = torch.rand(n, device=dev, generator=gen) * (h - eh)
        x0 = torch.rand(n, device=dev, generator=gen) * (w - ew)
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        inside = (ys >= y0.view(n, 1, 1)) & (ys < (y0 + eh).view(n, 1, 1)) & (xs >= x0.view(n, 1, 1)) & (xs < (x0 + ew).view(n, 1, 1))
        chosen = (torch.rand(n, device=dev, generator=gen) < cfg.erase).view(n, 1, 1)
        mask = (inside & chosen).unsqueeze(1)
        out = torch.where(mask, torch.rand(out.shape, device=dev, generator=gen), out)
    return out.clamp_(0.0, 1.0)
