"""How the app's crop of a face found in a camera frame differs from the face's own FER2013 crop (TRAIN faces).

Each sampled train face is placed in a frame exactly as the frame benchmark draws it (``evaluate --frames``:
size, tilt, shift, background, colour), BlazeFace finds it, and the aligned crop's similarity transform
(``align.fer_transform`` of the detector's eyes) is composed with the placement's (``frames.face_to_crop``).
Identity would be a perfect match; the script prints the spread of its scale (crop px per face px), rotation left over (degrees) and shift
of the face centre (48-px crop units), overall and per scale bin. These ranges set ``--frame-jitter``'s
(``emotion/data/augment.py``). Only the train split is read.

    python scripts/measure_crop_error.py --data ../shared/fer2013 --faces 1500 --seed 123
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from emotion.data.splits import load_split
from emotion.evaluation.frames import SCALE_BINS, FrameBenchConfig, draw_frame, face_to_crop
from emotion.inference.align import FACE
from emotion.inference.faces import FaceDetector


def crop_error(detector: FaceDetector, face: np.ndarray, rng: np.random.Generator, cfg: FrameBenchConfig):
    """(scale, rotation in degrees, x shift, y shift, face scale in the frame) of one face, or None if not found."""
    frame, how = draw_frame(face, rng, cfg)
    found = [
        b
        for b in detector.detect(frame)
        if b.eyes is not None and b.x <= how["cx"] <= b.x + b.w and b.y <= how["cy"] <= b.y + b.h
    ]
    if not found:
        return None
    m = face_to_crop(how, found[-1].eyes)
    a = m[:, :2]
    centre = a @ np.array([FACE / 2, FACE / 2]) + m[:, 2]
    return (
        math.hypot(a[0, 0], a[1, 0]),
        math.degrees(math.atan2(a[1, 0], a[0, 0])),
        centre[0] - FACE / 2,
        centre[1] - FACE / 2,
        how["scale"],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/fer2013", help="FER2013 folder (or packed copy) holding train")
    p.add_argument("--faces", type=int, default=1500, help="train faces to place in frames")
    p.add_argument("--seed", type=int, default=123, help="seed of the face sample and the frames' draws")
    p.add_argument(
        "--face-model", default="../shared/models/face_detection_short_range.tflite", help="BlazeFace .tflite"
    )
    a = p.parse_args(argv)
    ds = load_split(a.data, "train")
    images = ds.images.numpy()
    detector = FaceDetector(a.face_model, allow_download=False)
    rng, cfg = np.random.default_rng(a.seed), FrameBenchConfig()
    rows = [crop_error(detector, images[i], rng, cfg) for i in rng.permutation(len(images))[: a.faces]]
    rows = np.array([r for r in rows if r is not None])
    print(f"{len(rows)} of {a.faces} faces found")
    for k, name in enumerate(("scale", "rotation", "shift x", "shift y")):
        q = np.quantile(rows[:, k], [0.05, 0.25, 0.5, 0.75, 0.95])
        print(f"{name:9s} 5-25-50-75-95%: " + " ".join(f"{v:7.3f}" for v in q))
    for lo, hi in zip(SCALE_BINS[:-1], SCALE_BINS[1:], strict=True):
        m = (rows[:, 4] >= lo) & (rows[:, 4] < hi)
        if m.any():
            print(
                f"face 1/{round(1 / lo)}-1/{round(1 / hi)} of the frame ({m.sum()} faces): scale median "
                f"{np.median(rows[m, 0]):.3f}, |rotation| median {np.median(np.abs(rows[m, 1])):.1f} deg"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
