"""Calibrated probabilities: expected calibration error, reliability bins and temperature scaling.

The model's probabilities are shown as bars, so they should mean what they say: of the faces shown with
70% confidence, about 70% should be right. ``expected_calibration_error`` measures how far they are from
that (top-label ECE over equal-width confidence bins), and a temperature ``T`` stored in the checkpoint
(``inference["temperature"]``) corrects it at inference time: ``p_cal ∝ p ** (1 / T)``, renormalised.

That form is temperature scaling applied to the log of the final probabilities, i.e. after the ensemble's
and TTA's mean: for a single network ``softmax(z) ** (1/T)`` renormalised is exactly ``softmax(z / T)``,
and for an averaged model ``log p`` is the only "logit" there is. One scalar on the final output keeps
both engines (PyTorch and ONNX Runtime) identical, costs nothing, and, being a monotone map of each row,
never changes the predicted class, so accuracy is untouched. T is fitted by minimising the negative
log-likelihood of held-out faces over ``log T`` (golden-section search; the NLL is unimodal in ``log T``
in practice), never on a test split.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..models.provenance import unseen_split
from ..models.temperature import PROB_FLOOR, T_MAX, T_MIN, apply_temperature

log = logging.getLogger(__name__)

ECE_BINS = 15  # equal-width confidence bins of the standard top-label ECE (Guo et al. 2017)


def _as_probs(probs: np.ndarray | torch.Tensor) -> np.ndarray:
    """``probs`` as a float64 (N, K) array; ValueError when it is not a finite 2-d array."""
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if p.ndim != 2 or not np.issubdtype(p.dtype, np.number) or not np.isfinite(p).all():
        raise ValueError(f"probabilities must be a finite (N, classes) array, got shape {p.shape} of {p.dtype}")
    return p.astype(np.float64)


def _as_labels(labels: np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"need one label per row of probabilities ({n}), got shape {y.shape}")
    return y.astype(np.int64)


def reliability_bins(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin: ``lower``/``upper`` edges, ``count``, mean ``confidence`` and ``accuracy``
    of the faces whose top probability falls in it (None for empty bins), as lists of length ``bins``."""
    p = _as_probs(probs)
    y = _as_labels(labels, len(p))
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a whole number >= 1, got {bins!r}")
    conf, pred = p.max(1), p.argmax(1)
    correct = (pred == y).astype(np.float64)
    # Bin b holds confidences in (b/B, (b+1)/B]; a confidence of exactly 0 cannot occur for a top label.
    index = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=conf, minlength=bins)
    acc_sum = np.bincount(index, weights=correct, minlength=bins)

    def mean(sums: np.ndarray) -> list[float | None]:
        return [float(v / c) if c else None for v, c in zip(sums, count, strict=False)]

    edges = np.linspace(0.0, 1.0, bins + 1)
    return {
        "lower": edges[:-1].round(6).tolist(),
        "upper": edges[1:].round(6).tolist(),
        "count": count.tolist(),
        "confidence": mean(conf_sum),
        "accuracy": mean(acc_sum),
    }


def expected_calibration_error(
    probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, bins: int = ECE_BINS
) -> float:
    """Top-label ECE: the count-weighted mean over confidence bins of |accuracy - mean confidence|."""
    r = reliability_bins(probs, labels, bins)
    n = sum(r["count"])
    if n == 0:
        return 0.0
    return float(
        sum(c * abs(a - f) for c, a, f in zip(r["count"], r["accuracy"], r["confidence"], strict=False) if c) / n
    )


