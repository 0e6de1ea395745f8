"""Batched training augmentation on float face tensors (N, 1, H, W) in [0, 1].

All geometric changes (random resized crop, horizontal flip, small rotation) are folded into one
affine matrix per image and applied with a single ``grid_sample``, so a batch costs one kernel
call rather than a Python loop over images. ``frame_jitter`` frames a share of the faces the way the app's
face detector crops them from camera frames (looser or tighter, off-centre, tilted), so the networks learn
the crops users give them, not only FER2013's own. ``mix_batch`` adds mixup or CutMix, which also mixes
the labels, so the trainer weighs the loss of both label sets. ``detector_framing`` cuts a share of the faces
exactly as the app's detector once framed them in a frame (``framings.py``). ``surround`` shows something other than the
face where a crop reaches past it (a flat wall or part of another face), instead of the face's reflected borders.
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
    mixup: float = 0.0  # >0: mixup, blending two faces with a Beta(a, a) weight (0 = off)
    cutmix: float = 0.0  # >0: CutMix, pasting a box of another face, its area from Beta(a, a) (0 = off)
    mix_prob: float = 0.5  # share of batches mixed when mixup or CutMix is on (one of them at random if both)
    frame_jitter: float = 0.0  # share of faces framed like the detector's crops in frames (FRAME_* below; 0 = off)
    surround: float = 0.0  # share of faces whose crop, where it reaches past the face, shows foreign surroundings
    detector_framing: float = 0.0  # share of faces cut with a framing the app's detector once gave them (framings.py)


# How the app's aligned crop of a face found in a camera frame differs from the face's own FER2013 crop, measured
# on train faces by scripts/measure_crop_error.py (the frame benchmark's frames, BlazeFace; these constants come
# from a first draw of 453 faces, and --faces 1500 --seed 123 (1,099 found) agrees): the crop's side over the
# face's side has 5th-95th percentiles 0.72-1.28, the face centre lands within about +-5 of 48 px, and the tilt
# left over spreads +-23 degrees (FER2013's own tilt included, which the crop levels).
FRAME_SIDE = (0.73, 1.3)  # crop side / face side, drawn log-uniformly; above 1 the face's borders are reflected
FRAME_SHIFT = 0.2  # crop centre offset, drawn uniformly up to this fraction of the half side (about 5 px of 48)
FRAME_ROTATION = 20.0  # max tilt in degrees, either way


def _uniform(n: int, lo: float, hi: float, device: torch.device, gen: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=gen) * (hi - lo) + lo


def _frame_jitter(
    share: float, ratio: torch.Tensor, crop: tuple[torch.Tensor, ...], gen: torch.Generator | None
) -> tuple[torch.Tensor, ...]:
    """Replace the crop (sx, sy, tx, ty, angle in degrees) of a random ``share`` of the faces by a detector-like
    framing: side from ``FRAME_SIDE`` (with the crop's aspect ``ratio``), shift up to ``FRAME_SHIFT``, tilt up
    to ``FRAME_ROTATION``."""
    n, dev = ratio.shape[0], ratio.device
    side = torch.exp(_uniform(n, math.log(FRAME_SIDE[0]), math.log(FRAME_SIDE[1]), dev, gen))
    framed = (
        side * torch.sqrt(ratio),
        side / torch.sqrt(ratio),
        _uniform(n, -FRAME_SHIFT, FRAME_SHIFT, dev, gen),
        _uniform(n, -FRAME_SHIFT, FRAME_SHIFT, dev, gen),
        _uniform(n, -FRAME_ROTATION, FRAME_ROTATION, dev, gen),
    )
    pick = torch.rand(n, device=dev, generator=gen) < share
    return tuple(torch.where(pick, new, old) for new, old in zip(framed, crop, strict=True))


def _foreign_surroundings(
    x: torch.Tensor, out: torch.Tensor, grid: torch.Tensor, share: float, gen: torch.Generator | None
) -> torch.Tensor:
    """``out`` with what its crop shows beyond the face's own 48x48 (where ``grid`` leaves [-1, 1]) replaced, for a
    random ``share`` of the faces, by something that is not this face: a flat grey (a wall), or a twice-zoomed patch
    of another face of the batch (a busy scene). A camera frame shows hair, ears, neck and room there, which
    FER2013's crops never do; reflected borders alone teach the networks that the face goes on."""
    n, dev = x.shape[0], x.device
    outside = (grid.abs() > 1).any(-1, keepdim=True).permute(0, 3, 1, 2)  # (N, 1, H, W)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = theta[:, 1, 1] = 0.5
    theta[:, :, 2] = _uniform(2 * n, -0.5, 0.5, dev, gen).view(n, 2)
    other = torch.roll(x, 1, dims=0)  # each face's neighbour in the (shuffled) batch
    patch = F.grid_sample(other, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    flat = _uniform(n, 0.1, 0.9, dev, gen).view(n, 1, 1, 1).expand_as(patch)
    fill = torch.where((torch.rand(n, device=dev, generator=gen) < 0.5).view(n, 1, 1, 1), flat, patch)
    chosen = (torch.rand(n, device=dev, generator=gen) < share).view(n, 1, 1, 1)
    return torch.where(chosen & outside, fill, out)


def _recorded_framing(
    theta: torch.Tensor, framings: torch.Tensor, flip: torch.Tensor, share: float, gen: torch.Generator | None
) -> torch.Tensor:
    """``theta`` with a random ``share`` of the faces cut by one of their recorded detector framings (``framings``
    (N, K, 2, 3), NaN where a face has none; see ``framings.load_framings``), mirrored where ``flip`` is -1."""
    n = framings.shape[0]
    dev = theta.device
    framings = framings.to(dev)
    has = torch.isfinite(framings).flatten(2).all(dim=2)  # (N, K): which of its framings each face has
    # One of the framings the face has (each as likely); a face with none draws any and keeps its random crop.
    pick_k = torch.multinomial((has | ~has.any(1, keepdim=True)).float(), 1, generator=gen).squeeze(1)
    recorded = framings[torch.arange(n, device=dev), pick_k].clone()
    recorded[:, :, 0] *= flip.view(n, 1)  # mirror the output's x, as the random crop does
    usable = has[torch.arange(n, device=dev), pick_k]
    chosen = usable & (torch.rand(n, device=dev, generator=gen) < share)
    return torch.where(chosen.view(n, 1, 1), torch.nan_to_num(recorded), theta)


def augment(
    x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None, framings: torch.Tensor | None = None
) -> torch.Tensor:
    """Randomly augment a batch ``x`` (N, C, H, W), values in [0, 1]; returns a new tensor. ``framings`` (N, K, 2,
    3) are the faces' recorded detector framings, used for ``cfg.detector_framing`` of them."""
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
    angle = _uniform(n, -cfg.rotation, cfg.rotation, dev, gen)
    if cfg.frame_jitter > 0:
        sx, sy, tx, ty, angle = _frame_jitter(cfg.frame_jitter, ratio, (sx, sy, tx, ty, angle), gen)
    angle = angle * (math.pi / 180)
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
    if framings is not None and cfg.detector_framing > 0:
        theta = _recorded_framing(theta, framings, flip, cfg.detector_framing, gen)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if cfg.surround > 0:
        out = _foreign_surroundings(x, out, grid, cfg.surround, gen)

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
        inside = (
            (ys >= y0.view(n, 1, 1))
            & (ys < (y0 + eh).view(n, 1, 1))
            & (xs >= x0.view(n, 1, 1))
            & (xs < (x0 + ew).view(n, 1, 1))
        )
        chosen = (torch.rand(n, device=dev, generator=gen) < cfg.erase).view(n, 1, 1)
        mask = (inside & chosen).unsqueeze(1)
        out = torch.where(mask, torch.rand(out.shape, device=dev, generator=gen), out)
    return out.clamp_(0.0, 1.0)


def mix_batch(x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup or CutMix on a batch: returns the mixed images, the partner labels and ``lam``, the weight of ``y``.
    ``y`` may be any per-image tensor: the trainer passes batch positions, so it learns each face's partner.

    The loss is ``lam * CE(logits, y) + (1 - lam) * CE(logits, partner)``. A batch left unmixed (see
    ``mix_prob``) comes back as ``(x, y, 1.0)``. Draws from torch's global generator, which the trainer
    seeds per epoch so a resumed run mixes the same way.
    """
    kinds = [(kind, alpha) for kind, alpha in (("mixup", cfg.mixup), ("cutmix", cfg.cutmix)) if alpha > 0]
    if not kinds or torch.rand(()).item() >= cfg.mix_prob:
        return x, y, 1.0
    kind, alpha = kinds[int(torch.randint(len(kinds), ()).item())]
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], device=x.device)
    if kind == "mixup":
        return x * lam + x[perm] * (1 - lam), y[perm], lam
    h, w = x.shape[-2:]
    # A box of area (1 - lam), centred anywhere; clipping at the border shrinks it, so lam is recomputed.
    bh, bw = h * math.sqrt(1 - lam), w * math.sqrt(1 - lam)
    cy, cx = torch.rand(()).item() * h, torch.rand(()).item() * w
    y0, y1 = int(max(cy - bh / 2, 0)), int(min(cy + bh / 2, h))
    x0, x1 = int(max(cx - bw / 2, 0)), int(min(cx + bw / 2, w))
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    return out, y[perm], 1 - (y1 - y0) * (x1 - x0) / (h * w)
