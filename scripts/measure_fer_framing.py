"""Measure how FER2013 TRAIN faces are framed, for the aligned face crop (emotion/inference/align.py).

Each sampled train face is upscaled 4x (48 -> 192 px), pasted in the middle of a grey 640x480 frame, and
shown to MediaPipe BlazeFace; its eye keypoints and box are mapped back into the 48x48 crop's coordinates
(continuous, the crop's top-left corner is (0, 0), a pixel is 1 unit). Medians (robust to the odd bad
detection) and quartiles over every face found are printed as JSON; the medians are the constants in
emotion/inference/align.py. Only the train split is read: framing constants must not be fitted on the test split.

    python scripts/measure_fer_framing.py --data ../shared/fer2013 --faces 3000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from emotion.inference.faces import FaceDetector

UPSCALE = 4  # 48 px faces are too small for BlazeFace at 640x480; 192 px is a typical webcam face
FRAME_H, FRAME_W = 480, 640


def sample_files(train: Path, n: int, seed: int) -> list[Path]:
    """``n`` train files drawn without replacement (all classes pooled), in a seeded order."""
    files = sorted(p for p in train.glob("*/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no images under {train}/<class>/; pass --data, the folder holding train/")
    rng = np.random.default_rng(seed)
    return [files[i] for i in rng.permutation(len(files))[:n]]


def measure_one(detector: FaceDetector, face48: np.ndarray) -> dict | None:
    """Eye keypoints and BlazeFace box of one face, in 48x48 crop coordinates; None when no single face is found."""
    side = 48 * UPSCALE
    frame = np.full((FRAME_H, FRAME_W, 3), 128, np.uint8)
    x0, y0 = (FRAME_W - side) // 2, (FRAME_H - side) // 2
    frame[y0 : y0 + side, x0 : x0 + side] = cv2.resize(face48, (side, side), interpolation=cv2.INTER_CUBIC)[:, :, None]
    boxes = detector.detect(frame)
    if len(boxes) != 1 or boxes[0].eyes is None:
        return None
    box = boxes[0]

    def to48(x: float, y: float) -> tuple[float, float]:
        return (x - x0) / UPSCALE, (y - y0) / UPSCALE

    rx, ry = to48(*box.eyes[:2])  # the eye on the image's left (the subject's right)
    lx, ly = to48(*box.eyes[2:])
    bx, by = to48(box.x, box.y)
    bw, bh = box.w / UPSCALE, box.h / UPSCALE
    eye_dist = math.hypot(lx - rx, ly - ry)
    return {
        "eye_cx": (rx + lx) / 2,
        "eye_cy": (ry + ly) / 2,
        "eye_dist": eye_dist,
        "eye_angle_deg": math.degrees(math.atan2(ly - ry, lx - rx)),
        "box_x": bx,
        "box_y": by,
        "box_w": bw,
        "box_h": bh,
        # where the eyes sit in the detector's box: used when a box comes without keypoints (Haar)
        "eye_cx_in_box": ((rx + lx) / 2 - bx) / bw,
        "eye_cy_in_box": ((ry + ly) / 2 - by) / bh,
        "eye_dist_in_box": eye_dist / bw,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/fer2013", help="FER2013 folder holding train/<class>/*.png")
    p.add_argument("--faces", type=int, default=3000, help="train faces to sample")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    p.add_argument(
        "--face-model",
        default="../shared/models/face_detection_short_range.tflite",
        help="MediaPipe BlazeFace short-range .tflite",
    )
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    detector = FaceDetector(a.face_model, allow_download=False)
    if detector.backend != "mediapipe":
        raise SystemExit(f"BlazeFace is needed for eye keypoints; got {detector.source}")
    files = sample_files(Path(a.data) / "train", a.faces, a.seed)
    rows = [r for f in files if (r := measure_one(detector, np.asarray(Image.open(f).convert("L")))) is not None]
    if not rows:
        raise SystemExit("BlazeFace found no face in the sample")
    stats = {}
    for key in rows[0]:
        v = np.array([r[key] for r in rows])
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        stats[key] = {"median": round(float(med), 4), "q1": round(float(q1), 4), "q3": round(float(q3), 4)}
    result = {
        "split": "train",
        "sampled": len(files),
        "found": len(rows),
        "seed": a.seed,
        "upscale": UPSCALE,
        "stats": stats,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
