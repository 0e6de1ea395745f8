"""Self-describing checkpoints: model config, class names, training config and metrics with the weights.

Checkpoints are plain ``torch.save`` dicts of tensors and JSON-like values, written atomically
(temp file, then rename) and always read with ``torch.load(weights_only=True)``, so loading one
never runs code from the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..data.labels import CLASS_NAMES
from .networks import CNN_BLOCKS, ModelConfig, Preprocess, build_model, member_config

log = logging.getLogger(__name__)

FORMAT = "emotion-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file is missing, unreadable or not an emotion checkpoint; the message (one line) says which and why."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, read-only folder); the previous file at its path is kept."""


# Sanity bounds for a checkpoint's model config: a hostile file must not make the loader build a huge model.
MAX_WIDTH = 8192  # channels of a CNN stage or units of an adapter layer
MAX_DEPTH = 16  # CNN conv layers per stage, CNN stages or adapter layers
MAX_MEMBERS = 16  # networks in an ensemble (a hostile file must not build hundreds)

SHIP_WEIGHTS = ("fp16", "int8")  # how ship stores weight matrices (see ship_checkpoint)
SCALE_SUFFIX = "::scale"  # an int8 matrix's per-output-channel scales are stored under its name plus this


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | Mapping[str, torch.Tensor],
    model_cfg: ModelConfig,
    *,
    train_config: dict | None = None,
    metrics: dict | None = None,
    training_state: dict | None = None,
    inference: dict | None = None,
) -> None:
    """Write ``model`` (a module or its state dict) and its description to ``path`` atomically;
    ``inference`` holds settings such as the TTA mode."""
    weights = model.state_dict() if isinstance(model, nn.Module) else model
    blob: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model_cfg.to_dict(),
        "class_names": list(CLASS_NAMES),
        "train_config": train_config or {},
        "metrics": metrics or {},
        "model": {k: v.detach().cpu() for k, v in weights.items()},
        "inference": inference or {},
    }
    if training_state is not None:
        blob["training_state"] = training_state
    write_atomic(path, blob)


def write_atomic(path: str | os.PathLike, blob: dict) -> None:
    """``torch.save`` to a temp file, then rename: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as RuntimeError from its zip writer
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # never leave a partial file behind; the previous checkpoint at ``path`` stays
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]
        raise CheckpointWriteError(
            f"could not write checkpoint {path} ({reason}); free disk space or make "
            f"{path.parent} writable, then try again (a training run continues with --resume)"
        ) from exc


def _one_line(exc: BaseException) -> str:
    """An exception as a short single line, without torch's advice to load unsafely."""
    text = " ".join(str(exc).split())
    if "weights_only" in text or "Unpickl" in type(exc).__name__:
        return f"{type(exc).__name__}: it holds objects other than tensors and plain values, which are never loaded"
    return f"{type(exc).__name__}: {text[:200]}"


def read_checkpoint(path: str | os.PathLike, *, dequantize: bool = True) -> dict:
    """The checkpoint dict, validated; raises CheckpointError with a readable one-line reason.

    int8 weight matrices (``ship --weights int8``) come back as float32 unless ``dequantize`` is False,
    which keeps the stored form for rewriting the file as it is."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist: train one with `python train_cli.py train` or pick a file that exists"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable emotion checkpoint ({_one_line(exc)})") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an emotion checkpoint (no '{FORMAT}' marker); checkpoints come from `train_cli.py train`"
        )
    names = blob.get("class_names")
    if not isinstance(names, (list, tuple)) or list(names) != list(CLASS_NAMES):
        raise CheckpointError(f"{path} predicts classes {str(names)[:200]}, expected {list(CLASS_NAMES)}")
    weights = blob.get("model")
    if (
        not isinstance(weights, dict)
        or not weights
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items())
    ):
        raise CheckpointError(
            f"{path} has no model weights (its 'model' entry is missing or not a dict of tensors); "
            "it is damaged or was not written by `train_cli.py train`"
        )
    if dequantize:
        blob["model"] = _dequantized(weights, path)
    model_config(blob, path)  # raises for a missing or malformed config
    for key in ("metrics", "train_config"):
        if not isinstance(blob.get(key, {}), dict):
            raise CheckpointError(f"{path} has a malformed '{key}' entry (expected a dict)")
    return blob


def model_config(blob: dict, path: str | os.PathLike) -> ModelConfig:
    """The checkpoint's ModelConfig, checked for types and sane sizes; CheckpointError when missing or malformed."""
    raw = blob.get("model_config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} has no model config (its 'model_config' entry is missing or not a dict)")
    try:
        cfg = ModelConfig.from_dict(raw)
        check_model_config(cfg)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has a malformed model config: {' '.join(str(exc).split())[:300]}") from exc
    return cfg


