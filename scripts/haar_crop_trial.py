"""Trial: the app's crop moved onto the Haar face box FER2013 was cut with (``emotion/inference/fer_box.py``).

Each face of the held-out part of train (the faces none of the checkpoint's networks trained on) is placed in
frames as the frame benchmark draws them (``evaluate --frames``), BlazeFace finds it (photo detection, with the
small-face tiles), and two crops of the same found face are classified: the app's crop (``align.framing_eyes``)
and the same crop moved onto the Haar box (``fer_box.HaarFraming``). Prints, as JSON, both crops' accuracy on
the found faces against the direct 48x48 crops' accuracy on the same faces, their agreement with the direct
crop, how far each frames the face from its FER2013 crop (log-scale SD, tilt RMS, centre RMS; and the shares
within 5% / 10% of scale, 2 / 3 px of centre), the refinement's cost and per-scale-bin accuracies.

    python scripts/haar_crop_trial.py --checkpoint ho9.pt --data .data/fer2013 --seed 31 --draws 3 \
        --face-model ../shared/models/face_detection_short_range.tflite

``ho9.pt``: ``python train_cli.py ship assets/heldout/cnn-s3[1-9].pt --tta flip --weights int8 --out ho9.pt``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from emotion.evaluation.evaluate import HELD_OUT, load_eval_split
from emotion.evaluation.frames import SCALE_BINS, FrameBenchConfig, draw_frame, face_to_crop
from emotion.inference.align import FACE, aligned_crop
from emotion.inference.classifier import EmotionClassifier
from emotion.inference.faces import FaceDetector
from emotion.inference.fer_box import HaarFraming


def framing_miss(how: dict, eyes: tuple[float, float, float, float]) -> tuple[float, float, float]:
    """(log scale, tilt in degrees, centre miss in px) of the crop on ``eyes`` against the face's FER2013 crop."""
    m = face_to_crop(how, eyes)
    a = m[:, :2]
    centre = a @ np.array([FACE / 2, FACE / 2]) + m[:, 2]
    return (
        math.log(math.hypot(a[0, 0], a[1, 0])),
        math.degrees(math.atan2(a[1, 0], a[0, 0])),
        math.hypot(*(centre - 24)),
    )


def miss_summary(miss: np.ndarray) -> dict:
    """Spread of (log scale, tilt, centre) rows: SD / RMS, and the shares of close framings."""
    log_scale = miss[:, 0] - np.median(miss[:, 0])
    return {
        "log_scale_sd": float(miss[:, 0].std()),
        "tilt_rms": float(np.sqrt((miss[:, 1] ** 2).mean())),
        "centre_rms": float(np.sqrt((miss[:, 2] ** 2).mean())),
        "scale_within_5pct": float(np.mean(abs(log_scale) < 0.05)),
        "scale_within_10pct": float(np.mean(abs(log_scale) < 0.10)),
        "centre_within_2px": float(np.mean(miss[:, 2] < 2)),
        "centre_within_3px": float(np.mean(miss[:, 2] < 3)),
    }


def predicted(classifier: EmotionClassifier, faces: np.ndarray) -> np.ndarray:
    """Class indices, 128 faces a batch: ONNX Runtime sizes each network's arena for the largest batch it sees."""
    return np.concatenate([classifier.predict_faces(faces[i : i + 128]).argmax(1) for i in range(0, len(faces), 128)])


def run(args: argparse.Namespace) -> dict:
    classifier = EmotionClassifier.from_checkpoint(args.checkpoint, engine="onnxruntime")
    detector = FaceDetector(model_path=args.face_model)
    haar = HaarFraming()
    faces = load_eval_split(classifier, args.data, HELD_OUT)
    images, labels = faces.images.numpy(), faces.labels.numpy()
    cfg = FrameBenchConfig(seed=args.seed, draws=args.draws)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(images))[: args.limit]
    direct = predicted(classifier, images[order])
    crops: dict[str, list] = {"app": [], "haar": []}
    rows, misses, seconds, moved = [], {"app": [], "haar": []}, 0.0, 0
    for draw in range(args.draws):
        for k, i in enumerate(order):
            frame, how = draw_frame(images[i], rng, cfg)
            boxes = [
                b
                for b in detector.detect(frame, small_faces=True)
                if b.eyes is not None and b.x <= how["cx"] <= b.x + b.w and b.y <= how["cy"] <= b.y + b.h
            ]
            if not boxes:
                continue
            box = min(boxes, key=lambda b: math.hypot(b.x + b.w / 2 - how["cx"], b.y + b.h / 2 - how["cy"]))
            start = time.perf_counter()
            eyes = {"app": box.eyes, "haar": haar.refine(frame, box.eyes)}
            seconds += time.perf_counter() - start
            moved += eyes["haar"] != box.eyes
            cut = {name: aligned_crop(frame, e) for name, e in eyes.items()}
            if any(c is None for c in cut.values()):
                continue
            for name in crops:
                crops[name].append(cut[name])
                misses[name].append(framing_miss(how, eyes[name]))
            rows.append((draw, int(labels[i]), int(direct[k]), how["scale"]))
    table = np.array(rows)
    truth, direct_pred, scale = table[:, 1], table[:, 2], table[:, 3]
    pred = {name: predicted(classifier, np.stack(c)) for name, c in crops.items()}
    report = {
        "found": len(table),
        "moved_by_haar": moved,
        "ms_per_refine": 1000 * seconds / max(1, len(table)),
        "direct_accuracy": float((direct_pred == truth).mean()),
    }
    for name, p in pred.items():
        report[name] = {
            "accuracy": float((p == truth).mean()),
            "gap_by_draw": [
                round(
                    100
                    * float(
                        ((direct_pred == truth) & (table[:, 0] == d)).sum() - ((p == truth) & (table[:, 0] == d)).sum()
                    )
                    / max(1, int((table[:, 0] == d).sum())),
                    2,
                )
                for d in range(args.draws)
            ],
            "agreement_with_direct": float((p == direct_pred).mean()),
            "framing_miss": miss_summary(np.array(misses[name])),
            "accuracy_by_scale": {
                f"{lo:.3f}-{hi:.3f}": float((p == truth)[(scale >= lo) & (scale < hi)].mean())
                for lo, hi in pairwise(SCALE_BINS)
            },
        }
    report["right_only_with_haar"] = int(((pred["haar"] == truth) & (pred["app"] != truth)).sum())
    report["right_only_without"] = int(((pred["app"] == truth) & (pred["haar"] != truth)).sum())
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="ensemble whose networks all held out the same faces")
    parser.add_argument("--data", default=".data/fer2013", help="FER2013 folder or packed copy")
    parser.add_argument("--seed", type=int, default=31, help="seed of the frames' draws")
    parser.add_argument("--draws", type=int, default=3, help="frames per face")
    parser.add_argument("--limit", type=int, default=None, help="only this many faces (a seeded subset)")
    parser.add_argument("--face-model", required=True, help="MediaPipe BlazeFace .tflite")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
