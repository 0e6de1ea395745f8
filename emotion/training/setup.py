"""A training run's set-up: its data, model, precision, optimizer and the state a resumed run restores."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from ..data.dataset import DataError, FaceDataset, faces_to_input, split_train_val
from ..data.framings import load_framings
from ..data.splits import has_split, load_split
from ..models.checkpoint import CheckpointError, member_weights, read_checkpoint
from ..models.networks import build_model, count_parameters
from ..models.provenance import member_train_configs, unseen_split
from ..utils.runtime import amp_dtype, faster_training_dtype, read_jsonl
from .config import TrainConfig
from .distill import cached_teacher_targets, load_teacher
from .distributed import Dist
from .optim import WeightEMA, param_groups

log = logging.getLogger(__name__)


def load_train_val(cfg: TrainConfig) -> tuple[FaceDataset, FaceDataset]:
    """The training and validation sets ``cfg`` describes (test split, or a seeded carve-out of train)."""
    train = load_split(cfg.data, "train", cfg.data_cache)
    if cfg.val_split > 0:
        train, val = split_train_val(train, cfg.val_split, cfg.val_split_seed)
    elif has_split(cfg.data, cfg.val_name):
        val = load_split(cfg.data, cfg.val_name, cfg.data_cache)
    else:
        raise DataError(
            f"{cfg.data} has no '{cfg.val_name}' split for validation: add it, or pass --val-split 0.1 to carve one from train"
        )
    if cfg.max_images and len(train) > cfg.max_images:
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.max_images]
        train = train.subset(pick.sort().values)
    return train, val


def init_weights(model: nn.Module, cfg: TrainConfig) -> None:
    """Start from network ``cfg.init_member`` of ``cfg.init_from`` (CheckpointError when its architecture differs)."""
    saved, weights = member_weights(cfg.init_from, cfg.init_member)
    fields = ("kind", "clip_model", "adapter_dims", "cnn_widths", "cnn_convs", "cnn_block", "cnn_normalize")
    differ = [
        f"{name} {getattr(saved, name)} (this run: {getattr(cfg.model, name)})"
        for name in fields
        if getattr(saved, name) != getattr(cfg.model, name)
    ]
    if differ:
        raise CheckpointError(
            f"--init-from {cfg.init_from}: its network has {', '.join(differ)}; "
            "pass the same model flags (--model, --cnn-widths, --cnn-block, ...)"
        )
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(
            f"--init-from {cfg.init_from}: its weights do not fit this run's model ({str(exc).splitlines()[0][:200]})"
        ) from exc
    log.info("starting from network %d of %s", cfg.init_member, cfg.init_from)


def _same_held_out(cfg: TrainConfig, train_config: object) -> list | None:
    """``[val_split, split seed]`` of this run when every network of ``train_config`` held out the same faces, else
    None."""
    own = (float(cfg.val_split), cfg.val_split_seed)
    same = cfg.val_split > 0 and isinstance(train_config, dict) and unseen_split(train_config) == own
    return list(own) if same else None


def init_held_out(cfg: TrainConfig) -> list | None:
    """``[val_split, split seed]`` of this run when the ``init_from`` network held out the same faces (they stay
    unseen, and ``calibrate`` may fit on them), else None; recorded in the run's config as ``init_held_out``."""
    source = member_train_configs(read_checkpoint(cfg.init_from).get("train_config", {}))
    return _same_held_out(cfg, source[cfg.init_member - 1] if len(source) >= cfg.init_member else None)


def teacher_held_out(cfg: TrainConfig, teacher_train_config: dict) -> list | None:
    """``[val_split, split seed]`` of this run when every network of the teacher (its ``teacher_train_config``)
    held out the same faces, so distilling from it keeps them unseen, else None; recorded in the run's config as
    ``teacher_held_out``."""
    return _same_held_out(cfg, teacher_train_config)