def check_model_config(cfg: ModelConfig) -> None:
    """Raise ValueError when ``cfg`` is not a model this package can build at a sane size."""

    def sizes(name: str, values, low: int = 1) -> None:
        if (
            not isinstance(values, tuple)
            or not 1 <= len(values) <= MAX_DEPTH
            or not all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= MAX_WIDTH for v in values)
        ):
            raise ValueError(f"{name} must be 1-{MAX_DEPTH} whole numbers in {low}-{MAX_WIDTH}, got {values!r}")

    if cfg.kind not in ("cnn", "clip"):
        raise ValueError(f"kind must be 'cnn' or 'clip', got {cfg.kind!r}")
    for name in ("clip_model", "pretrained", "cnn_normalize", "cnn_block"):
        if not isinstance(getattr(cfg, name), str):
            raise ValueError(f"{name} must be a string, got {getattr(cfg, name)!r}")
    sizes("cnn_widths", cfg.cnn_widths)
    sizes("adapter_dims", cfg.adapter_dims)
    sizes("cnn_convs", (cfg.cnn_convs,))
    if not isinstance(cfg.members, int) or isinstance(cfg.members, bool) or not 1 <= cfg.members <= MAX_MEMBERS:
        raise ValueError(f"members must be a whole number in 1-{MAX_MEMBERS}, got {cfg.members!r}")
    blocks = cfg.member_blocks
    if blocks != () and (
        not isinstance(blocks, tuple)
        or len(blocks) != cfg.members
        or cfg.kind != "cnn"
        or not all(isinstance(b, str) and b in CNN_BLOCKS for b in blocks)
    ):
        raise ValueError(
            f"member_blocks must be empty, or one of {', '.join(CNN_BLOCKS)} for each of the "
            f"{cfg.members} networks of a CNN ensemble; got {str(blocks)[:100]}"
        )
    if not isinstance(cfg.dropout, (int, float)) or not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout!r}")
    if cfg.num_classes != len(CLASS_NAMES):
        raise ValueError(f"num_classes must be {len(CLASS_NAMES)}, got {cfg.num_classes!r}")


@dataclass
class LoadedModel:
    """A model ready for inference, with its preprocessing and everything its checkpoint says about it."""

    model: nn.Module
    preprocess: Preprocess
    config: ModelConfig
    path: str
    metrics: dict
    train_config: dict
    inference: dict = field(
        default_factory=dict
    )  # how the checkpoint's headline accuracy was measured, e.g. {"tta": "shift"}

    @property
    def name(self) -> str:
        """Short description for logs and the UI, e.g. 'cnn ensemble of 5 (emotion_cnn.pt)'."""
        arch = "cnn" if self.config.kind == "cnn" else f"clip {self.config.clip_model}"
        if self.config.members > 1:
            arch += f" ensemble of {self.config.members}"
            blocks = self.config.member_blocks
            if blocks:  # a mixed ensemble says what it mixes, e.g. "(5 plain, 1 residual)"
                arch += " (" + ", ".join(f"{blocks.count(b)} {b}" for b in dict.fromkeys(blocks)) + ")"
        elif self.config.kind == "cnn" and self.config.cnn_block != "plain":
            arch += f" {self.config.cnn_block}"
        return f"{arch} ({Path(self.path).name})"


