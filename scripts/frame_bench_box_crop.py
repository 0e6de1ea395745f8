"""The frame benchmark with the previous crop (the square around the detector's box), for comparison.

The detector's eye keypoints are dropped, so ``crop_faces`` falls back to ``_fer_square`` as before the
eye-aligned crop; the frames are the same as ``evaluate --frames`` draws for the same seed and limit.

    python scripts/frame_bench_box_crop.py --data ../shared/fer2013 --split test --seed 0 --out /tmp/frames/box
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from emotion.data.splits import load_split
from emotion.evaluation.frames import (
    FrameBenchConfig,
    format_frames_table,
    run_frame_benchmark,
    write_frames_report,
)
from emotion.inference.classifier import EmotionClassifier, default_checkpoint
from emotion.inference.faces import FaceDetector
from emotion.inference.recognizer import Recognizer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="model (default: the shipped offline CNN)")
    p.add_argument("--data", default="../shared/fer2013", help="FER2013 folder")
    p.add_argument("--split", default="test", help="split whose faces are placed in frames")
    p.add_argument("--seed", type=int, default=0, help="seed of the frames' draws")
    p.add_argument("--limit", type=int, default=None, help="only this many faces (a seeded random subset)")
    p.add_argument(
        "--face-model", default="../shared/models/face_detection_short_range.tflite", help="BlazeFace .tflite"
    )
    p.add_argument("--engine", default="onnxruntime", help="auto, torch or onnxruntime")
    p.add_argument("--out", required=True, help="folder for frames.json and frames.md")
    a = p.parse_args(argv)
    detector = FaceDetector(a.face_model)
    detect = detector.detect
    detector.detect = lambda rgb: [replace(b, eyes=None) for b in detect(rgb)]  # no eyes: the box square crop
    classifier = EmotionClassifier.from_checkpoint(a.checkpoint or default_checkpoint(), engine=a.engine)
    ds = load_split(a.data, a.split)
    report = run_frame_benchmark(
        Recognizer(classifier, detector),
        ds.images.numpy(),
        ds.labels.numpy(),
        FrameBenchConfig(seed=a.seed, limit=a.limit),
    )
    write_frames_report(report, a.out)
    print(format_frames_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
