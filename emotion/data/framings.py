"""Recorded detector framings: how the app's crop framed each training face it found in a camera-like frame.

``scripts/measure_detector_framings.py`` places every training face in a frame, runs the app's detector and
aligned crop, and stores, per face, the similarity from the face's own 48x48 crop to the app's crop (a 2x3
matrix in continuous 48-px coordinates, NaN where the face was not found), keyed by a hash of the face's pixels.
``load_framings`` turns one or more such files into ``grid_sample`` matrices aligned with a training set, so
``augment`` can cut a face exactly as the app once did instead of with a random framing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import torch

from .dataset import DataError

SIDE = 48  # the recorded matrices are in FER2013's 48x48 crop coordinates


def face_keys(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """A 64-bit hash of each face's pixels ((N, 48, 48) uint8), which finds a face again in any subset or order."""
    faces = np.ascontiguousarray(np.asarray(images, dtype=np.uint8))
    return np.array(
        [int.from_bytes(hashlib.blake2b(f.tobytes(), digest_size=8).digest(), "little") for f in faces],
        dtype=np.uint64,
    )


def framing_to_theta(m: np.ndarray) -> np.ndarray:
    """``grid_sample`` matrices (N, 2, 3) (output -> input, normalised coordinates) of recorded framings ``m``
    (N, 2, 3), each taking face coordinates to crop coordinates (48-px, corner origin)."""
    a_inv = np.linalg.inv(m[:, :, :2].astype(np.float64))
    half = SIDE / 2
    t = np.einsum("nij,nj->ni", a_inv, half - m[:, :, 2]) / half - 1.0  # the output's centre in input coordinates
    return np.concatenate([a_inv, t[:, :, None]], axis=2).astype(np.float32)


def load_framings(paths: Sequence[str | os.PathLike], images: torch.Tensor) -> torch.Tensor:
    """(N, K, 2, 3) ``grid_sample`` matrices of the K files ``paths`` for each face of ``images`` (N, 48, 48);
    NaN where a file has no framing of that face. Raises DataError for an unreadable or malformed file."""
    keys = face_keys(images.numpy())
    out = np.full((len(keys), len(paths), 2, 3), np.nan, dtype=np.float32)
    for k, path in enumerate(paths):
        try:
            with np.load(path, allow_pickle=False) as f:
                file_keys, framings = f["keys"], f["framings"]
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(
                f"--detector-framings {path}: not a framings file ({exc}); make one with "
                "scripts/measure_detector_framings.py"
            ) from exc
        if framings.ndim != 3 or framings.shape[1:] != (2, 3) or len(file_keys) != len(framings):
            raise DataError(f"--detector-framings {path}: framings of shape {framings.shape}, expected (N, 2, 3)")
        usable = np.isfinite(framings).all(axis=(1, 2))
        usable[usable] = np.abs(np.linalg.det(framings[usable, :, :2].astype(np.float64))) > 1e-3
        where = {int(key): i for i, key in enumerate(file_keys) if usable[i]}
        rows = np.array([where.get(int(key), -1) for key in keys])
        hit = rows >= 0
        if hit.any():
            out[hit, k] = framing_to_theta(framings[rows[hit]])
    return torch.from_numpy(out)
