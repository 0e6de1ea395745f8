"""Faces in memory: the dataset type, its errors, and the conversions every layer shares (any image to a
48x48 grayscale face, uint8 faces to model input, a seeded stratified validation split)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from .labels import CLASS_NAMES

FACE_SIZE = 48  # FER2013's face crops are 48x48 grayscale
MAX_DECODE_PIXELS = 40_000_000  # about 7300x5500; bigger images are decoded at reduced scale (JPEG) or refused
# Modes whose pixels are wider than 8 bits: PIL's convert("RGB") clips them, turning a 16-bit photo white.
WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


class DataError(ValueError):
    """A dataset path or file is not what the loader expects; the message says what to fix."""


@dataclass
class FaceDataset:
    """One split held in memory: uint8 faces, int64 labels and where they came from."""

    images: torch.Tensor  # (N, 48, 48) uint8
    labels: torch.Tensor  # (N,) int64, indices into CLASS_NAMES
    source: str  # path the split was read from
    skipped: int = 0  # unreadable files or bad CSV rows left out

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, index: torch.Tensor) -> FaceDataset:
        """The faces at ``index`` as a new dataset."""
        return FaceDataset(self.images[index], self.labels[index], self.source, 0)

    def class_counts(self) -> list[int]:
        """Number of faces per class, in CLASS_NAMES order."""
        return torch.bincount(self.labels, minlength=len(CLASS_NAMES)).tolist()


def faces_to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, 48, 48) -> float (N, 1, 48, 48) in [0, 1] on ``device``."""
    return images.to(device, non_blocking=True).unsqueeze(1).float().div_(255.0)


def to_face48(image: Image.Image | np.ndarray) -> np.ndarray:
    """Any PIL image or HxW(xC) array, any mode or size, as a 48x48 uint8 grayscale face.

    Non-square images are centre-cropped to a square first so faces are not distorted.
    """
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]
        image = Image.fromarray(np.ascontiguousarray(image.astype(np.uint8)))
    if image.mode in ("RGBA", "LA", "P"):
        # Composite transparency on white rather than letting it turn black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    gray = image.convert("L")
    if gray.size != (FACE_SIZE, FACE_SIZE):
        gray = ImageOps.fit(gray, (FACE_SIZE, FACE_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def wide_to_uint8(im: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grayscale image as uint8, scaled by its bit depth (floats by their range)."""
    arr = np.asarray(im)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        top = float(arr.max()) if arr.size else 1.0
        # Float images are [0, 1] or [0, 255] by convention; anything else is stretched to its own range.
        if top <= 1.0 and arr.min() >= 0.0:
            arr = arr * 255.0
        elif top > 255.0 or arr.min() < 0.0:
            low = float(arr.min())
            arr = (arr - low) * (255.0 / max(top - low, 1e-12))
        return np.clip(arr, 0, 255).round().astype(np.uint8)
    top = int(arr.max()) if arr.size else 0
    # 16-bit files hold 0..65535; a 32-bit "I" image from an 8-bit source stays within 0..255.
    bits = 8 if top <= 255 and im.mode == "I" else 16 if top <= 65535 else 32
    return (arr.astype(np.uint64) >> (bits - 8)).astype(np.uint8) if bits > 8 else arr.astype(np.uint8)


def split_train_val(ds: FaceDataset, fraction: float, seed: int = 0) -> tuple[FaceDataset, FaceDataset]:
    """Carve a stratified validation set of about ``fraction`` of each class, reproducibly for a seed."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"val split must be between 0 and 1, got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    val_idx = []
    for c in range(len(CLASS_NAMES)):
        idx = torch.nonzero(ds.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        val_idx.append(idx[: int(round(len(idx) * fraction))])
    val = torch.cat(val_idx).sort().values
    mask = torch.ones(len(ds), dtype=torch.bool)
    mask[val] = False
    train_part, val_part = ds.subset(torch.nonzero(mask).flatten()), ds.subset(val)
    if len(val_part) == 0 or len(train_part) == 0:
        raise DataError(f"val split {fraction} of {len(ds)} faces leaves an empty train or validation set")
    return train_part, val_part
