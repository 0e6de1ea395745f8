"""Packed splits: one FER2013 split as a single small file, ``<data>/<split>.npz``, that loads like its folder.

A packed split carries the decoded faces exactly (lossless), in a third less space than the PNG files:
each pixel is stored as its difference from the median edge detector's prediction (the LOCO-I predictor
of JPEG-LS, from the left, upper and upper-left pixels), and the differences are compressed with LZMA.
FER2013's training split packs into 43.6 MB (56.7 MB of PNG files, 66 MB decoded) and its test split
into 5.7 MB, which lets the dataset travel where a size limit applies, e.g. to a rented GPU machine.

The file is a plain ``.npz`` (read with ``allow_pickle=False``): ``labels`` (N,) int64, ``shape``
(N, 48, 48), ``faces_xz`` (the compressed differences, uint8) and ``version``. Every field is checked
before use, and the decompressed size is bounded by the declared shape, so a hostile file cannot run
code or take more memory than the faces it claims to hold.
"""

from __future__ import annotations

import contextlib
import io
import logging
import lzma
import os
from pathlib import Path

import numpy as np
import torch

from .dataset import DataError
from .labels import CLASS_NAMES

log = logging.getLogger(__name__)

PACK_VERSION = 1  # bump when the packed format changes
PACK_SUFFIX = ".npz"
MAX_FACES = 2_000_000  # more than any facial-expression dataset: a bound on what a packed file may declare
# LZMA with literal context from the previous difference only (lc=4, pb=0): 0.4% smaller than the defaults here.
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 4, "lp": 0, "pb": 0}]


class PackError(DataError):
    """A packed split is damaged or not one; the message names the file and what is wrong."""


def _med_prediction(left: np.ndarray, up: np.ndarray, up_left: np.ndarray) -> np.ndarray:
    """The median edge detector: min or max of left and up at an edge, else the planar left + up - up_left."""
    hi, lo = np.maximum(left, up), np.minimum(left, up)
    return np.where(up_left >= hi, lo, np.where(up_left <= lo, hi, left + up - up_left))


def encode_faces(images: np.ndarray) -> np.ndarray:
    """uint8 faces (N, H, W) -> their prediction differences modulo 256, same shape (all images at once)."""
    a = images.astype(np.int16)
    left, up, up_left = np.zeros_like(a), np.zeros_like(a), np.zeros_like(a)
    left[:, :, 1:] = a[:, :, :-1]
    up[:, 1:, :] = a[:, :-1, :]
    up_left[:, 1:, 1:] = a[:, :-1, :-1]
    return ((a - _med_prediction(left, up, up_left)) % 256).astype(np.uint8)


def decode_faces(residuals: np.ndarray) -> np.ndarray:
    """The inverse of ``encode_faces``: pixel by pixel in raster order, every image of the batch at once."""
    n, h, w = residuals.shape
    out = np.zeros((n, h + 1, w + 1), dtype=np.int16)  # a zero row and column stand in for the missing neighbours
    res = residuals.astype(np.int16)
    for y in range(h):
        for x in range(w):
            pred = _med_prediction(out[:, y + 1, x], out[:, y, x + 1], out[:, y, x])
            out[:, y + 1, x + 1] = (pred + res[:, y, x]) % 256
    return out[:, 1:, 1:].astype(np.uint8)


def packed_path(data: str | os.PathLike, split: str) -> Path:
    """Where the packed ``split`` of dataset folder ``data`` lives: ``data/<split>.npz``."""
    return Path(data) / f"{split}{PACK_SUFFIX}"


def write_packed(images: torch.Tensor, labels: torch.Tensor, path: str | os.PathLike) -> int:
    """Pack uint8 faces (N, H, W) and their labels into ``path`` atomically; returns the file's size in bytes."""
    path = Path(path)
    faces = images.numpy()
    blob = lzma.compress(encode_faces(faces).tobytes(), format=lzma.FORMAT_XZ, filters=_FILTERS)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        version=np.int64(PACK_VERSION),
        shape=np.array(faces.shape, dtype=np.int64),
        labels=labels.numpy().astype(np.int64),
        faces_xz=np.frombuffer(blob, dtype=np.uint8),
    )
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
    except OSError as exc:  # a file where the folder should be, no permission, a full disk
        raise PackError(
            f"could not write {path} ({exc.strerror or exc}); pass an --out folder you can write to"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path.stat().st_size


def read_packed(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, H, W) uint8, labels (N,) int64) of a packed split; PackError for anything malformed."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            fields = {k: z[k] for k in ("version", "shape", "labels", "faces_xz")}
    except KeyError as exc:
        raise PackError(
            f"{path} is not a packed split: it lacks the field {exc}; pack one with `train_cli.py pack`"
        ) from None
    except Exception as exc:  # noqa: BLE001 - zip, header and pickle errors all mean a bad file
        raise PackError(
            f"{path} is not a readable packed split ({type(exc).__name__}: {str(exc)[:120]}); "
            "pack one with `train_cli.py pack`"
        ) from exc
    version, shape, labels, blob = fields["version"], fields["shape"], fields["labels"], fields["faces_xz"]
    if version.shape != () or int(version) != PACK_VERSION:
        raise PackError(
            f"{path} is packed in format {version.tolist()}, this version reads {PACK_VERSION}: pack it again"
        )
    if (
        shape.dtype != np.int64
        or shape.shape != (3,)
        or not (1 <= shape[0] <= MAX_FACES and shape[1] == shape[2] == 48)
    ):
        raise PackError(
            f"{path} declares faces of shape {shape.tolist()}: expected (N, 48, 48) with 1 <= N <= {MAX_FACES}"
        )
    n = int(shape[0])
    if labels.dtype != np.int64 or labels.shape != (n,) or labels.min() < 0 or labels.max() >= len(CLASS_NAMES):
        raise PackError(
            f"{path} has {labels.shape} labels of type {labels.dtype}: expected {n} class indices 0-{len(CLASS_NAMES) - 1}"
        )
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise PackError(f"{path}: its compressed faces are {blob.dtype} {blob.shape}, expected a uint8 byte string")
    size = n * 48 * 48
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        raw = decompressor.decompress(blob.tobytes(), max_length=size + 1)  # never more than the declared faces
    except lzma.LZMAError as exc:
        raise PackError(f"{path}: its compressed faces are damaged ({exc}); pack it again") from exc
    if len(raw) != size or not decompressor.eof:
        raise PackError(f"{path}: its compressed faces do not match the declared {n} faces; pack it again")
    images = decode_faces(np.frombuffer(raw, dtype=np.uint8).reshape(n, 48, 48))
    return torch.from_numpy(images), torch.from_numpy(labels.copy())