def negative_log_likelihood(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Mean -log p(true class), with probabilities floored at 1e-12 so one certain mistake stays finite."""
    p = _as_probs(probs)
    y = _as_labels(labels, len(p))
    return float(-np.log(np.maximum(p[np.arange(len(p)), y], PROB_FLOOR)).mean()) if len(p) else 0.0


def _nll_at(log_p: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = log_p / temperature
    z = z - z.max(1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(1))
    return float((log_norm - z[np.arange(len(z)), y]).mean())


def fit_temperature(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, tol: float = 1e-4) -> float:
    """The temperature in [T_MIN, T_MAX] that minimises the NLL of ``p ** (1/T)`` (renormalised) on these held-out
    faces: golden-section search over log T, to ``tol`` in log T. Never fit it on a test split."""
    p = _as_probs(probs)
    y = _as_labels(labels, len(p))
    if len(p) == 0:
        raise ValueError("cannot fit a temperature on no faces")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must be class indices 0-{p.shape[1] - 1}")
    log_p = np.log(np.maximum(p, PROB_FLOOR))
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll_at(log_p, y, math.exp(a)), _nll_at(log_p, y, math.exp(b))
    while hi - lo > tol:
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll_at(log_p, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll_at(log_p, y, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def calibration_summary(
    probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, temperature: float
) -> dict:
    """ECE and NLL of ``probs`` as they are ("before") and with ``temperature`` applied ("after")."""
    raw = torch.as_tensor(_as_probs(probs))
    cal = apply_temperature(raw, temperature)
    return {
        "temperature": temperature,
        "bins": ECE_BINS,
        "ece_before": expected_calibration_error(raw, labels),
        "ece_after": expected_calibration_error(cal, labels),
        "nll_before": negative_log_likelihood(raw, labels),
        "nll_after": negative_log_likelihood(cal, labels),
    }


@dataclass
class HeldOut:
    """Which training faces a temperature is fitted on, and whether the networks ever trained on them."""

    fraction: float  # share of each class of the train split held out (split_train_val)
    seed: int  # seed of that stratified split
    unseen: bool  # True: the checkpoint's networks were trained with exactly this split held out


def default_held_out(train_config: dict, fraction: float | None, seed: int | None) -> HeldOut:
    """The faces to fit on: the checkpoint's own validation carve-out of train when every network was trained
    from scratch with the same ``val_split`` and split seed (``split_seed``, else ``seed``: truly unseen faces),
    else ``fraction``/``seed`` given (default 0.1, 0), which the networks may have trained on (``unseen`` False).

    A network fine-tuned from another checkpoint (``init_from``) or distilled from a teacher may have learnt the
    carve-out from that one: the shipped release's networks, fine-tuned from networks trained on all of train,
    score 87.9% on their recorded carve-out and 72% on PublicTest. Such faces count as unseen only when the
    trainer recorded that the starting weights held out the same faces (``unseen_split``)."""
    stored = unseen_split(train_config)
    if stored is not None and fraction in (None, stored[0]) and seed in (None, stored[1]):
        return HeldOut(stored[0], stored[1], True)
    fraction = 0.1 if fraction is None else fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"--holdout must be a fraction of the training split in (0, 1), e.g. 0.1; got {fraction!r}")
    return HeldOut(float(fraction), 0 if seed is None else int(seed), False)


def plot_reliability(
    probs_before: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    probs_after: np.ndarray | None = None,
    temperature: float = 1.0,
) -> None:
    """Reliability diagram: accuracy against mean confidence per bin, with the diagonal of perfect calibration,
    for the raw probabilities and (when given) those with the temperature applied."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    curves = [("raw", probs_before, "C0")]
    if probs_after is not None:
        curves.append((f"T = {temperature:.3f}", probs_after, "C3"))
    width = 1.0 / ECE_BINS
    for i, (name, probs, colour) in enumerate(curves):
        r = reliability_bins(probs, labels)
        keep = [j for j, c in enumerate(r["count"]) if c]
        ece = expected_calibration_error(probs, labels)
        ax.plot(
            [r["confidence"][j] for j in keep],
            [r["accuracy"][j] for j in keep],
            marker="o",
            ms=4,
            color=colour,
            label=f"{name} (ECE {ece:.4f})",
        )
        offset = (i - (len(curves) - 1) / 2) * width / len(curves)
        ax_count.bar(
            [r["lower"][j] + width / 2 + offset for j in keep],
            [r["count"][j] for j in keep],
            width=width / len(curves),
            color=colour,
            alpha=0.7,
        )
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"Reliability ({ECE_BINS} confidence bins)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    ax_count.set(xlabel="confidence (top probability)", ylabel="faces")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
