"""Training the framing refiner (``emotion.models.framer``) on FER2013 train faces.

Each face is cut from its own 48x48 image a few times with a random similarity drawn over ``--frame-jitter``'s
ranges (``emotion.data.augment.FRAME_*``: the measured misses of the app's crop), and the network learns to
predict that similarity from the crop's inner disk. Faces never appear in frames here, and the disk stays inside
each face's square, so the network learns from the face alone what it must do in real photos. The faces that
``train --val-split --split-seed`` holds out are left out, so networks calibrated or judged on them meet a
refiner that never saw them either; they report its error after each epoch.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ..data.augment import FRAME_ROTATION, FRAME_SHIFT, FRAME_SIDE
from ..data.dataset import split_train_val
from ..data.splits import load_split
from ..models.checkpoint import write_atomic
from ..models.framer import FACE, FORMAT, ROTATION_UNIT, FramerNet, crop_to_face, disk_input, to_units

log = logging.getLogger(__name__)


@dataclass
class FramerTrainConfig:
    """How the refiner is trained; the defaults made ``assets/framer/framer.pt``."""

    epochs: int = 8  # passes over the jittered crops (the error stops falling after about 6)
    batch_size: int = 256  # crops per step
    lr: float = 3e-3  # peak learning rate of the one-cycle schedule
    weight_decay: float = 1e-4  # AdamW weight decay
    crops_per_face: int = 3  # random framings drawn per training face, once, before training
    width: int = 24  # channels of the first conv stage
    val_split: float = 0.05  # share of each class left out, as train --val-split (the emotion networks' carve-out)
    split_seed: int = 0  # seed of that share, as train --split-seed
    seed: int = 0  # seeds the framings, the initial weights and the batch order
    max_faces: int | None = None  # train on at most this many faces (quick tests); None: all

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        for name in ("epochs", "batch_size", "crops_per_face", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"framer {name} must be a whole number of at least 1, got {value!r}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise ValueError(f"framer lr must be in (0, 1], got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and 0 <= self.weight_decay < 1):
            raise ValueError(f"framer weight_decay must be in [0, 1), got {self.weight_decay!r}")
        if not 0 <= self.val_split < 1:
            raise ValueError(f"framer val_split must be in [0, 1), got {self.val_split!r}")


def jittered_crops(images: np.ndarray, per_face: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``per_face`` random framings of each (48, 48) uint8 face: the crops (N * per_face, 48, 48) and the
    network's targets (N * per_face, 4), the framing of each crop in ``to_units``."""
    crops, targets = [], []
    lo, hi = math.log(FRAME_SIDE[0]), math.log(FRAME_SIDE[1])
    for face in images:
        for _ in range(per_face):
            framing = (
                rng.uniform(lo, hi),
                rng.uniform(-FRAME_ROTATION, FRAME_ROTATION),
                *rng.uniform(-FRAME_SHIFT, FRAME_SHIFT, 2),
            )
            m = crop_to_face(*framing)
            m[:, 2] += m[:, :2] @ np.array([0.5, 0.5]) - 0.5  # OpenCV puts pixel centres at integers
            flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # m maps crop -> face, the direction warpAffine samples
            crops.append(cv2.warpAffine(face, m, (FACE, FACE), flags=flags, borderMode=cv2.BORDER_REFLECT_101))
            targets.append(to_units(*framing))
    return np.stack(crops), np.asarray(targets, dtype=np.float32)


def framing_errors(net: FramerNet, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """RMS errors of ``net`` on inputs ``x`` with targets ``y``: log scale, tilt (degrees), shift (px)."""
    net.eval()
    with torch.no_grad():
        e = (net(x) - y).numpy()
    return {
        "log_scale_rms": float(np.sqrt(np.mean(e[:, 0] ** 2))),
        "tilt_rms_deg": float(np.sqrt(np.mean(e[:, 1] ** 2)) * ROTATION_UNIT),
        "shift_rms_px": float(np.sqrt(np.mean(e[:, 2] ** 2 + e[:, 3] ** 2)) * FRAME_SHIFT * FACE / 2),
    }


def train_framer(data: str | Path, out: str | Path, cfg: FramerTrainConfig | None = None) -> dict:
    """Train a refiner on the train split of ``data`` and write it to ``out``; returns its metrics."""
    cfg = cfg or FramerTrainConfig()
    cfg.check()
    train, held = load_split(data, "train"), None
    if cfg.val_split:
        train, held = split_train_val(train, cfg.val_split, cfg.split_seed)
    rng = np.random.default_rng(cfg.seed)
    faces = train.images.numpy().reshape(-1, FACE, FACE)
    if cfg.max_faces is not None:
        faces = faces[rng.permutation(len(faces))[: cfg.max_faces]]
    crops, targets = jittered_crops(faces, cfg.crops_per_face, rng)
    x, y = disk_input(crops), torch.from_numpy(targets)
    check_faces = held.images.numpy().reshape(-1, FACE, FACE) if held is not None else faces[:1000]
    check_crops, check_targets = jittered_crops(check_faces, 1, np.random.default_rng(cfg.seed + 1))
    xv, yv = disk_input(check_crops), torch.from_numpy(check_targets)
    log.info(
        "framer: %d crops of %d faces; checked on %d %s faces",
        len(x),
        len(faces),
        len(xv),
        "held-out" if held is not None else "training",
    )

    torch.manual_seed(cfg.seed)
    net = FramerNet(cfg.width)
    steps = max(1, len(x) // cfg.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps)
    errors = framing_errors(net, xv, yv)
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        start, order = time.perf_counter(), torch.randperm(len(x))
        for step in range(steps):
            batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            loss = nn.functional.smooth_l1_loss(net(x[batch]), y[batch], beta=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        errors = framing_errors(net, xv, yv)
        log.info(
            "framer epoch %d/%d (%.0f s): loss %.4f; %s",
            epoch,
            cfg.epochs,
            time.perf_counter() - start,
            loss.item(),
            ", ".join(f"{k} {v:.3f}" for k, v in errors.items()),
        )
    prior = framing_errors(_ZeroNet(), xv, yv)  # what predicting "framed as FER2013" for every crop would miss by
    metrics = {
        "faces": len(faces),
        "crops": len(x),
        "check_faces": len(xv),
        **errors,
        **{f"prior_{k}": v for k, v in prior.items()},
    }
    save_framer(out, net, cfg, metrics)
    return metrics


class _ZeroNet(FramerNet):
    """Predicts no correction: the baseline the refiner's errors are compared with."""

    def __init__(self) -> None:
        super().__init__(width=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 4)


def save_framer(path: str | Path, net: FramerNet, cfg: FramerTrainConfig, metrics: dict) -> None:
    """Write the refiner and its description (config, metrics) to ``path`` atomically."""
    weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    write_atomic(path, {"format": FORMAT, "version": 1, "config": asdict(cfg), "metrics": metrics, "model": weights})
