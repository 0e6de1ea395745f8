"""One training loop for every model the package builds (CLIP + adapter, offline CNN).

The recipe is the seed's: AdamW with separate learning rates for the CLIP encoder and the rest,
no weight decay on biases and norms, warmup + cosine schedule, cross-entropy with label smoothing,
AMP, and CLIP frozen until ``unfreeze_epoch``. While the encoder is frozen its embeddings are
computed once and the adapter trains on them (``embedding_cache``).

Outputs in ``out``: ``last.pt`` (every epoch, with optimizer state, for ``resume``), ``best.pt``
(best validation accuracy), ``metrics.jsonl`` (one row per epoch), ``status.json`` (live progress)
and ``train.log``. Runs under ``torchrun`` use DDP (NCCL on GPUs, gloo on CPU); rank 0 writes files.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

from ..data.augment import augment, mix_batch
from ..data.dataset import FaceDataset, faces_to_input
from ..models.checkpoint import save_checkpoint
from ..utils.runtime import autocast_for, write_json_atomic
from .config import TrainConfig, claim_run_folder
from .distill import distill_loss, mix_targets, teacher_logits
from .distributed import Dist, all_reduce_sum, finite_everywhere, init_distributed
from .embedding_cache import embedding_cache
from .optim import lr_factor, set_phase
from .setup import TrainingRun, resume_run, setup_run

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


@torch.inference_mode()
def _validate(
    model: nn.Module,
    preprocess: nn.Module,
    val: FaceDataset,
    cfg: TrainConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    d: Dist,
    embeddings: torch.Tensor | None,
) -> tuple[float, float]:
    """(loss, accuracy) on this process's share of val, reduced over processes."""
    model.eval()
    idx = torch.arange(d.rank, len(val), d.world)
    loss_sum, correct = 0.0, 0.0
    for i in range(0, len(idx), 256):
        b = idx[i : i + 256]
        y = val.labels[b].to(device)
        with autocast_for(device, dtype):
            if embeddings is not None:
                logits = model.adapter(embeddings[b].to(device))
            else:
                x = preprocess(faces_to_input(val.images[b], device))
                if cfg.model.kind == "cnn":
                    x = x.contiguous(memory_format=torch.channels_last)
                logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    loss_sum, correct, n = all_reduce_sum([loss_sum, correct, float(len(idx))], d, device)
    return loss_sum / max(n, 1), correct / max(n, 1)


