"""Temperature scaling at inference: the stored temperature, checked, and applied to final probabilities.

A temperature ``T`` stored in the checkpoint (``inference["temperature"]``, written by ``train_cli.py calibrate``)
rescales the model's final probabilities to ``p ** (1 / T)``, renormalised: temperature scaling applied to the
log of the final probabilities, after the ensemble's and TTA's mean. For a single network that is exactly
``softmax(z / T)``; for an averaged model ``log p`` is the only "logit" there is. One scalar on the final output
keeps both engines (PyTorch and ONNX Runtime) identical and never changes the predicted class. How T is fitted
and judged (ECE) is ``emotion.evaluation.calibration``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from .checkpoint import CheckpointError, LoadedModel, read_checkpoint, write_atomic

log = logging.getLogger(__name__)

T_MIN, T_MAX = 0.05, 20.0  # sane temperatures: beyond these a model is broken, not miscalibrated
PROB_FLOOR = 1e-12  # floor under probabilities before their log, so a 0 from an underflowed softmax stays finite


def apply_temperature(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``probs`` (N, K) rescaled to ``p ** (1 / T)``, renormalised (see the module docstring); T = 1 returns
    them as they are. Computed in log space, so tiny probabilities neither underflow nor divide by zero."""
    if temperature == 1.0 or probs.numel() == 0:
        return probs
    logits = probs.double().clamp_min(PROB_FLOOR).log() / temperature
    return logits.softmax(-1).to(probs.dtype)


def check_temperature(value: object, where: str = "temperature") -> float:
    """``value`` as a float when it is a real number, finite and within [T_MIN, T_MAX]; ValueError otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not T_MIN <= value <= T_MAX
    ):
        raise ValueError(f"{where} must be a number in [{T_MIN}, {T_MAX}], got {str(value)[:60]!r}")
    return float(value)


def resolve_temperature(loaded: LoadedModel) -> float:
    """The checkpoint's stored temperature (1.0 when it has none); CheckpointError for a hostile or damaged value."""
    inference = loaded.inference if isinstance(loaded.inference, dict) else {}
    if "temperature" not in inference:
        return 1.0
    try:
        return check_temperature(inference["temperature"], "its inference temperature")
    except ValueError as exc:
        raise CheckpointError(f"{loaded.path}: {exc}; recalibrate it with `train_cli.py calibrate`") from None


def write_temperature(path: str | os.PathLike, temperature: float, record: dict) -> None:
    """Store ``temperature`` and how it was fitted (``record``) in the checkpoint's inference settings, atomically;
    the weights are rewritten exactly as stored (int8 stays int8)."""
    temperature = check_temperature(temperature)
    blob = read_checkpoint(path, dequantize=False)
    inference = blob.get("inference") if isinstance(blob.get("inference"), dict) else {}
    blob["inference"] = {**inference, "temperature": temperature, "calibration": record}
    write_atomic(Path(path), blob)
    log.info("wrote temperature %.4f into %s", temperature, path)


def transfer_temperature(target: str | os.PathLike, source: str | os.PathLike, *, write: bool = True) -> dict:
    """Give ``target`` the temperature of ``source``, a sibling checkpoint (same recipe, same TTA) whose temperature
    was fitted on training faces none of its networks saw. For a model whose networks trained on every face, so
    that no face is left to fit on honestly (the release): its sibling's T is the recipe's, measured on new faces.
    Returns the record stored with it (``written`` says whether ``write`` stored it); CheckpointError when
    ``source`` has no such temperature or its TTA differs from ``target``'s."""
    src, dst = read_checkpoint(source, dequantize=False), read_checkpoint(target, dequantize=False)
    src_inf = src.get("inference") if isinstance(src.get("inference"), dict) else {}
    dst_inf = dst.get("inference") if isinstance(dst.get("inference"), dict) else {}
    fitted = src_inf.get("calibration") if isinstance(src_inf.get("calibration"), dict) else {}
    if "temperature" not in src_inf or fitted.get("unseen_in_training") is not True:
        raise CheckpointError(
            f"{source} has no temperature fitted on faces its networks never saw: calibrate it first with "
            "`train_cli.py calibrate` (it must have been trained with --val-split)"
        )
    temperature = check_temperature(src_inf["temperature"], f"{source}'s temperature")
    if src_inf.get("tta", "none") != dst_inf.get("tta", "none"):
        raise CheckpointError(
            f"{source} was calibrated with tta {src_inf.get('tta', 'none')!r} but {target} runs tta "
            f"{dst_inf.get('tta', 'none')!r}: a temperature holds only for the setting it was fitted with"
        )
    record = {
        "temperature": temperature,
        "method": "transferred from a sibling checkpoint, fitted on faces none of its networks saw",
        "source": Path(source).name,
        "source_calibration": fitted,
        "unseen_in_training": False,  # this checkpoint's own networks may have seen the source's faces
        "tta": dst_inf.get("tta", "none"),
    }
    if write:
        write_temperature(target, temperature, record)
    return {**record, "written": write}
