"""FER2013-style splits: image folders, packed files or the original fer2013.csv, decoded once into a cached uint8 tensor.

Every image becomes a 48x48 grayscale face, as in FER2013. A split is held in memory as
``images`` (N, 48, 48) uint8 and ``labels`` (N,) int64, which is about 66 MB for all of FER2013.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .dataset import MAX_DECODE_PIXELS, WIDE_MODES, DataError, FaceDataset, to_face48, wide_to_uint8
from .labels import CLASS_NAMES, FER_CSV_CODES, canonical_label
from .packed import PackError, packed_path, read_packed, write_packed

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
# Split names accepted for the CSV's Usage column; the image-folder layout uses the folder names.
CSV_USAGE = {"train": "Training", "test": "PublicTest", "val": "PublicTest", "private": "PrivateTest"}
CACHE_VERSION = 1  # bump when the decoded format changes


def _read_face(path: Path) -> np.ndarray | None:
    try:
        with warnings.catch_warnings():  # PIL's decompression-bomb warning: the size is checked right below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            if im.width * im.height > MAX_DECODE_PIXELS:  # refused before decoding: no file may take gigabytes
                raise ValueError(f"{im.width}x{im.height} pixels is more than {MAX_DECODE_PIXELS / 1e6:.0f} megapixels")
            return to_face48(Image.fromarray(wide_to_uint8(im)) if im.mode in WIDE_MODES else im)
    except Exception as exc:  # any decoder error means a bad file, never a crashed run
        log.warning("skipping unreadable image %s (%s)", path, exc)
        return None


def _default_cache_dir() -> Path:
    root = os.environ.get("EMOTION_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "emotion")
    return Path(root).expanduser() / "data"


def _list_folder_split(split_dir: Path) -> list[tuple[Path, int]]:
    """(file, label) pairs of a ``<split>/<class>/*`` folder, with clear errors for bad layouts."""
    if not split_dir.is_dir():
        raise DataError(
            f"{split_dir} does not exist: expected a folder with one sub-folder per class ({', '.join(CLASS_NAMES)})"
        )
    found: dict[str, Path] = {}
    for sub in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = canonical_label(sub.name)
        if name is None:
            raise DataError(
                f"unknown class folder {sub}: expected one of {', '.join(CLASS_NAMES)} (or an alias such as 'happiness')"
            )
        if name in found:
            raise DataError(f"{sub} and {found[name]} both map to class '{name}'")
        found[name] = sub
    missing = [c for c in CLASS_NAMES if c not in found]
    if missing:
        raise DataError(
            f"{split_dir} has no folder for class(es) {', '.join(missing)}: expected one sub-folder per class ({', '.join(CLASS_NAMES)})"
        )
    items = []
    for name, sub in found.items():
        label = CLASS_NAMES.index(name)
        items += [(f, label) for f in sorted(sub.iterdir()) if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not items:
        raise DataError(f"{split_dir} holds no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return items


def _fingerprint(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _load_folder_split(split_dir: Path, cache_dir: Path) -> FaceDataset:
    items = _list_folder_split(split_dir)
    # Any added, removed or rewritten file changes the key, which invalidates the cache.
    stats = [f"{CACHE_VERSION}", str(split_dir.resolve())]
    for f, label in items:
        st = f.stat()
        stats.append(f"{f.name}|{label}|{st.st_size}|{st.st_mtime_ns}")
    key = _fingerprint(stats)
    cache_file = cache_dir / f"{split_dir.name}-{key}.pt"
    if cache_file.exists():
        try:
            blob = torch.load(cache_file, weights_only=True)
            log.info("loaded %d faces from cache %s", blob["labels"].numel(), cache_file)
            return FaceDataset(blob["images"], blob["labels"], str(split_dir), int(blob["skipped"]))
        except Exception as exc:
            log.warning("ignoring unreadable cache %s (%s)", cache_file, exc)
    log.info("decoding %d images from %s (cached afterwards)", len(items), split_dir)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        faces = list(pool.map(_read_face, (f for f, _ in items)))
    keep = [i for i, face in enumerate(faces) if face is not None]
    skipped = len(items) - len(keep)
    if skipped:
        log.warning("skipped %d unreadable file(s) in %s", skipped, split_dir)
    if not keep:
        raise DataError(f"none of the {len(items)} images in {split_dir} could be read")
    images = torch.from_numpy(np.stack([faces[i] for i in keep]))
    labels = torch.tensor([items[i][1] for i in keep], dtype=torch.int64)
    _save_atomic({"images": images, "labels": labels, "skipped": skipped}, cache_file)
    return FaceDataset(images, labels, str(split_dir), skipped)


def _save_atomic(obj: dict, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs speed
        log.warning("could not write data cache %s (%s)", path, exc)


def _parse_csv_row(row: dict) -> tuple[np.ndarray, int]:
    """A CSV row as (48x48 face, class index); ValueError for out-of-range pixels or an unknown emotion code."""
    code = int(str(row.get("emotion", "")).strip())
    # A negative code would silently index FER_CSV_CODES from the end (-1 became 'neutral').
    if not 0 <= code < len(FER_CSV_CODES):
        raise ValueError(f"unknown emotion code {code} (expected 0-{len(FER_CSV_CODES) - 1})")
    values = np.array(
        str(row.get("pixels", "")).split(), dtype=np.int64
    )  # wide ints, so 300 is caught, not an OverflowError
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError(f"pixel value {int(values.max() if values.max() > 255 else values.min())} is outside 0-255")
    side = int(round(values.size**0.5))
    if side * side != values.size or side == 0:
        raise ValueError(f"{values.size} pixels is not a square image")
    return to_face48(values.astype(np.uint8).reshape(side, side)), CLASS_NAMES.index(FER_CSV_CODES[code])


def _load_csv_split(csv_path: Path, split: str) -> FaceDataset:
    usage = CSV_USAGE.get(split, split)
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip() for c in (reader.fieldnames or [])}
        need = {"emotion", "pixels"}
        if not need <= columns:
            raise DataError(
                f"{csv_path} has columns {sorted(columns)}: expected at least 'emotion' and 'pixels' (and 'Usage'), as in the original fer2013.csv"
            )
        faces, labels, skipped = [], [], 0
        for row in reader:
            row = {k.strip(): v for k, v in row.items() if k}
            if "Usage" in row and row["Usage"].strip() != usage:
                continue
            try:
                face, label = _parse_csv_row(row)
            except (ValueError, OverflowError, AttributeError) as exc:
                skipped += 1
                log.warning("skipping bad CSV row %d of %s (%s)", reader.line_num, csv_path, exc)
                continue
            faces.append(face)
            labels.append(label)
    if skipped:
        log.warning("skipped %d unreadable row(s) in %s (bad pixels or unknown emotion codes)", skipped, csv_path)
    if not faces:
        raise DataError(
            f"{csv_path} has no readable rows with Usage '{usage}' (split '{split}'); Usage values are Training, PublicTest, PrivateTest"
        )
    return FaceDataset(torch.from_numpy(np.stack(faces)), torch.tensor(labels), f"{csv_path}:{usage}", skipped)


def find_csv(data: Path) -> Path | None:
    """The fer2013.csv that ``data`` names or contains, if any."""
    if data.is_file() and data.suffix.lower() == ".csv":
        return data
    candidate = data / "fer2013.csv"
    return candidate if candidate.is_file() else None


def has_split(data: str | os.PathLike, split: str) -> bool:
    """Whether ``data`` provides ``split`` (a sub-folder, a packed ``<split>.npz``, or rows in the CSV)."""
    data = Path(data)
    if (data / split).is_dir() or packed_path(data, split).is_file():
        return True
    csv_path = find_csv(data)
    return csv_path is not None and split in CSV_USAGE


def load_split(data: str | os.PathLike, split: str, cache_dir: str | os.PathLike | None = None) -> FaceDataset:
    """Load ``split`` ('train', 'test', 'private', ...) of a FER2013-style dataset.

    ``data`` is a folder holding ``<split>/<class>/*`` images or packed ``<split>.npz`` files
    (``train_cli.py pack``), a folder holding ``fer2013.csv``, or the CSV itself. Folder splits are
    decoded once and cached under ``cache_dir`` (default ``$EMOTION_CACHE_DIR`` or ``~/.cache/emotion``).
    """
    data = Path(data).expanduser()
    if not data.exists():
        raise DataError(
            f"dataset path {data} does not exist: pass a folder with train/ and test/ class folders, or fer2013.csv"
        )
    if (data / split).is_dir():
        return _load_folder_split(data / split, Path(cache_dir) if cache_dir else _default_cache_dir())
    if packed_path(data, split).is_file():
        images, labels = read_packed(packed_path(data, split))
        log.info("loaded %d faces from packed split %s", len(labels), packed_path(data, split))
        return FaceDataset(images, labels, str(packed_path(data, split)))
    csv_path = find_csv(data)
    if csv_path is not None:
        return _load_csv_split(csv_path, split)
    raise DataError(f"{data} has neither a '{split}/' folder of class folders, a packed {split}.npz, nor a fer2013.csv")


def pack_dataset(
    data: str | os.PathLike,
    out: str | os.PathLike,
    splits: tuple[str, ...] = ("train", "test"),
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, dict]:
    """Pack ``splits`` of dataset ``data`` (folders, CSV or packed) into ``out/<split>.npz``, checking that
    each file reads back to exactly the same faces; returns per split the face count and file size."""
    out = Path(out)
    if out.resolve() == Path(data).resolve():
        raise DataError(f"--out {out} is the dataset itself; pack into another folder")
    for split in splits:  # a name such as "../x" would write outside ``out``
        if not split or not all(c.isalnum() or c in "_-" for c in split):
            raise PackError(f"split name {split!r} must be letters, digits, '_' or '-', e.g. train or test")
    summary = {}
    for split in splits:
        ds = load_split(data, split, cache_dir)
        path = packed_path(out, split)
        size = write_packed(ds.images, ds.labels, path)
        images, labels = read_packed(path)
        if not (torch.equal(images, ds.images) and torch.equal(labels, ds.labels)):
            path.unlink(missing_ok=True)
            raise PackError(f"{path} did not read back to the faces of {ds.source}; nothing was kept")
        summary[split] = {"faces": len(ds), "bytes": size, "path": str(path), "source": ds.source}
        log.info("packed %d %s faces from %s into %s (%.1f MB)", len(ds), split, ds.source, path, size / 1e6)
    return summary
