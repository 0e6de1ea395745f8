"""Where the frame benchmark's gap comes from, on TRAIN faces: resampling or framing, and whether crop TTA helps.

Each sampled train face is placed in a frame as ``evaluate --frames`` draws it and found by BlazeFace. Four
accuracies on the found faces: the direct 48x48 crop; the face's own FER2013 framing cut back out of the frame
(the placement is known, so this crop differs from the direct one only by resampling, tint and background);
the app's framing cut from the 48x48 face alone, its borders reflected as ``--frame-jitter`` trains (so what
the frame's background costs shows); and the app's aligned crop of the detector's eyes. The app's crop is also
averaged over zoomed (0.9, 1.1) and turned (-6, +6 degrees) variants, to see whether crop TTA would close the
gap. Only the train split is read.
With ``--val-split``, faces are sampled only from the part that ``train --val-split --split-seed`` holds out,
so a network fine-tuned with those flags is measured on faces its fine-tune never saw.

    python scripts/frame_gap_parts.py --checkpoint assets/emotion_cnn.pt --data ../shared/fer2013 --faces 400 --seed 1
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from emotion.data.dataset import DataError, split_train_val
from emotion.data.splits import load_split
from emotion.evaluation.frames import FrameBenchConfig, draw_frame, face_to_crop, placement
from emotion.inference.align import EYE_CX, EYE_CY, EYE_DIST, FACE, aligned_crop
from emotion.inference.classifier import EmotionClassifier
from emotion.inference.faces import FaceDetector

# (zoom of the eye distance, turn in degrees) of each crop; the first is the app's own crop.
VARIANTS = ((1.0, 0.0), (0.9, 0.0), (1.1, 0.0), (1.0, -6.0), (1.0, 6.0))
AVERAGES = {"app crop": [0], "zoom 0.9/1/1.1": [0, 1, 2], "turn -6/0/+6": [0, 3, 4], "all five": [0, 1, 2, 3, 4]}


def varied(eyes: tuple[float, ...], zoom: float, turn: float) -> tuple[float, float, float, float]:
    """The eye pair about its midpoint, ``zoom`` times as far apart and turned ``turn`` degrees."""
    rx, ry, lx, ly = eyes
    cx, cy = (rx + lx) / 2, (ry + ly) / 2
    c, s = math.cos(math.radians(turn)), math.sin(math.radians(turn))
    hx, hy = (lx - rx) / 2 * zoom, (ly - ry) / 2 * zoom
    hx, hy = c * hx - s * hy, s * hx + c * hy
    return (cx - hx, cy - hy, cx + hx, cy + hy)


def placed_eyes(how: dict) -> tuple[float, float, float, float]:
    """Where the frame holds the points that sit at FER2013's median eye positions in the face's own crop."""
    m = placement((how["cx"], how["cy"]), how["side"], how["angle"], FACE)
    right = m[:, :2] @ np.array([EYE_CX - EYE_DIST / 2, EYE_CY]) + m[:, 2]
    left = m[:, :2] @ np.array([EYE_CX + EYE_DIST / 2, EYE_CY]) + m[:, 2]
    return (*right, *left)


def face_alone_crop(face: np.ndarray, how: dict, eyes: tuple[float, ...]) -> np.ndarray:
    """The app's crop on ``eyes`` cut from the 48x48 face itself, its borders reflected as ``--frame-jitter``
    trains, instead of from the frame: the same framing without the frame's background, tint and the
    resampling into and out of the frame."""
    m = face_to_crop(how, eyes)
    m[:, 2] += m[:, :2] @ np.array([0.5, 0.5]) - 0.5  # OpenCV puts pixel centres at integers
    return cv2.warpAffine(face, m, (FACE, FACE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="assets/emotion_cnn.pt", help="model to measure")
    p.add_argument("--data", default="../shared/fer2013", help="dataset folder; only its train split is read")
    p.add_argument("--faces", type=int, default=400, help="train faces to sample")
    p.add_argument("--seed", type=int, default=1, help="seed of the sample and of every frame's draws")
    p.add_argument("--face-model", default="../shared/models/face_detection_short_range.tflite", help="BlazeFace")
    p.add_argument("--val-split", type=float, default=0.0, help="sample only this held-out share of train (0 = all)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the held-out share, as train --split-seed")
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "onnxruntime"], help="what runs the model")
    p.add_argument("--tta", default=None, help="none, flip or shift (default: the checkpoint's own setting)")
    a = p.parse_args(argv)
    ds = load_split(a.data, "train")
    if a.val_split > 0:
        try:
            ds = split_train_val(ds, a.val_split, a.split_seed)[1]
        except DataError as e:
            p.error(str(e))
    images, labels = ds.images.numpy(), ds.labels.numpy()
    images = images.reshape(len(images), FACE, FACE)
    clf = EmotionClassifier.from_checkpoint(a.checkpoint, device="cpu", engine=a.engine, tta=a.tta)
    detector = FaceDetector(a.face_model)
    cfg, rng = FrameBenchConfig(seed=a.seed), np.random.default_rng(a.seed)
    order = rng.permutation(len(images))[: a.faces]
    direct = clf.predict_faces(images[order]).argmax(1)
    rows = []  # (label, direct prediction, own-framing prediction, variants' probabilities)
    for k, i in enumerate(order):
        frame, how = draw_frame(images[i], rng, cfg)
        found = [
            b
            for b in detector.detect(frame)
            if b.eyes is not None and b.x <= how["cx"] <= b.x + b.w and b.y <= how["cy"] <= b.y + b.h
        ]
        if not found:
            continue
        crops = [aligned_crop(frame, placed_eyes(how)), face_alone_crop(images[i], how, found[-1].eyes)]
        crops += [aligned_crop(frame, varied(found[-1].eyes, zoom, turn)) for zoom, turn in VARIANTS]
        probs = clf.predict_faces(np.stack(crops))
        rows.append((labels[i], direct[k], probs[0].argmax(), probs[1].argmax(), probs[2:]))
    print(f"{clf.name}: {len(rows)} of {len(order)} train faces found")
    if not rows:
        return 1
    y = np.array([r[0] for r in rows])
    print(f"direct crop           {np.mean(np.array([r[1] for r in rows]) == y):.4f}")
    print(f"own framing, resampled {np.mean(np.array([r[2] for r in rows]) == y):.4f}")
    print(f"app framing, face alone {np.mean(np.array([r[3] for r in rows]) == y):.4f}")
    variants = np.stack([r[4] for r in rows])
    for name, idx in AVERAGES.items():
        print(f"{name:22s}{np.mean(variants[:, idx].mean(1).argmax(1) == y):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