def _cpu_training_dtype(
    model: nn.Module,
    preprocess: nn.Module,
    train_ds: FaceDataset,
    cfg: TrainConfig,
    device: torch.device,
    last_path: Path,
) -> torch.dtype | None:
    """``amp auto`` on a CPU with native bf16: a resumed run keeps the precision its first part timed (so
    it continues on the same numerics); a new run times a step in bf16 and in fp32 and keeps the faster."""
    if cfg.resume and last_path.is_file():
        state = read_checkpoint(last_path).get("training_state") or {}
        saved = state.get("precision") if isinstance(state, dict) else None
        if saved in ("fp32", "bfloat16"):
            log.info("amp auto: --resume keeps the run's precision, %s", saved)
            return None if saved == "fp32" else torch.bfloat16
    probe = preprocess(faces_to_input(train_ds.images[: min(cfg.batch_size, 32)], device))
    if cfg.model.kind == "cnn":
        probe = probe.contiguous(memory_format=torch.channels_last)
    return faster_training_dtype(model, probe, device)


@dataclass
class TrainingRun:
    """What a run builds before its first epoch and carries from one epoch to the next."""

    cfg: TrainConfig
    d: Dist
    device: torch.device
    out: Path
    train_ds: FaceDataset
    val_ds: FaceDataset
    model: nn.Module
    preprocess: nn.Module
    dtype: torch.dtype | None  # autocast precision; None is fp32
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: WeightEMA | None  # the average of the weights, which is validated and saved as "model"
    teacher: nn.Module | None  # --teacher without --teacher-cache: run on every batch
    targets: torch.Tensor | None  # --teacher-cache: the teacher's log-probabilities for every training face
    steps_per_epoch: int
    start_epoch: int = 1
    best: dict = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0})
    history: list[dict] = field(default_factory=list)  # one metrics row per finished epoch
    cache: dict | None = None  # CLIP embeddings while the encoder is frozen (--embedding-cache)
    framings: torch.Tensor | None = None  # (N, K, 2, 3) recorded detector framings of the training faces, or None

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def shipped(self) -> nn.Module:
        """The weights that are validated and saved: the average when there is one."""
        return self.ema.module if self.ema is not None else self.model


def _build_model(cfg: TrainConfig, device: torch.device, out: Path) -> tuple[nn.Module, nn.Module]:
    """The model and its preprocessing on ``device``, started from ``--init-from`` unless resuming."""
    model, preprocess = build_model(cfg.model, cfg.clip_weights, cfg.cache_dir)
    model.to(device)
    preprocess.to(device)
    if cfg.model.kind == "cnn":
        model.to(memory_format=torch.channels_last)  # about 1.4x faster convolutions on CPU
    log.info("model: %s, %.2fM parameters, device %s", cfg.model.kind, count_parameters(model) / 1e6, device)
    if cfg.init_from:
        cfg.init_held_out = init_held_out(cfg)
        if not (cfg.resume and (out / "last.pt").exists()):  # a resumed run has its own weights
            init_weights(model, cfg)
    return model, preprocess


def _training_dtype(
    model: nn.Module,
    preprocess: nn.Module,
    train_ds: FaceDataset,
    cfg: TrainConfig,
    d: Dist,
    device: torch.device,
    out: Path,
) -> torch.dtype | None:
    """The autocast precision: ``cfg.amp``, where on a CPU with native bf16 "auto" keeps the faster of bf16 and fp32."""
    dtype = amp_dtype(device, cfg.amp)
    if (
        cfg.amp == "auto" and device.type == "cpu" and dtype is not None
    ):  # a native bf16 flag is not always the faster path
        dtype = _cpu_training_dtype(model, preprocess, train_ds, cfg, device, out / "last.pt")
        if d.world > 1:  # every process computes in rank 0's choice, so their gradients agree in precision
            choice = torch.tensor([dtype is not None], dtype=torch.int32, device=device)
            dist.broadcast(choice, src=0)
            dtype = torch.bfloat16 if choice.item() else None
    return dtype


