"""Knowledge distillation: a trained model (typically the shipped ensemble) teaches a new network.

The student learns from the labels and from the teacher's softened probabilities on the very same
augmented (and mixed) faces, so one network can approach an ensemble's accuracy at a third of its
cost per face. The teacher brings its own preprocessing, so any checkpoint can teach any network.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .checkpoint import LoadedModel, load_checkpoint

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
    kl = F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher / t, -1), log_target=True, reduction="batchmean")
    return kl * t * t