def _attach_log_file(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("emotion").addHandler(handler)
    return handler


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training as ``cfg`` says; returns the best validation metrics.

    Raises DataError, WeightsError or CheckpointError with a readable message for bad inputs.
    """
    cfg.check()
    d, device = init_distributed(cfg.device)
    claim_run_folder(cfg, d.main)  # before anything is written: a refused folder is left exactly as it was
    out = Path(cfg.out)
    handler = None
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        handler = _attach_log_file(out)
    else:
        logging.getLogger("emotion").setLevel(logging.WARNING)  # rank 0 alone reports progress
    status_path = out / "status.json"
    status = {
        "state": "starting",
        "epoch": 0,
        "epochs": cfg.epochs,
        "step": 0,
        "steps_per_epoch": 0,
        "pid": os.getpid(),
    }

    def publish(**changes) -> None:
        status.update(changes, time=time.time())
        if d.main:
            _write_status(status_path, status)

    finished = False
    try:
        publish()
        result = _run(cfg, d, device, out, publish)
        publish(state="done", **result)
        finished = True
        return result
    except BaseException as exc:
        publish(
            state="stopped" if isinstance(exc, KeyboardInterrupt) else "failed", error=f"{type(exc).__name__}: {exc}"
        )
        raise
    finally:
        if handler is not None:
            logging.getLogger("emotion").removeHandler(handler)
            handler.close()
        if dist.is_initialized():
            if finished:
                # Every rank reaches the end before any closes its connections: gloo aborts (SIGABRT) a process
                # whose peer hangs up first, which killed the second rank of a finished run now and then.
                dist.barrier()
            # DDP's reducer and gloo's pending work sit in reference cycles; left to interpreter exit, their
            # C++ destructors run after the process group and the interpreter are gone, and abort the process.
            gc.collect()
            dist.destroy_process_group()


def _write_status(path: Path, status: dict) -> None:
    """Write status.json; a failure (full disk, read-only folder) is logged and training goes on.

    When the atomic write fails, the file is rewritten in place: that needs no new directory entry,
    so a final "failed" state still reaches an app watching a run whose folder became read-only.
    """
    try:
        write_json_atomic(path, status)
        return
    except OSError as exc:
        first_error = exc
    try:
        if path.is_file():
            path.write_text(json.dumps(status, indent=2))
            return
    except OSError:
        pass
    log.warning("could not update %s (%s); training goes on", path, first_error)


def _diverged(what: str, epoch: int, out: Path) -> TrainingDiverged:
    kept = (
        f"the last good checkpoint {out / 'last.pt'} is kept"
        if (out / "last.pt").is_file()
        else "no checkpoint had been written yet"
    )
    return TrainingDiverged(
        f"{what} became NaN or infinite in epoch {epoch}: training stopped, {kept}; "
        "lower --lr (or --clip-lr) and start again with --overwrite"
    )


_PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass
class EpochStats:
    """One epoch's training figures, summed over processes."""

    loss_sum: float
    correct: float
    seen: float
    seconds: float


def batch_loss(
    run: TrainingRun, idx: torch.Tensor, step_module: nn.Module, phase: str, use_cache: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(loss, logits, labels, mixup partner labels, weight of the labels) of one batch of training faces."""
    cfg, device, model = run.cfg, run.device, run.model
    y = run.train_ds.labels[idx].to(device)
    y_mix, lam, t_logits = y, 1.0, None  # partner labels, the weight of y, the teacher's view: image batches only
    with autocast_for(device, run.dtype):
        if use_cache:
            feats = run.cache["train"][idx]
            if cfg.cache_flip:  # the only augmentation a cache can keep: a random choice of the two views
                flip = torch.rand(len(idx)) < cfg.augment.flip
                feats = torch.where(flip[:, None], run.cache["train_flip"][idx], feats)
            logits = step_module(feats.to(device))
        else:
            framings = run.framings[idx] if run.framings is not None else None
            faces = augment(faces_to_input(run.train_ds.images[idx], device), cfg.augment, framings=framings)
            faces, partner, lam = mix_batch(faces, torch.arange(len(idx), device=device), cfg.augment)
            y_mix = y[partner]
            if run.teacher is not None:
                t_logits = teacher_logits(run.teacher, faces)
            elif run.targets is not None:
                t_logits = mix_targets(run.targets[idx], partner.cpu(), lam).to(device)
            x = run.preprocess(faces)
            if cfg.model.kind == "cnn":
                x = x.contiguous(memory_format=torch.channels_last)
            if phase == "frozen":
                with torch.no_grad():
                    x = model.embed(x)
            logits = step_module(x)
    logits = logits.float()
    loss = lam * F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    if lam < 1.0:
        loss = loss + (1 - lam) * F.cross_entropy(logits, y_mix, label_smoothing=cfg.label_smoothing)
    if t_logits is not None:
        w = cfg.distill_weight
        loss = (1 - w) * loss + w * distill_loss(logits, t_logits, cfg.distill_temperature)
    return loss, logits, y, y_mix, lam


def _epoch_order(run: TrainingRun, epoch: int) -> torch.Tensor:
    """This process's batches of training-face indices for ``epoch``: (steps_per_epoch, batch_size)."""
    d, cfg = run.d, run.cfg
    torch.manual_seed(cfg.seed * 100003 + epoch * d.world + d.rank)  # same batches and augmentation after a resume
    sampler = DistributedSampler(
        range(len(run.train_ds)), num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler))[: run.steps_per_epoch * cfg.batch_size].view(run.steps_per_epoch, cfg.batch_size)


def train_epoch(
    run: TrainingRun, epoch: int, phase: str, step_module: nn.Module, use_cache: bool, publish
) -> EpochStats:
    """One pass over the training faces: schedule, loss, step and weight average per batch."""
    cfg, optimizer = run.cfg, run.optimizer
    total_steps = run.steps_per_epoch * cfg.epochs
    warmup_steps = int(cfg.warmup_epochs * run.steps_per_epoch)
    run.model.train()
    if phase == "frozen":
        run.model.encoder.eval()
    loss_sum, correct, seen = 0.0, 0.0, 0
    t0 = last_publish = time.time()
    bar = _progress(run.steps_per_epoch, f"epoch {epoch}/{cfg.epochs} {phase}", run.d)
    for i, idx in enumerate(_epoch_order(run, epoch)):
        factor = lr_factor((epoch - 1) * run.steps_per_epoch + i, total_steps, warmup_steps, cfg.min_lr_ratio)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        loss, logits, y, y_mix, lam = batch_loss(run, idx, step_module, phase, use_cache)
        # Checked before the step, so no NaN reaches the weights, the average or a checkpoint.
        if not finite_everywhere(loss.detach(), run.d, run.device):
            raise _diverged(f"the training loss (step {i + 1})", epoch, run.out)
        optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(optimizer)
        run.scaler.update()
        if run.ema is not None:
            run.ema.update(run.model)
        loss_sum += loss.item() * len(idx)
        pred = logits.argmax(1)
        correct += lam * (pred == y).sum().item() + (1 - lam) * (pred == y_mix).sum().item()
        seen += len(idx)
        bar.update(1)
        if time.time() - last_publish > cfg.log_every:
            last_publish = time.time()
            publish(state="training", epoch=epoch, step=i + 1, steps_per_epoch=run.steps_per_epoch, phase=phase)
    bar.close()
    seconds = time.time() - t0
    loss_sum, correct, seen = all_reduce_sum([loss_sum, float(correct), float(seen)], run.d, run.device)
    return EpochStats(loss_sum, correct, seen, seconds)


def validate_and_save(
    run: TrainingRun, epoch: int, phase: str, stats: EpochStats, use_cache: bool, embed_seconds: float
) -> dict:
    """Validate the shipped weights, append the epoch's metrics row, write last.pt (and best.pt); returns the row."""
    cfg, shipped = run.cfg, run.shipped
    val_loss, val_acc = _validate(
        shipped, run.preprocess, run.val_ds, cfg, run.device, run.dtype, run.d, run.cache["val"] if use_cache else None
    )
    if not math.isfinite(val_loss):
        raise _diverged("the validation loss", epoch, run.out)
    row = {
        "epoch": epoch,
        "phase": phase,
        "train_loss": stats.loss_sum / stats.seen,
        "train_acc": stats.correct / stats.seen,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": {g["name"]: g["lr"] for g in run.optimizer.param_groups if not g["name"].endswith("_no_decay")},
        "seconds": round(stats.seconds, 2),
        "images_per_s": round(stats.seen / stats.seconds, 1),
        "time": time.time(),
        "precision": _PRECISION_NAMES[run.dtype],
    }
    if embed_seconds:
        row["embed_seconds"] = round(embed_seconds, 2)  # one-off cost of the embedding cache, not in "seconds"
    is_best = val_acc > run.best["val_acc"]
    if is_best:
        run.best = {"val_acc": val_acc, "val_loss": val_loss, "epoch": epoch}
    if run.d.main:
        state = {
            "epoch": epoch,
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(),
            "best": run.best,
            "precision": _PRECISION_NAMES[run.dtype],
        }
        if run.ema is not None:
            state.update(
                raw_model={k: v.detach().cpu() for k, v in run.model.state_dict().items()}, ema_updates=run.ema.updates
            )
        run.history.append(row)
        # The history travels in the checkpoint so curves can be drawn from the file alone.
        metrics = {"epoch": epoch, "val_acc": val_acc, "val_loss": val_loss, "best": run.best, "history": run.history}
        save_checkpoint(
            run.last_path, shipped, cfg.model, train_config=cfg.to_dict(), metrics=metrics, training_state=state
        )
        if is_best:
            save_checkpoint(run.out / "best.pt", shipped, cfg.model, train_config=cfg.to_dict(), metrics=metrics)
        with open(run.metrics_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    log.info(
        "epoch %d/%d %s: train loss %.4f acc %.4f | val loss %.4f acc %.4f%s | %.0fs, %.1f img/s",
        epoch,
        cfg.epochs,
        phase,
        row["train_loss"],
        row["train_acc"],
        val_loss,
        val_acc,
        " (best)" if is_best else "",
        stats.seconds,
        row["images_per_s"],
    )
    return row


def _run(cfg: TrainConfig, d: Dist, device: torch.device, out: Path, publish) -> dict:
    """Set up, resume, then per epoch: the phase, the embedding cache, one epoch, validation and checkpoints."""
    run = setup_run(cfg, d, device, out)
    resume_run(run)
    for epoch in range(run.start_epoch, cfg.epochs + 1):
        phase = set_phase(run.model, cfg, epoch)
        use_cache = phase == "frozen" and cfg.embedding_cache
        embed_seconds = 0.0
        if use_cache and run.cache is None:
            publish(state="embedding", epoch=epoch)
            t_embed = time.time()
            run.cache = embedding_cache(run.model, run.preprocess, run.train_ds, run.val_ds, cfg, device, run.dtype, d)
            embed_seconds = time.time() - t_embed
        # In the frozen phase only the adapter learns, so only it is wrapped (and synchronised) by DDP.
        trainable = run.model.adapter if phase == "frozen" else run.model
        step_module = (
            DDP(trainable, device_ids=[device.index] if device.type == "cuda" else None) if d.world > 1 else trainable
        )
        stats = train_epoch(run, epoch, phase, step_module, use_cache, publish)
        validate_and_save(run, epoch, phase, stats, use_cache, embed_seconds)
        publish(
            state="training", epoch=epoch, step=run.steps_per_epoch, steps_per_epoch=run.steps_per_epoch, phase=phase
        )
    log.info(
        "finished: best val acc %.4f at epoch %d; checkpoint %s",
        run.best["val_acc"],
        run.best["epoch"],
        out / "best.pt",
    )
    return {"best_val_acc": run.best["val_acc"], "best_epoch": run.best["epoch"]}


def _progress(total: int, desc: str, d: Dist):
    """A tqdm bar in an interactive terminal; a no-op in logs, subprocesses and other ranks."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not (d.main and sys.stderr.isatty()), dynamic_ncols=True)
