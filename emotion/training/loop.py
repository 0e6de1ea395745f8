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
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

from ..data.augment import augment, mix_batch
from ..models.checkpoint import CheckpointError, member_weights, read_checkpoint, save_checkpoint
from ..data.dataset import DataError, FaceDataset, faces_to_input, split_train_val
from ..data.splits import has_split, load_split
from .distill import cached_teacher_targets, distill_loss, load_teacher, mix_targets, teacher_logits
from .distributed import Dist, all_reduce_sum, finite_everywhere, init_distributed
from .embedding_cache import embedding_cache
from ..models.networks import build_model, count_parameters
from .optim import WeightEMA, lr_factor, param_groups, set_phase
from ..utils.runtime import amp_dtype, autocast_for, faster_training_dtype, read_jsonl, write_json_atomic
from .config import TrainConfig, claim_run_folder

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


@torch.inference_mode()
def _validate(model: nn.Module, preprocess: nn.Module, val: FaceDataset, cfg: TrainConfig, device: torch.device,
              dtype: torch.dtype | None, d: Dist, embeddings: torch.Tensor | None) -> tuple[float, float]:
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


def load_train_val(cfg: TrainConfig) -> tuple[FaceDataset, FaceDataset]:
    """The training and validation sets ``cfg`` describes (test split, or a seeded carve-out of train)."""
    train = load_split(cfg.data, "train", cfg.data_cache)
    if cfg.val_split > 0:
        train, val = split_train_val(train, cfg.val_split, cfg.seed)
    elif has_split(cfg.data, cfg.val_name):
        val = load_split(cfg.data, cfg.val_name, cfg.data_cache)
    else:
        raise DataError(f"{cfg.data} has no '{cfg.val_name}' split for validation: add it, or pass --val-split 0.1 to carve one from train")
    if cfg.max_images and len(train) > cfg.max_images:
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.max_images]
        train = train.subset(pick.sort().values)
    return train, val


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
    status_path, metrics_path = out / "status.json", out / "metrics.jsonl"
    status = {"state": "starting", "epoch": 0, "epochs": cfg.epochs, "step": 0, "steps_per_epoch": 0, "pid": os.getpid()}

    def publish(**changes) -> None:
        status.update(changes, time=time.time())
        if d.main:
            _write_status(status_path, status)

    finished = False
    try:
        publish()
        result = _run(cfg, d, device, out, metrics_path, publish)
        publish(state="done", **result)
        finished = True
        return result
    except BaseException as exc:
        publish(state="stopped" if isinstance(exc, KeyboardInterrupt) else "failed", error=f"{type(exc).__name__}: {exc}")
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
    kept = f"the last good checkpoint {out / 'last.pt'} is kept" if (out / "last.pt").is_file() else "no checkpoint had been written yet"
    return TrainingDiverged(f"{what} became NaN or infinite in epoch {epoch}: training stopped, {kept}; "
                            "lower --lr (or --clip-lr) and start again with --overwrite")


def _init_weights(model: nn.Module, cfg: TrainConfig) -> None:
    """Start from network ``cfg.init_member`` of ``cfg.init_from`` (CheckpointError when its architecture differs)."""
    saved, weights = member_weights(cfg.init_from, cfg.init_member)
    fields = ("kind", "clip_model", "adapter_dims", "cnn_widths", "cnn_convs", "cnn_block", "cnn_normalize")
    differ = [f"{name} {getattr(saved, name)} (this run: {getattr(cfg.model, name)})" for name in fields
              if getattr(saved, name) != getattr(cfg.model, name)]
    if differ:
        raise CheckpointError(f"--init-from {cfg.init_from}: its network has {', '.join(differ)}; "
                              "pass the same model flags (--model, --cnn-widths, --cnn-block, ...)")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"--init-from {cfg.init_from}: its weights do not fit this run's model ({str(exc).splitlines()[0][:200]})") from exc
    log.info("starting from network %d of %s", cfg.init_member, cfg.init_from)


_PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _cpu_training_dtype(model: nn.Module, preprocess: nn.Module, train_ds: FaceDataset, cfg: TrainConfig,
                        device: torch.device, last_path: Path) -> torch.dtype | None:
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


