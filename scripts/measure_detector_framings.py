"""Record how the app frames each TRAIN face it finds in a camera-like frame, for ``--detector-framings``.

Each training face (the held-out part, ``--val-split``/``--split-seed``, is skipped) is placed in one frame drawn
as the frame benchmark draws it (``evaluate --frames``: size, tilt, shift, background, colour), BlazeFace finds it
as photos are searched (with the small-face pass), and the app's aligned crop of it is recorded as the similarity
from the face's own 48x48 crop to the app's crop (``frames.face_to_crop``; NaN where the face was not found).
Training then cuts a share of the faces with their own recorded framing instead of a random one, so the networks
learn the crops the app really gives them. Only the train split is read; run it once per seed for more framings.

    python scripts/measure_detector_framings.py --data .data/fer2013 --seed 100 --out runs/framings-100.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from emotion.data.dataset import split_train_val
from emotion.data.framings import face_keys
from emotion.data.splits import load_split
from emotion.evaluation.frames import FrameBenchConfig, draw_frame, face_to_crop, match_face
from emotion.inference.faces import FaceDetector


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/fer2013", help="FER2013 folder (or packed copy) holding train")
    p.add_argument("--val-split", type=float, default=0.05, help="held-out share of train to skip (as in training)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of that held-out split (as in training)")
    p.add_argument("--seed", type=int, default=100, help="seed of the frames' draws")
    p.add_argument("--limit", type=int, default=None, help="only the first N training faces (a quick check)")
    p.add_argument("--out", required=True, help="where to write the .npz (keys, framings)")
    p.add_argument(
        "--face-model", default="../shared/models/face_detection_short_range.tflite", help="BlazeFace .tflite"
    )
    a = p.parse_args(argv)
    train, _ = split_train_val(load_split(a.data, "train"), a.val_split, a.split_seed)
    images = train.images.numpy()[: a.limit]
    detector = FaceDetector(a.face_model, allow_download=False)
    rng, cfg = np.random.default_rng(a.seed), FrameBenchConfig()
    framings = np.full((len(images), 2, 3), np.nan, dtype=np.float32)
    t0 = time.perf_counter()
    for i, face in enumerate(images):
        frame, how = draw_frame(face, rng, cfg)
        boxes = detector.detect(frame, small_faces=True)
        hit = match_face(
            [{"box": (b.x, b.y, b.w, b.h), "eyes": b.eyes} for b in boxes], how["cx"], how["cy"], how["side"]
        )
        if hit is not None and hit["eyes"] is not None:
            framings[i] = face_to_crop(how, hit["eyes"])
        if (i + 1) % 2000 == 0:
            print(f"{i + 1}/{len(images)} faces, {time.perf_counter() - t0:.0f} s", flush=True)
    found = np.isfinite(framings[:, 0, 0])
    np.savez(a.out, keys=face_keys(images), framings=framings)
    print(f"{found.sum()} of {len(images)} faces found; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