def setup_run(cfg: TrainConfig, d: Dist, device: torch.device, out: Path) -> TrainingRun:
    """Load the data, build the model, pick the precision and make the optimizer: everything before epoch 1."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_ds, val_ds = load_train_val(cfg)
    log.info(
        "data: %d train faces %s, %d val faces (%s)", len(train_ds), train_ds.class_counts(), len(val_ds), val_ds.source
    )
    if train_ds.skipped or val_ds.skipped:
        log.warning(
            "left out %d unreadable train and %d unreadable val images or CSV rows", train_ds.skipped, val_ds.skipped
        )
    model, preprocess = _build_model(cfg, device, out)
    teacher = load_teacher(cfg.teacher, device) if cfg.teacher else None
    if teacher is not None:
        cfg.teacher_held_out = teacher_held_out(cfg, teacher.train_config)
    dtype = _training_dtype(model, preprocess, train_ds, cfg, d, device, out)
    targets = None
    if teacher is not None and cfg.teacher_cache:
        targets = cached_teacher_targets(
            teacher, cfg.teacher, train_ds.images, out / "teacher_targets.pt", device, dtype, write=d.main
        )
        teacher = None  # its predictions are all in hand: free its memory
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=(0.9, 0.999), fused=device.type == "cuda")
    for g in optimizer.param_groups:
        g["base_lr"] = g["lr"]
    steps_per_epoch = (len(train_ds) // d.world) // cfg.batch_size
    if steps_per_epoch == 0:
        raise DataError(
            f"batch size {cfg.batch_size} x {d.world} process(es) is larger than the {len(train_ds)} training faces; lower --batch-size"
        )
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    framings = None
    if cfg.augment.detector_framing > 0:
        framings = load_framings(cfg.detector_framings, train_ds.images)
        found = torch.isfinite(framings[:, :, 0, 0]).any(1).float().mean().item()
        log.info("detector framings: %d file(s), %.1f%% of the training faces framed", framings.shape[1], 100 * found)
    return TrainingRun(
        cfg,
        d,
        device,
        out,
        train_ds,
        val_ds,
        model,
        preprocess,
        dtype,
        optimizer,
        scaler,
        ema,
        teacher,
        targets,
        steps_per_epoch,
        framings=framings,
    )


def resume_run(run: TrainingRun) -> None:
    """With ``--resume`` and a last.pt: restore weights, optimizer, scaler and best; then settle the history.

    The checkpoint's history is the record (metrics.jsonl for checkpoints without one): rows of an
    interrupted epoch are dropped, and a row lost to a kill between checkpoint and append is restored.
    """
    cfg, blob = run.cfg, {}
    if cfg.resume and run.last_path.exists():
        blob = read_checkpoint(run.last_path)
        if blob["model_config"] != cfg.model.to_dict():
            raise DataError(
                f"--resume: {run.last_path} holds a different model ({blob['model_config']}); use another --out or the same model flags"
            )
        state = blob.get("training_state")
        if not isinstance(state, dict) or not {"epoch", "optimizer", "scaler", "best"} <= set(state):
            raise CheckpointError(
                f"--resume: {run.last_path} has no complete training state; use --overwrite to start over"
            )
        run.model.load_state_dict(state.get("raw_model", blob["model"]))
        if run.ema is not None:
            run.ema.module.load_state_dict(blob["model"])
            run.ema.updates = state.get("ema_updates", 0)
        run.optimizer.load_state_dict(state["optimizer"])
        run.scaler.load_state_dict(state["scaler"])
        run.start_epoch, run.best = state["epoch"] + 1, state["best"]
        log.info(
            "resumed from %s after epoch %d (best val acc %.4f)", run.last_path, state["epoch"], run.best["val_acc"]
        )
    elif cfg.resume:
        log.info("--resume: no %s yet, starting from scratch", run.last_path)
    history = blob.get("metrics", {}).get("history") or read_jsonl(run.metrics_path)
    run.history = [r for r in history if r.get("epoch", 0) < run.start_epoch]
    if run.d.main:
        run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in run.history))
