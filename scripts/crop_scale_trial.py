"""How a tighter or wider aligned crop does on held-out train faces found in frames (docs/frames_benchmark.md).

Each held-out train face (``train --val-split 0.05 --split-seed 0`` by default) is placed in a frame as ``evaluate --frames``
draws it, BlazeFace finds it once, and the app's crop is cut again at each factor of its side (below 1: tighter,
the eyes drawn together about their midpoint), then classified by the mean probabilities of the given
networks (flip TTA, ONNX Runtime fp32 by default). Prints, per draw and pooled, the accuracy on found faces at
each factor, and how many faces each factor gets right that the app's crop gets wrong, and the reverse.

    python scripts/crop_scale_trial.py assets/heldout/cnn-s3[1-4].pt --data .data/fer2013 --seeds 4 5
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from emotion.data.dataset import split_train_val
from emotion.data.splits import load_split
from emotion.evaluation.frames import FrameBenchConfig, draw_frame, match_face
from emotion.inference.align import FACE
from emotion.inference.classifier import EmotionClassifier
from emotion.inference.faces import FaceDetector, crop_faces


def resized_eyes(eyes: tuple[float, float, float, float], factor: float) -> tuple[float, float, float, float]:
    """Eyes that make the crop ``factor`` times as wide about the same centre (the crop's side follows the eye
    distance): spread by ``factor`` about their midpoint."""
    rx, ry, lx, ly = eyes
    mx, my, hx, hy = (rx + lx) / 2, (ry + ly) / 2, (lx - rx) / 2 * factor, (ly - ry) / 2 * factor
    return (mx - hx, my - hy, mx + hx, my + hy)


def found_crops(images: np.ndarray, detector: FaceDetector, seed: int, factors: list[float]):
    """Indices of the faces found in the frames of ``seed`` and, per factor, their crops (N, 48, 48)."""
    rng, cfg = np.random.default_rng(seed), FrameBenchConfig(seed=seed)
    found, crops = [], {f: [] for f in factors}
    for i in rng.permutation(len(images)):
        frame, how = draw_frame(images[i], rng, cfg)
        boxes = [b for b in detector.detect(frame, small_faces=True) if b.eyes is not None]
        hit = match_face([{"box": (b.x, b.y, b.w, b.h), "b": b} for b in boxes], how["cx"], how["cy"], how["side"])
        if hit is None:
            continue
        found.append(i)
        for f in factors:
            crops[f].append(crop_faces(frame, [replace(hit["b"], eyes=resized_eyes(hit["b"].eyes, f))])[0])
    return np.array(found, dtype=int), {f: np.stack(c) for f, c in crops.items()}


def report(title: str, right: dict[float, np.ndarray]) -> None:
    """One table: accuracy on found faces per factor, and faces gained / lost against factor 1."""
    base = right[1.0]
    print(
        f"\n{title}: {len(base)} found faces\n| crop side | acc. on found | right only here / only at 1 |\n|---:|---:|---:|"
    )
    for f, r in right.items():
        print(f"| {f:g} | {r.mean():.2%} | {np.sum(r & ~base)} / {np.sum(base & ~r)} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="networks whose mean probabilities classify each crop")
    p.add_argument("--data", default="../shared/fer2013", help="dataset folder or packed copy; train is read")
    p.add_argument("--val-split", type=float, default=0.05, help="the held-out share of train, as train --val-split")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the held-out share, as train --split-seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[4, 5], help="frame draws (evaluate --frames --seed)")
    p.add_argument("--factors", type=float, nargs="+", default=[1.0, 0.95, 0.9, 0.85], help="crop sides to try")
    p.add_argument("--face-model", default="../shared/models/face_detection_short_range.tflite", help="BlazeFace")
    p.add_argument("--engine", default="onnxruntime", choices=["auto", "torch", "onnxruntime"], help="runtime")
    a = p.parse_args(argv)
    factors = [1.0] + [f for f in a.factors if f != 1.0]
    if not all(math.isfinite(f) and 0.25 <= f <= 4 for f in factors):
        p.error(f"--factors must lie between 0.25 and 4, got {a.factors}")
    try:  # a missing dataset or detector, a broken checkpoint: a message, not a traceback
        held = split_train_val(load_split(a.data, "train"), a.val_split, a.split_seed)[1]
        nets = [EmotionClassifier.from_checkpoint(c, device="cpu", engine=a.engine) for c in a.checkpoints]
        detector = FaceDetector(a.face_model, allow_download=False)
    except (ValueError, OSError) as e:  # DataError and CheckpointError are ValueErrors
        p.error(str(e))
    images, labels = held.images.numpy().reshape(-1, FACE, FACE), held.labels.numpy()

    def predict(faces: np.ndarray) -> np.ndarray:
        # In chunks: ONNX Runtime sizes each network's memory arena for the largest batch it sees.
        chunks = [np.mean([n.predict_faces(faces[i : i + 128]) for n in nets], 0) for i in range(0, len(faces), 128)]
        return np.concatenate(chunks).argmax(1)

    pooled: dict[float, list[np.ndarray]] = {f: [] for f in factors}
    for seed in a.seeds:
        found, crops = found_crops(images, detector, seed, factors)
        right = {f: predict(c) == labels[found] for f, c in crops.items()}
        direct = predict(images[found]) == labels[found]
        report(f"seed {seed} (direct crops {direct.mean():.2%})", right)
        for f in factors:
            pooled[f].append(right[f])
    if len(a.seeds) > 1:
        report(f"seeds {' + '.join(map(str, a.seeds))}", {f: np.concatenate(r) for f, r in pooled.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