def _run(cfg: TrainConfig, d: Dist, device: torch.device, out: Path, metrics_path: Path, publish) -> dict:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_ds, val_ds = load_train_val(cfg)
    log.info("data: %d train faces %s, %d val faces (%s)", len(train_ds), train_ds.class_counts(), len(val_ds), val_ds.source)
    if train_ds.skipped or val_ds.skipped:
        log.warning("left out %d unreadable train and %d unreadable val images or CSV rows", train_ds.skipped, val_ds.skipped)
    model, preprocess = build_model(cfg.model, cfg.clip_weights, cfg.cache_dir)
    model.to(device)
    preprocess.to(device)
    if cfg.model.kind == "cnn":
        model.to(memory_format=torch.channels_last)  # about 1.4x faster convolutions on CPU
    log.info("model: %s, %.2fM parameters, device %s", cfg.model.kind, count_parameters(model) / 1e6, device)
    if cfg.init_from and not (cfg.resume and (out / "last.pt").exists()):  # a resumed run has its own weights
        _init_weights(model, cfg)
    teacher = load_teacher(cfg.teacher, device) if cfg.teacher else None

    dtype = amp_dtype(device, cfg.amp)
    if cfg.amp == "auto" and device.type == "cpu" and dtype is not None:  # a native bf16 flag is not always the faster path
        dtype = _cpu_training_dtype(model, preprocess, train_ds, cfg, device, out / "last.pt")
        if d.world > 1:  # every process computes in rank 0's choice, so their gradients agree in precision
            choice = torch.tensor([dtype is not None], dtype=torch.int32, device=device)
            dist.broadcast(choice, src=0)
            dtype = torch.bfloat16 if choice.item() else None
    targets = None  # with --teacher-cache: the teacher's log-probabilities for every training face
    if teacher is not None and cfg.teacher_cache:
        targets = cached_teacher_targets(teacher, cfg.teacher, train_ds.images, out / "teacher_targets.pt", device, dtype, write=d.main)
        teacher = None  # its predictions are all in hand: free its memory
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=(0.9, 0.999), fused=device.type == "cuda")
    for g in optimizer.param_groups:
        g["base_lr"] = g["lr"]
    steps_per_epoch = (len(train_ds) // d.world) // cfg.batch_size
    if steps_per_epoch == 0:
        raise DataError(f"batch size {cfg.batch_size} x {d.world} process(es) is larger than the {len(train_ds)} training faces; lower --batch-size")
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)

    # The average of the weights is what is validated and saved as "model"; last.pt keeps the raw weights to resume.
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    start_epoch, best, blob = 1, {"val_acc": -1.0, "epoch": 0}, {}
    last_path = out / "last.pt"
    if cfg.resume and last_path.exists():
        blob = read_checkpoint(last_path)
        if blob["model_config"] != cfg.model.to_dict():
            raise DataError(f"--resume: {last_path} holds a different model ({blob['model_config']}); use another --out or the same model flags")
        state = blob.get("training_state")
        if not isinstance(state, dict) or not {"epoch", "optimizer", "scaler", "best"} <= set(state):
            raise CheckpointError(f"--resume: {last_path} has no complete training state; use --overwrite to start over")
        model.load_state_dict(state.get("raw_model", blob["model"]))
        if ema is not None:
            ema.module.load_state_dict(blob["model"])
            ema.updates = state.get("ema_updates", 0)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        log.info("resumed from %s after epoch %d (best val acc %.4f)", last_path, state["epoch"], best["val_acc"])
    elif cfg.resume:
        log.info("--resume: no %s yet, starting from scratch", last_path)
    # The checkpoint's history is the record (metrics.jsonl for checkpoints without one): rows of an
    # interrupted epoch are dropped, and a row lost to a kill between checkpoint and append is restored.
    history = blob.get("metrics", {}).get("history") or read_jsonl(metrics_path)
    history = [r for r in history if r.get("epoch", 0) < start_epoch]
    if d.main:
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in history))
    cache = None
    for epoch in range(start_epoch, cfg.epochs + 1):
        phase = set_phase(model, cfg, epoch)
        use_cache = phase == "frozen" and cfg.embedding_cache
        embed_seconds = 0.0
        if use_cache and cache is None:
            publish(state="embedding", epoch=epoch)
            t_embed = time.time()
            cache = embedding_cache(model, preprocess, train_ds, val_ds, cfg, device, dtype, d)
            embed_seconds = time.time() - t_embed
        # In the frozen phase only the adapter learns, so only it is wrapped (and synchronised) by DDP.
        trainable = model.adapter if phase == "frozen" else model
        step_module = DDP(trainable, device_ids=[device.index] if device.type == "cuda" else None) if d.world > 1 else trainable
        model.train()
        if phase == "frozen":
            model.encoder.eval()
        torch.manual_seed(cfg.seed * 100003 + epoch * d.world + d.rank)  # same batches and augmentation after a resume
        sampler = DistributedSampler(range(len(train_ds)), num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))[: steps_per_epoch * cfg.batch_size].view(steps_per_epoch, cfg.batch_size)
        loss_sum, correct, seen = 0.0, 0, 0
        t0 = last_publish = time.time()
        bar = _progress(steps_per_epoch, f"epoch {epoch}/{cfg.epochs} {phase}", d)
        for i, idx in enumerate(order):
            step = (epoch - 1) * steps_per_epoch + i
            factor = lr_factor(step, total_steps, warmup_steps, cfg.min_lr_ratio)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * factor
            y = train_ds.labels[idx].to(device)
            y_mix, lam, t_logits = y, 1.0, None  # partner labels, the weight of y, the teacher's view: image batches only
            with autocast_for(device, dtype):
                if use_cache:
                    feats = cache["train"][idx]
                    if cfg.cache_flip:  # the only augmentation a cache can keep: a random choice of the two views
                        flip = torch.rand(len(idx)) < cfg.augment.flip
                        feats = torch.where(flip[:, None], cache["train_flip"][idx], feats)
                    feats = feats.to(device)
                    logits = step_module(feats)
                else:
                    faces = augment(faces_to_input(train_ds.images[idx], device), cfg.augment)
                    faces, partner, lam = mix_batch(faces, torch.arange(len(idx), device=device), cfg.augment)
                    y_mix = y[partner]
                    if teacher is not None:
                        t_logits = teacher_logits(teacher, faces)
                    elif targets is not None:
                        t_logits = mix_targets(targets[idx], partner.cpu(), lam).to(device)
                    x = preprocess(faces)
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
            # Checked before the step, so no NaN reaches the weights, the average or a checkpoint.
            if not finite_everywhere(loss.detach(), d, device):
                raise _diverged(f"the training loss (step {i + 1})", epoch, out)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model)
            loss_sum += loss.item() * len(idx)
            pred = logits.argmax(1)
            correct += lam * (pred == y).sum().item() + (1 - lam) * (pred == y_mix).sum().item()
            seen += len(idx)
            bar.update(1)
            if time.time() - last_publish > cfg.log_every:
                last_publish = time.time()
                publish(state="training", epoch=epoch, step=i + 1, steps_per_epoch=steps_per_epoch, phase=phase)
        bar.close()
        seconds = time.time() - t0
        loss_sum, correct, seen = all_reduce_sum([loss_sum, float(correct), float(seen)], d, device)
        shipped = ema.module if ema is not None else model
        val_loss, val_acc = _validate(shipped, preprocess, val_ds, cfg, device, dtype, d, cache["val"] if use_cache else None)
        if not math.isfinite(val_loss):
            raise _diverged("the validation loss", epoch, out)
        row = {
            "epoch": epoch, "phase": phase, "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "val_loss": val_loss, "val_acc": val_acc,
            "lr": {g["name"]: g["lr"] for g in optimizer.param_groups if not g["name"].endswith("_no_decay")},
            "seconds": round(seconds, 2), "images_per_s": round(seen / seconds, 1), "time": time.time(),
            "precision": _PRECISION_NAMES[dtype],
        }
        if embed_seconds:
            row["embed_seconds"] = round(embed_seconds, 2)  # one-off cost of the embedding cache, not in "seconds"
        is_best = val_acc > best["val_acc"]
        if is_best:
            best = {"val_acc": val_acc, "val_loss": val_loss, "epoch": epoch}
        if d.main:
            state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "best": best,
                     "precision": _PRECISION_NAMES[dtype]}
            if ema is not None:
                state.update(raw_model={k: v.detach().cpu() for k, v in model.state_dict().items()}, ema_updates=ema.updates)
            history.append(row)
            # The history travels in the checkpoint so curves can be drawn from the file alone.
            metrics = {"epoch": epoch, "val_acc": val_acc, "val_loss": val_loss, "best": best, "history": history}
            save_checkpoint(last_path, shipped, cfg.model, train_config=cfg.to_dict(), metrics=metrics, training_state=state)
            if is_best:
                save_checkpoint(out / "best.pt", shipped, cfg.model, train_config=cfg.to_dict(), metrics=metrics)
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        log.info("epoch %d/%d %s: train loss %.4f acc %.4f | val loss %.4f acc %.4f%s | %.0fs, %.1f img/s",
                 epoch, cfg.epochs, phase, row["train_loss"], row["train_acc"], val_loss, val_acc,
                 " (best)" if is_best else "", seconds, row["images_per_s"])
        publish(state="training", epoch=epoch, step=steps_per_epoch, steps_per_epoch=steps_per_epoch, phase=phase)
    log.info("finished: best val acc %.4f at epoch %d; checkpoint %s", best["val_acc"], best["epoch"], out / "best.pt")
    return {"best_val_acc": best["val_acc"], "best_epoch": best["epoch"]}


def _progress(total: int, desc: str, d: Dist):
    """A tqdm bar in an interactive terminal; a no-op in logs, subprocesses and other ranks."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not (d.main and sys.stderr.isatty()), dynamic_ncols=True)
