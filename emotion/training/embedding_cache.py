"""CLIP's frozen phase: embed every face once with the frozen encoder, so the adapter trains on vectors.

``embedding_cache`` keeps the embeddings in the run folder (``embeddings.pt``), keyed by everything they
depend on, so a resumed run reuses them; under ``torchrun`` each process embeds a share and gathers the rest.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from ..data.dataset import FaceDataset, faces_to_input
from ..models.networks import ClipEmotionModel
from ..utils.runtime import autocast_for
from .config import TrainConfig
from .distributed import Dist

log = logging.getLogger(__name__)


@torch.inference_mode()
def embed(
    model: ClipEmotionModel,
    preprocess: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype | None,
    d: Dist,
    flip: bool = False,
    batch: int = 128,
) -> torch.Tensor:
    """CLIP embeddings of every image, each process embedding a share and gathering the rest."""
    mine = images[d.rank :: d.world]
    out = []
    for i in range(0, len(mine), batch):
        x = faces_to_input(mine[i : i + batch], device)
        if flip:
            x = x.flip(-1)
        with autocast_for(device, dtype):
            out.append(model.embed(preprocess(x)).float())
    local = torch.cat(out) if out else torch.zeros(0, model.adapter[0].in_features, device=device)
    if d.world == 1:
        return local.cpu()
    size = math.ceil(len(images) / d.world)
    padded = torch.zeros(size, local.shape[1], device=device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(d.world)]
    dist.all_gather(parts, padded)
    full = torch.empty(len(images), local.shape[1])
    for r, part in enumerate(parts):
        n = len(images[r :: d.world])
        full[r :: d.world] = part[:n].cpu()
    return full


def embedding_cache(
    model: ClipEmotionModel,
    preprocess: nn.Module,
    train: FaceDataset,
    val: FaceDataset,
    cfg: TrainConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    d: Dist,
) -> dict:
    """Frozen-encoder embeddings of train (plain and flipped) and val, kept in out/ so a resume reuses them."""
    key = {
        "model": cfg.model.to_dict(),
        "weights": cfg.clip_weights or cfg.model.pretrained,
        "train": len(train),
        "flip": cfg.cache_flip,
        "val": len(val),
        "data": cfg.data,
        "val_split": cfg.val_split,
        "max_images": cfg.max_images,
        "seed": cfg.seed,
        **({"split_seed": cfg.split_seed} if cfg.split_seed is not None else {}),  # older caches stay valid
    }
    path = Path(cfg.out) / "embeddings.pt"
    if path.exists():
        blob = torch.load(path, weights_only=True)
        if blob.get("key") == json.dumps(key, sort_keys=True):
            log.info("reusing frozen CLIP embeddings from %s", path)
            return blob
    t0 = time.time()
    views = 2 if cfg.cache_flip else 1
    log.info(
        "embedding %d train images (x%d views) and %d val images with the frozen encoder", len(train), views, len(val)
    )
    model.eval()
    blob = {
        "key": json.dumps(key, sort_keys=True),
        "train": embed(model, preprocess, train.images, device, dtype, d),
        "val": embed(model, preprocess, val.images, device, dtype, d),
    }
    if cfg.cache_flip:
        blob["train_flip"] = embed(model, preprocess, train.images, device, dtype, d, flip=True)
    log.info("embedded %d images in %.1fs", views * len(train) + len(val), time.time() - t0)
    if d.main:
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)
    return blob
