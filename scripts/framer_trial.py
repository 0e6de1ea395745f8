"""Does the framing refiner close the frame gap? Held-out TRAIN faces in frames, with and without it.

The faces that ``train --val-split 0.05 --split-seed 0`` holds out (none of the held-out networks, nor the
refiner, trained on them) are placed in frames as ``evaluate --frames`` draws them (``--seeds``) and found by
BlazeFace as photos are. On the same found faces, the mean probabilities of the given networks classify the
direct 48x48 crop, the app's crop, and the crop re-framed by the refiner (1 or 2 passes; all of its correction,
or its scale and shift only). Per draw and pooled: accuracy on found faces, faces gained and lost against the
app's crop, and how far each crop's framing is from the face's own (log-scale SD, tilt and shift RMS).

    python scripts/framer_trial.py assets/heldout/cnn-s3[1-4].pt --framer /tmp/framer.pt --seeds 3
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from emotion.data.dataset import split_train_val
from emotion.data.splits import load_split
from emotion.evaluation.frames import FrameBenchConfig, draw_frame, face_to_crop, match_face
from emotion.inference.align import FACE, aligned_crop
from emotion.inference.classifier import EmotionClassifier
from emotion.inference.faces import FaceDetector
from emotion.inference.framer import DEFAULT_FRAMER, FramingRefiner

CROPS = ("app crop", "framer 1 pass", "framer 2 passes", "framer 1 pass, no tilt", "framer 2 passes, no tilt")


def framing_miss(how: dict, eyes: tuple[float, ...]) -> tuple[float, float, float]:
    """(log scale, tilt in degrees, centre shift in px) of the crop on ``eyes`` against the face's own framing."""
    m = face_to_crop(how, eyes)
    centre = m[:, :2] @ np.array([FACE / 2, FACE / 2]) + m[:, 2] - FACE / 2
    return math.log(math.hypot(*m[:, 0])), math.degrees(math.atan2(m[1, 0], m[0, 0])), float(np.hypot(*centre))


def crop_eyes(frame: np.ndarray, eyes: tuple, full: FramingRefiner, no_tilt: FramingRefiner) -> list[tuple]:
    """The eyes of each of ``CROPS`` for one face."""
    out = [eyes]
    for refiner in (full, no_tilt):
        once = refiner.refine(frame, [eyes])[0]
        out += [once, refiner.refine(frame, [once])[0]]
    return out


def run_seed(images, labels, detector, refiners, predict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Found faces' correctness (faces, crops) and direct-crop correctness (faces,) for one draw of frames."""
    rng, cfg = np.random.default_rng(seed), FrameBenchConfig(seed=seed)
    found, crops, misses = [], [], []
    for i in rng.permutation(len(images)):
        frame, how = draw_frame(images[i], rng, cfg)
        boxes = [b for b in detector.detect(frame, small_faces=True) if b.eyes is not None]
        hit = match_face([{"box": (b.x, b.y, b.w, b.h), "b": b} for b in boxes], how["cx"], how["cy"], how["side"])
        if hit is None:
            continue
        eyes = crop_eyes(frame, hit["b"].eyes, *refiners)
        cut = [aligned_crop(frame, e) for e in eyes]
        if any(c is None for c in cut):
            continue
        found.append(i)
        crops.append(cut)
        misses.append([framing_miss(how, e) for e in eyes])
    found, crops, misses = np.array(found, dtype=int), np.array(crops), np.array(misses)
    right = np.stack([predict(crops[:, k]) == labels[found] for k in range(len(CROPS))], 1)
    direct = predict(images[found]) == labels[found]
    print(f"\nseed {seed}: {len(found)} of {len(images)} found; direct crops {direct.mean():.2%}")
    print("| crop | log-scale SD | tilt RMS | shift RMS | acc. on found | gap | right only here / only app crop |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k, name in enumerate(CROPS):
        ls, tilt, shift = misses[:, k].T
        gained, lost = np.sum(right[:, k] & ~right[:, 0]), np.sum(right[:, 0] & ~right[:, k])
        print(
            f"| {name} | {ls.std():.3f} | {np.sqrt(np.mean(tilt**2)):.2f}° | {np.sqrt(np.mean(shift**2)):.2f} px | "
            f"{right[:, k].mean():.2%} | {(direct.mean() - right[:, k].mean()) * 100:.2f} | {gained} / {lost} |"
        )
    return right, direct


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="networks trained without the held-out faces")
    p.add_argument("--framer", default=str(DEFAULT_FRAMER), help="refiner file (train_cli.py train-framer)")
    p.add_argument("--data", default=".data/fer2013", help="FER2013 folder or packed copy; only train is read")
    p.add_argument("--seeds", type=int, nargs="+", default=[3], help="frame draws (evaluate --frames --seed)")
    p.add_argument("--val-split", type=float, default=0.05, help="the held-out share of train, as train --val-split")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the held-out share, as train --split-seed")
    p.add_argument("--face-model", default="../shared/models/face_detection_short_range.tflite", help="BlazeFace")
    p.add_argument("--engine", default="onnxruntime", choices=["auto", "torch", "onnxruntime"], help="runtime")
    a = p.parse_args(argv)
    try:  # a missing dataset, detector or refiner, a broken checkpoint: a message, not a traceback
        held = split_train_val(load_split(a.data, "train"), a.val_split, a.split_seed)[1]
        nets = [EmotionClassifier.from_checkpoint(c, device="cpu", engine=a.engine) for c in a.checkpoints]
        detector = FaceDetector(a.face_model, allow_download=False, framer=None)
        refiners = (FramingRefiner.from_file(a.framer), FramingRefiner.from_file(a.framer, tilt=False))
    except (ValueError, OSError) as e:  # DataError, CheckpointError and FramerError are ValueErrors
        p.error(str(e))
    images, labels = held.images.numpy().reshape(-1, FACE, FACE), held.labels.numpy()

    def predict(faces: np.ndarray) -> np.ndarray:
        # In chunks: ONNX Runtime sizes each network's memory arena for the largest batch it sees.
        chunks = [np.mean([n.predict_faces(faces[i : i + 128]) for n in nets], 0) for i in range(0, len(faces), 128)]
        return np.concatenate(chunks).argmax(1)

    runs = [run_seed(images, labels, detector, refiners, predict, seed) for seed in a.seeds]
    if len(runs) > 1:
        right, direct = np.concatenate([r for r, _ in runs]), np.concatenate([d for _, d in runs])
        print(f"\nseeds {' + '.join(map(str, a.seeds))}: {len(right)} found; direct crops {direct.mean():.2%}")
        for k, name in enumerate(CROPS):
            gained, lost = np.sum(right[:, k] & ~right[:, 0]), np.sum(right[:, 0] & ~right[:, k])
            print(
                f"| {name} | {right[:, k].mean():.2%} | gap {(direct.mean() - right[:, k].mean()) * 100:.2f} | {gained} / {lost} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