def member_network(loaded: LoadedModel, member: int) -> nn.Module:
    """Network ``member`` (0-based) of a loaded model: one network of an ensemble, or a single network itself (0)."""
    members = loaded.config.members
    if isinstance(member, bool) or not isinstance(member, int) or not 0 <= member < members:
        raise ValueError(f"{loaded.name} has {members} network(s): member must be 0-{members - 1}, got {member!r}")
    return loaded.model.members[member] if members > 1 else loaded.model


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model a checkpoint describes, load its weights and put it in eval mode on ``device``."""
    blob = read_checkpoint(path)
    cfg = model_config(blob, path)
    # The checkpoint holds every weight, CLIP's included, so the encoder is built empty and filled from it.
    try:
        model, preprocess = build_model(cfg, clip_weights="random")
    except (ValueError, RuntimeError, KeyError) as exc:  # e.g. an open_clip architecture name that does not exist
        raise CheckpointError(f"{path}: cannot build the model its config describes ({_one_line(exc)})") from exc
    try:
        model.load_state_dict(blob["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not match the model its config describes ({_one_line(exc)[:300]})"
        ) from exc
    # A diverged run's NaN weights would make every prediction NaN (and `predict --json` print invalid JSON).
    if not all(torch.isfinite(t).all() for t in blob["model"].values() if t.is_floating_point()):
        raise CheckpointError(
            f"{path} holds NaN or infinite weights (a training run that diverged); use another checkpoint"
        )
    model.to(device).eval()
    preprocess.to(device)
    log.info("loaded %s from %s", cfg.kind, path)
    return LoadedModel(
        model,
        preprocess,
        cfg,
        str(path),
        blob.get("metrics", {}),
        blob.get("train_config", {}),
        blob.get("inference", {}),
    )


def member_weights(path: str | os.PathLike, member: int = 1) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and float32 weights of network ``member`` (1-based, in file order) of the checkpoint at
    ``path``: a trained or shipped network to start another run from (fine-tuning). CheckpointError when
    the file is unusable or has no such network."""
    loaded = load_checkpoint(path)  # validated, NaN weights refused
    members = loaded.config.members
    if isinstance(member, bool) or not isinstance(member, int) or not 1 <= member <= members:
        raise CheckpointError(f"{path} holds {members} network(s); pick one of 1-{members}, got {member!r}")
    return member_config(loaded.config, member - 1), dict(member_network(loaded, member - 1).state_dict())


def ship_checkpoint(
    sources: Sequence[str | os.PathLike], dst: str | os.PathLike, *, tta: str, weights: str = "fp16"
) -> None:
    """Release trained checkpoints as one file at ``dst``: their weights without optimizer state, with the
    inference setting ``tta``. Several sources (one architecture; CNNs may mix plain and residual stages)
    become an ensemble whose probabilities are averaged. Weight matrices are stored as float16 (``weights="fp16"``), which halves the file, or as
    int8 with one float32 scale per output channel (``"int8"``), a quarter of it, so that more networks fit
    a size budget; they are turned back into float32 when the file is loaded. 1-d tensors (biases,
    BatchNorm statistics) stay float32, since their small values would lose precision, and so does any
    matrix beyond float16's range. Evaluate the
    written file (not the sources), since that is what users get, and record it with ``record_evaluation``."""
    if weights not in SHIP_WEIGHTS:
        raise CheckpointError(f"weights must be one of {', '.join(SHIP_WEIGHTS)}, got {weights!r}")
    if not 1 <= len(sources) <= MAX_MEMBERS:
        raise CheckpointError(f"ship takes 1-{MAX_MEMBERS} checkpoints, got {len(sources)}")
    blobs = [read_checkpoint(src) for src in sources]
    cfgs = [model_config(blob, src) for blob, src in zip(blobs, sources, strict=False)]
    if any(c.members != 1 for c in cfgs):
        raise CheckpointError("ship combines single trained networks; one of the checkpoints is already an ensemble")
    # CNNs may differ in the kind of their stages (plain or residual), nothing else: they share preprocessing and input.
    if any(replace(c, cnn_block=cfgs[0].cnn_block) != cfgs[0] for c in cfgs[1:]):
        raise CheckpointError(
            "an ensemble needs checkpoints of one architecture (CNNs may mix --cnn-block plain and residual); "
            "their model configs differ: "
            + "; ".join(f"{src}: {c.to_dict()}" for src, c in zip(sources, cfgs, strict=False))[:400]
        )
    blocks = tuple(c.cnn_block for c in cfgs)
    cfg = replace(cfgs[0], members=len(blobs), member_blocks=blocks if len(set(blocks)) > 1 else ())
    if len(blobs) == 1:
        state = dict(blobs[0]["model"])
    else:
        state = {f"members.{i}.{k}": v for i, blob in enumerate(blobs) for k, v in blob["model"].items()}
    try:  # the combined weights must fit the combined config before anything is written
        build_model(cfg, clip_weights="random")[0].load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"the weights of {', '.join(map(str, sources))} do not fit their config ({_one_line(exc)[:300]})"
        ) from exc
    stored: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        stored.update(_int8_with_scales(k, v) if weights == "int8" else {k: _half_if_exact_enough(v)})
    if len(blobs) == 1:
        metrics, train_config = blobs[0].get("metrics", {}), blobs[0].get("train_config", {})
    else:  # each member's training, so the card and report can show every run
        metrics = {
            "members": [
                {"checkpoint": str(src), **blob.get("metrics", {})} for src, blob in zip(sources, blobs, strict=False)
            ]
        }
        train_config = {**blobs[0].get("train_config", {}), "members": [blob.get("train_config", {}) for blob in blobs]}
    save_checkpoint(dst, stored, cfg, train_config=train_config, metrics=metrics, inference={"tta": tta})


