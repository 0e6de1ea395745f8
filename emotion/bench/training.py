"""Training throughput for the benchmark: the real trainer, timed on a synthetic FER2013-shaped dataset.

``training_throughput`` gives images/s per training phase (the CNN: ``full``; CLIP: frozen with and
without the embedding cache, and unfrozen), plus a projection of CLIP's frozen phase to FER2013's size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.labels import CLASS_NAMES
from ..models.checkpoint import read_checkpoint
from ..models.networks import ModelConfig, member_config
from ..utils.runtime import read_jsonl

FER_TRAIN_IMAGES = 28709  # FER2013's training split, for projecting the frozen phase to the real dataset
FROZEN_EPOCHS = 9  # epochs 1-9 of the default recipe (unfreeze_epoch=10) train with CLIP frozen


def _val_images(train_images: int) -> int:
    return max(len(CLASS_NAMES), train_images // 4)  # FER2013: 7178 test faces for 28709 train faces


def _synthetic_dataset(root: Path, train_images: int) -> Path:
    """``root/{train,test}/<class>/*.png`` of random faces; validation is a quarter of train, as in FER2013."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train_images), ("test", _val_images(train_images))):
        for name in CLASS_NAMES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            face = rng.integers(0, 256, size=(48, 48), dtype=np.uint8)
            Image.fromarray(face).save(root / split / CLASS_NAMES[i % len(CLASS_NAMES)] / f"{i}.png")
    return root


def _train_rows(tmp: Path, name: str, **overrides) -> list[dict]:
    from ..training.config import TrainConfig
    from ..training.loop import train

    out = tmp / f"train_{name}"
    train(TrainConfig(out=str(out), clip_weights="random", log_every=3600.0, **overrides))
    return read_jsonl(out / "metrics.jsonl")


def _phase(row: dict) -> dict:
    return {
        "images_per_s": row["images_per_s"],
        "seconds": row["seconds"],
        "epoch": row["epoch"],
        "precision": row.get("precision", "unknown"),
    }


def training_throughput(
    name: str, checkpoint: Path, tmp: Path, *, train_images: int, device: str = "auto", amp: str = "auto"
) -> dict:
    """Images/s of the real trainer per phase (the CNN: ``full``; CLIP: frozen cached/uncached and unfrozen)."""
    data = tmp / "train_data"
    if not data.exists():
        _synthetic_dataset(data, train_images)
    blob = read_checkpoint(checkpoint)
    # One network's training speed: an ensemble's members are trained one by one with the same recipe.
    model_cfg = member_config(ModelConfig.from_dict(blob["model_config"]), 0)
    common = dict(
        data=str(data),
        data_cache=str(tmp / "data_cache"),
        model=model_cfg,
        max_images=train_images,
        batch_size=min(64, train_images),
        device=device,
        amp=amp,
    )
    if name == "cnn":
        # The recipe that trained the checkpoint, as its train_config records it: batch size and weight EMA.
        recipe = blob.get("train_config") or {}
        common["batch_size"] = min(int(recipe.get("batch_size", 64)), train_images)
        ema = float(recipe.get("ema_decay", 0.0))
        rows = _train_rows(tmp, name, epochs=2, ema_decay=ema, **common)  # the second epoch is steady state
        return {"full": _phase(rows[-1]) | {"batch_size": common["batch_size"], "ema_decay": ema}}
    cached = _train_rows(tmp, "clip_cached", epochs=3, unfreeze_epoch=3, embedding_cache=True, **common)
    uncached = _train_rows(tmp, "clip_uncached", epochs=1, unfreeze_epoch=2, embedding_cache=False, **common)
    embed_s = cached[0]["embed_seconds"]
    with_cache = embed_s + FROZEN_EPOCHS * cached[1]["seconds"]
    without_cache = FROZEN_EPOCHS * uncached[0]["seconds"]
    # Uncached epochs also run the encoder over validation, which "seconds" leaves out; the cache embeds it
    # once (with train), so its share of embed_seconds estimates one such pass.
    val = _val_images(train_images)
    val_pass_s = embed_s * val / (train_images + val)
    without_cache_val = FROZEN_EPOCHS * (uncached[0]["seconds"] + val_pass_s)
    scale = FER_TRAIN_IMAGES / train_images
    return {
        "frozen_cached": _phase(cached[1]) | {"embed_seconds": embed_s},
        "frozen_uncached": _phase(uncached[0]),
        "unfrozen": _phase(cached[2]),
        "frozen_phase": {
            "epochs": FROZEN_EPOCHS,
            "train_images": train_images,
            "with_cache_s": round(with_cache, 2),
            "without_cache_s": round(without_cache, 2),
            "speedup": round(without_cache / with_cache, 2),
            "speedup_incl_validation": round(without_cache_val / with_cache, 2),
            "fer2013_with_cache_min": round(with_cache * scale / 60, 1),
            "fer2013_without_cache_min": round(without_cache * scale / 60, 1),
        },
    }
