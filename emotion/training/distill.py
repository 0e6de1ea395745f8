"""Knowledge distillation: a trained model (typically the shipped ensemble) teaches a new network.

The student learns from the labels and from the teacher's softened probabilities, so one network can
approach an ensemble's accuracy at a fraction of its cost per face. The teacher brings its own
preprocessing, so any checkpoint can teach any network. Two ways to ask it:

- online (``teacher_logits``): the teacher sees the very same augmented (and mixed) faces as the student,
  which costs one teacher forward pass per step (an ensemble of five costs more than the student's step);
- cached (``cached_teacher_targets``): the teacher predicts each training face once, as the mean of the
  face and its mirror, before the first epoch, and ``mix_targets`` mixes those predictions as mixup or
  CutMix mixed the faces. Training then runs at the student's own speed; the targets ignore the crop,
  rotation and lighting changes, which hardly change an expression.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.dataset import faces_to_input
from ..data.labels import NUM_CLASSES
from ..models.checkpoint import LoadedModel, load_checkpoint, write_atomic
from ..utils.runtime import autocast_for

log = logging.getLogger(__name__)


def load_teacher(path: str, device: torch.device) -> LoadedModel:
    """The teacher checkpoint at ``path``, frozen and in eval mode on ``device`` (CheckpointError if unusable)."""
    teacher = load_checkpoint(path, device)
    if teacher.config.kind == "cnn":
        teacher.model.to(memory_format=torch.channels_last)
    teacher.model.requires_grad_(False)
    log.info("distilling from %s", teacher.name)
    return teacher


@torch.no_grad()
def teacher_logits(teacher: LoadedModel, faces: torch.Tensor) -> torch.Tensor:
    """The teacher's float32 logits for faces (N, 1, 48, 48) in [0, 1]."""
    x = teacher.preprocess(faces)
    if teacher.config.kind == "cnn":
        x = x.contiguous(memory_format=torch.channels_last)
    return teacher.model(x).float()


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence from the teacher's to the student's softened distribution, scaled by T^2 (Hinton et al.)
    so its gradients keep their size whatever the temperature."""
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student.float() / t, -1), F.log_softmax(teacher / t, -1), log_target=True, reduction="batchmean"
    )
    return kl * t * t


@torch.no_grad()
def teacher_targets(
    teacher: LoadedModel, images: torch.Tensor, device: torch.device, dtype: torch.dtype | None, batch_size: int = 256
) -> torch.Tensor:
    """The teacher's log-probabilities (N, classes), float32 on the CPU, for uint8 faces (N, 48, 48): the mean
    of its probabilities for each face and its mirror, so the targets do not depend on which way a face looks."""
    out = []
    for i in range(0, len(images), batch_size):
        faces = faces_to_input(images[i : i + batch_size], device)
        with autocast_for(device, dtype):
            views = torch.stack([teacher_logits(teacher, faces), teacher_logits(teacher, faces.flip(-1))])
        out.append((views.float().log_softmax(-1).logsumexp(0) - math.log(2)).cpu())
    return torch.cat(out)


def cached_teacher_targets(
    teacher: LoadedModel,
    teacher_path: str | os.PathLike,
    images: torch.Tensor,
    cache_path: str | os.PathLike,
    device: torch.device,
    dtype: torch.dtype | None,
    write: bool = True,
) -> torch.Tensor:
    """``teacher_targets`` for ``images``, kept in ``cache_path`` so a resumed run does not predict them again.

    The file is used only when it was made by the same teacher file (its SHA-256) for as many faces, and
    each row is a probability distribution; anything else (damaged, foreign, stale) is predicted anew and rewritten.
    """
    cache_path = Path(cache_path)
    with open(teacher_path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if cache_path.is_file():
        try:
            blob = torch.load(cache_path, map_location="cpu", weights_only=True)
            targets = blob["log_probs"]
            if (
                blob.get("teacher_sha256") == digest
                and isinstance(targets, torch.Tensor)
                and targets.shape == (len(images), NUM_CLASSES)
                and targets.dtype == torch.float32
                and torch.allclose(targets.exp().sum(1), torch.ones(len(targets)), atol=1e-3)
            ):  # NaN fails too
                log.info("teacher targets: %d faces from %s", len(targets), cache_path)
                return targets
            log.warning("teacher targets in %s are for another teacher or dataset: predicting them again", cache_path)
        except Exception as exc:  # a damaged or hostile file is never trusted, only replaced
            log.warning(
                "teacher targets in %s are unreadable (%s): predicting them again", cache_path, type(exc).__name__
            )
    log.info("teacher targets: predicting %d training faces and their mirrors once", len(images))
    targets = teacher_targets(teacher, images, device, dtype)
    if write:
        write_atomic(cache_path, {"teacher_sha256": digest, "log_probs": targets})
    return targets


def mix_targets(log_probs: torch.Tensor, partner: torch.Tensor, lam: float) -> torch.Tensor:
    """Cached teacher log-probabilities of a batch, mixed as ``mix_batch`` mixed its faces: ``lam`` of each
    face's own prediction and ``1 - lam`` of its partner's (``partner``: positions in the batch)."""
    if lam >= 1.0:
        return log_probs
    probs = lam * log_probs.exp() + (1 - lam) * log_probs[partner].exp()
    return probs.clamp_min(1e-12).log()