def _half_if_exact_enough(t: torch.Tensor) -> torch.Tensor:
    """Weight matrices as float16 when they fit its range; 1-d tensors and everything else unchanged."""
    if t.is_floating_point() and t.dim() > 1 and t.numel() and t.abs().max() < torch.finfo(torch.float16).max:
        return t.half()
    return t


def _int8_with_scales(name: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """A weight matrix as int8 plus the float32 scale of each output channel (symmetric: the largest
    magnitude of a channel maps to 127); anything else as ``_half_if_exact_enough`` stores it."""
    if not (t.is_floating_point() and t.dim() > 1 and t.numel() and torch.isfinite(t).all()):
        return {name: _half_if_exact_enough(t)}
    t = t.float()
    scale = t.abs().flatten(1).amax(1).clamp_min(1e-12) / 127
    q = (t / scale.view(-1, *[1] * (t.dim() - 1))).round().clamp(-127, 127).to(torch.int8)
    return {name: q, name + SCALE_SUFFIX: scale}


def _dequantized(weights: dict[str, torch.Tensor], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``weights`` with every int8 matrix and its scales turned back into one float32 tensor; CheckpointError
    for a scale without its matrix, an int8 matrix without scales, or scales of the wrong shape."""
    out: dict[str, torch.Tensor] = {}
    for name, t in weights.items():
        if name.endswith(SCALE_SUFFIX):
            base = name[: -len(SCALE_SUFFIX)]
            if weights.get(base) is None or weights[base].dtype != torch.int8:
                raise CheckpointError(
                    f"{path}: '{name[:100]}' scales a weight that is not an int8 matrix; the file is damaged"
                )
            continue
        scale = weights.get(name + SCALE_SUFFIX)
        if t.dtype != torch.int8:
            out[name] = t
        elif (
            scale is None
            or not scale.is_floating_point()
            or scale.dim() != 1
            or t.dim() < 2
            or scale.numel() != t.shape[0]
        ):
            raise CheckpointError(
                f"{path}: int8 weight '{name[:100]}' has no scale for each of its {t.shape[0] if t.dim() else 0} "
                "output channels; the file is damaged or was not written by `train_cli.py ship`"
            )
        else:
            out[name] = t.float() * scale.float().view(-1, *[1] * (t.dim() - 1))
    return out


def record_evaluation(path: str | os.PathLike, evaluation: dict) -> None:
    """Store ``evaluation`` (e.g. accuracy per TTA mode) in the checkpoint's metrics, rewriting it atomically."""
    blob = read_checkpoint(path, dequantize=False)
    blob["metrics"] = {**blob.get("metrics", {}), "evaluation": evaluation}
    write_atomic(path, blob)
