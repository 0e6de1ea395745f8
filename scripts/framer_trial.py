"""Does the framing refiner close the frame gap? Held-out TRAIN faces in frames, with and without it.

The faces that ``train --val-split 0.05 --split-seed 0`` holds out (none of the held-out networks, nor the
refiner, trained on them) are placed in frames as ``evaluate --frames`` draws them (``--seed``) and found by
BlazeFace as photos are. On the same found faces, each network classifies the direct 48x48 crop, the app's
crop on the detector's eyes, and the crop after 1 and 2 refiner passes; the script prints accuracy and the gap
to the direct crops, and how far each crop's framing is from the face's own (log-scale SD, tilt and shift RMS).

    python scripts/framer_trial.py --checkpoints assets/heldout/cnn-s31.pt assets/heldout/cnn-s32.pt --seed 4
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
from emotion.evaluation.frames import FrameBenchConfig, draw_frame, face_to_crop
from emotion.inference.align import FACE, aligned_crop
from emotion.inference.classifier import EmotionClassifier
from emotion.inference.faces import FaceDetector
from emotion.inference.framer import DEFAULT_FRAMER, FramingRefiner

CROPS = ("direct", "app crop", "framer 1 pass", "framer 2 passes")


def framing_miss(how: dict, eyes: tuple[float, ...]) -> tuple[float, float, float]:
    """(log scale, tilt in degrees, centre shift in px) of the crop on ``eyes`` against the face's own framing."""
    m = face_to_crop(how, eyes)
    centre = m[:, :2] @ np.array([FACE / 2, FACE / 2]) + m[:, 2] - FACE / 2
    return math.log(math.hypot(*m[:, 0])), math.degrees(math.atan2(m[1, 0], m[0, 0])), float(np.hypot(*centre))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", nargs="+", required=True, help="networks trained without the held-out faces")
    p.add_argument("--framer", default=str(DEFAULT_FRAMER), help="refiner file (train_cli.py train-framer)")
    p.add_argument("--data", default=".data/fer2013", help="FER2013 folder or packed copy; only train is read")
    p.add_argument("--seed", type=int, default=4, help="seed of every frame's draws")
    p.add_argument("--limit", type=int, default=None, help="only this many faces (a quick check)")
    p.add_argument("--face-model", default="../shared/models/face_detection_short_range.tflite", help="BlazeFace")
    a = p.parse_args(argv)
    held = split_train_val(load_split(a.data, "train"), 0.05, 0)[1]
    images, labels = held.images.numpy().reshape(-1, FACE, FACE), held.labels.numpy()
    nets = [EmotionClassifier.from_checkpoint(c, device="cpu", engine="onnxruntime") for c in a.checkpoints]
    detector, refiner = FaceDetector(a.face_model, framer=None), FramingRefiner.from_file(a.framer)
    cfg, rng = FrameBenchConfig(seed=a.seed), np.random.default_rng(a.seed)
    preds, misses, found = [], [], []
    for i in rng.permutation(len(images))[: a.limit]:
        frame, how = draw_frame(images[i], rng, cfg)
        boxes = [b for b in detector.detect(frame, small_faces=True) if b.x <= how["cx"] <= b.x + b.w]
        boxes = [b for b in boxes if b.eyes is not None and b.y <= how["cy"] <= b.y + b.h]
        if not boxes:
            continue
        eyes = [boxes[-1].eyes]
        for _ in range(2):
            eyes += refiner.refine(frame, eyes[-1:])
        crops = np.stack([images[i]] + [aligned_crop(frame, e) for e in eyes])
        preds.append([net.predict_faces(crops).argmax(1) for net in nets])
        misses.append([framing_miss(how, e) for e in eyes])
        found.append(labels[i])
    y, preds, misses = np.array(found), np.array(preds), np.array(misses)  # preds: (faces, nets, crops)
    print(f"held-out faces {len(images)}, frames seed {a.seed}: {len(y)} found")
    for k, name in enumerate(CROPS[1:]):
        ls, tilt, shift = misses[:, k].T
        print(
            f"  {name:16s} framing miss: log-scale SD {ls.std():.3f}, tilt RMS {np.sqrt(np.mean(tilt**2)):.2f} deg, "
            f"shift RMS {np.sqrt(np.mean(shift**2)):.2f} px"
        )
    print("network            " + "  ".join(f"{c:>16s}" for c in CROPS) + "   gaps (points)")
    for n, path in enumerate(a.checkpoints):
        acc = [(preds[:, n, c] == y).mean() * 100 for c in range(len(CROPS))]
        gaps = " / ".join(f"{acc[0] - v:.2f}" for v in acc[1:])
        print(f"{Path(path).name:18s} " + "  ".join(f"{v:15.2f}%" for v in acc) + f"   {gaps}")
    mean = [(preds[:, :, c] == y[:, None]).mean() * 100 for c in range(len(CROPS))]
    print(
        f"{'mean':18s} "
        + "  ".join(f"{v:15.2f}%" for v in mean)
        + "   "
        + " / ".join(f"{mean[0] - v:.2f}" for v in mean[1:])
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
