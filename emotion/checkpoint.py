"""Self-describing checkpoints: model config, class names, training config and metrics with the weights.

Checkpoints are plain ``torch.save`` dicts of tensors and JSON-like values, written atomically
(temp file, then rename) and always read with ``torch.load(weights_only=True)``, so loading one
never runs code from the file.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .labels import CLASS_NAMES
from .models import ModelConfig, Preprocess, build_model

log = logging.getLogger(__name__)

FORMAT = "emotion-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file is missing, unreadable or not an emotion checkpoint; the message says which and why."""


def save_checkpoint(path: str | os.PathLike, model: nn.Module, model_cfg: ModelConfig, *, train_config: dict | None = None,
                    metrics: dict | None = None, training_state: dict | None = None, inference: dict | None = None) -> None:
    """Write ``model`` and its description to ``path`` atomically; ``inference`` holds settings such as the TTA mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model_cfg.to_dict(),
        "class_names": list(CLASS_NAMES),
        "train_config": train_config or {},
        "metrics": metrics or {},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "inference": inference or {},
    }
    if training_state is not None:
        blob["training_state"] = training_state
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, validated; raises CheckpointError with a readable reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: train one with `python train_cli.py train` or pick a file that exists")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable emotion checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an emotion checkpoint (no '{FORMAT}' marker); checkpoints come from `train_cli.py train`")
    if list(blob.get("class_names", [])) != list(CLASS_NAMES):
        raise CheckpointError(f"{path} predicts classes {blob.get('class_names')}, expected {list(CLASS_NAMES)}")
    return blob


@dataclass
class LoadedModel:
    """A model ready for inference, with its preprocessing and everything its checkpoint says about it."""

    model: nn.Module
    preprocess: Preprocess
    config: ModelConfig
    path: str
    metrics: dict
    train_config: dict
    inference: dict = field(default_factory=dict)  # how the checkpoint's headline accuracy was measured, e.g. {"tta": "shift"}

    @property
    def name(self) -> str:
        """Short description for logs and the UI, e.g. 'cnn (emotion_cnn.pt)'."""
        arch = "cnn" if self.config.kind == "cnn" else f"clip {self.config.clip_model}"
        return f"{arch} ({Path(self.path).name})"


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model a checkpoint describes, load its weights and put it in eval mode on ``device``."""
    blob = read_checkpoint(path)
    cfg = ModelConfig.from_dict(blob["model_config"])
    # The checkpoint holds every weight, CLIP's included, so the encoder is built empty and filled from it.
    model, preprocess = build_model(cfg, clip_weights="random")
    try:
        model.load_state_dict(blob["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the model its config describes ({str(exc)[:300]})") from exc
    model.to(device).eval()
    preprocess.to(device)
    log.info("loaded %s from %s", cfg.kind, path)
    return LoadedModel(model, preprocess, cfg, str(path), blob.get("metrics", {}), blob.get("train_config", {}), blob.get("inference", {}))


def ship_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, tta: str, metrics: dict | None = None) -> None:
    """Copy a trained checkpoint to ``dst`` for release: weights, configs and history, no optimizer state,
    with the inference settings (``tta``) and, when given, the evaluation ``metrics`` its accuracy claims."""
    blob = read_checkpoint(src)
    cfg = ModelConfig.from_dict(blob["model_config"])
    model, _ = build_model(cfg, clip_weights="random")
    model.load_state_dict(blob["model"])
    merged = {**blob.get("metrics", {}), **({"evaluation": metrics} if metrics else {})}
    save_checkpoint(dst, model, cfg, train_config=blob.get("train_config"), metrics=merged, inference={"tta": tta})
