"""How much each kind of framing miss costs a network, on faces it never saw: no detector, no frame.

Each held-out train face (``train --val-split --split-seed``) is cut again from its own 48x48 image with a
known similarity (zoom, tilt, shift), its borders reflected as ``--frame-jitter`` trains, and classified by
the mean probabilities of the given networks (each with its own TTA). The cut is rendered at 4x (bicubic up,
bilinear warp, area down) so that a slight zoom does not also blur the face. The rows: fixed misses one at a
time, then random misses of the size the app's crop makes in frames (docs/frames_benchmark.md, held-out faces
in frames of seed 3: log-scale SD 0.176, tilt RMS 14.5 deg, shift RMS 4.48 px), one component and all three.

    python scripts/framing_sensitivity.py assets/heldout/cnn-s31.pt assets/heldout/cnn-s32.pt --data .data/fer2013
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from emotion.data.dataset import split_train_val
from emotion.data.splits import load_split
from emotion.inference.align import FACE
from emotion.inference.classifier import EmotionClassifier

SUPERSAMPLE = 4  # render each cut at 4x48 px, then area-average down
APP_MISS = (0.176, 14.5, 4.48)  # log-scale SD, tilt RMS (deg), shift RMS (px) of the app's crop in frames


def recut(face: np.ndarray, zoom: float, tilt: float, dx: float, dy: float) -> np.ndarray:
    """``face`` seen through a crop ``zoom`` times as wide, turned ``tilt`` degrees, its centre moved (dx, dy) px."""
    k = SUPERSAMPLE
    big = cv2.resize(face, (FACE * k, FACE * k), interpolation=cv2.INTER_CUBIC)
    centre = (FACE * k - 1) / 2
    m = cv2.getRotationMatrix2D((centre + dx * k, centre + dy * k), tilt, 1.0 / zoom)
    m[:, 2] -= (dx * k, dy * k)  # the crop's centre lands on the output's centre
    out = cv2.warpAffine(big, m, (FACE * k, FACE * k), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return cv2.resize(out, (FACE, FACE), interpolation=cv2.INTER_AREA)


def conditions(n: int, seed: int) -> dict[str, np.ndarray]:
    """Each row's (zoom, tilt, dx, dy) for every face: fixed misses, then random ones of the app's size."""
    rng = np.random.default_rng(seed)
    rows: dict[str, np.ndarray] = {}

    def fixed(zoom: float = 1.0, tilt: float = 0.0, shift: float = 0.0) -> np.ndarray:
        turn, way = rng.choice([-1.0, 1.0], n), rng.uniform(0, 2 * math.pi, n)  # random sign and direction
        return np.stack([np.full(n, zoom), turn * tilt, shift * np.cos(way), shift * np.sin(way)], 1)

    rows["4x render, no miss"] = fixed()
    for zoom in (0.8, 0.9, 0.95, 1.05, 1.1, 1.2, 1.3):
        rows[f"zoom {zoom:.2f}"] = fixed(zoom=zoom)
    for tilt in (10.0, 15.0):
        rows[f"tilt {tilt:.0f} deg"] = fixed(tilt=tilt)
    for shift in (2.0, 4.5):
        rows[f"shift {shift:.1f} px"] = fixed(shift=shift)
    log_sd, tilt_rms, shift_rms = APP_MISS
    zoom, tilt = np.exp(rng.normal(0, log_sd, n)), rng.normal(0, tilt_rms, n)
    shift = rng.normal(0, shift_rms / math.sqrt(2), (n, 2))
    ones, zeros = np.ones(n), np.zeros(n)
    rows["app-sized zoom miss"] = np.stack([zoom, zeros, zeros, zeros], 1)
    rows["app-sized tilt miss"] = np.stack([ones, tilt, zeros, zeros], 1)
    rows["app-sized shift miss"] = np.column_stack([ones, zeros, shift])
    rows["app-sized, all three"] = np.column_stack([zoom, tilt, shift])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="networks whose mean probabilities classify each face")
    p.add_argument("--data", default="../shared/fer2013", help="dataset folder or packed copy; train is read")
    p.add_argument("--val-split", type=float, default=0.05, help="the held-out share of train, as train --val-split")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the held-out share, as train --split-seed")
    p.add_argument("--seed", type=int, default=0, help="seed of the misses' signs, directions and sizes")
    p.add_argument("--engine", default="onnxruntime", choices=["auto", "torch", "onnxruntime"], help="runtime")
    a = p.parse_args(argv)
    try:  # a missing dataset, a share that is not a share, a broken checkpoint: a message, not a traceback
        held = split_train_val(load_split(a.data, "train"), a.val_split, a.split_seed)[1]
        nets = [EmotionClassifier.from_checkpoint(c, device="cpu", engine=a.engine) for c in a.checkpoints]
    except ValueError as e:  # DataError and CheckpointError are ValueErrors
        p.error(str(e))
    faces, labels = held.images.numpy().reshape(-1, FACE, FACE), held.labels.numpy()

    def predict(crops: np.ndarray) -> np.ndarray:
        return np.mean([net.predict_faces(crops) for net in nets], 0).argmax(1)

    exact = predict(faces)
    print(f"{len(faces)} held-out faces, {len(nets)} network(s)")
    print(
        f"| cut | accuracy | agrees with the exact crop |\n|---|---:|---:|\n| exact crop | {np.mean(exact == labels):.2%} | |"
    )
    for name, misses in conditions(len(faces), a.seed).items():
        pred = predict(np.stack([recut(f, *miss) for f, miss in zip(faces, misses, strict=True)]))
        print(f"| {name} | {np.mean(pred == labels):.2%} | {np.mean(pred == exact):.1%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
