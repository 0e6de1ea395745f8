"""How many faces BlazeFace finds in greyscale frames, as they are and tinted to skin tones (TRAIN faces).

Each sampled train face is placed in a grey frame as ``evaluate --frames`` draws it (``--min-scale`` sets the
smallest face width, as a fraction of the frame's) and BlazeFace runs on the frame as it is, on the frame
tinted to ``SKIN_TONE`` (what ``FaceDetector`` does with greyscale frames) and on a few other warm tones, to
show that the gain is not a property of one tone. Prints found share and false positives per variant.
Only the train split is read.

    python scripts/grey_frame_detection.py --data ../shared/fer2013 --faces 800 --seed 102 --min-scale 0.25
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from emotion.data.dataset import DataError
from emotion.data.splits import load_split
from emotion.evaluation.frames import FrameBenchConfig, draw_frame, match_face
from emotion.inference.faces import SKIN_TONE, FaceDetector

OTHER_TONES = ((1.0, 0.85, 0.75), (1.0, 0.78, 0.62), (1.0, 0.9, 0.85))  # warmer and paler than SKIN_TONE


def tinted(frame: np.ndarray, tone: tuple[float, float, float]) -> np.ndarray:
    """The frame's channels multiplied by ``tone`` (no longer greyscale, so the detector takes it as it is)."""
    return np.clip(frame.astype(np.float32) * np.asarray(tone, np.float32), 0, 255).round().astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    """Place train faces in grey frames and print how many each detector input finds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/fer2013", help="FER2013 folder (or packed copy) holding train")
    parser.add_argument("--faces", type=int, default=800, help="train faces to place in frames")
    parser.add_argument("--seed", type=int, default=102, help="seed of the face sample and the frames' draws")
    parser.add_argument("--min-scale", type=float, default=0.25, help="smallest face width / frame width")
    parser.add_argument(
        "--face-model", default="../shared/models/face_detection_short_range.tflite", help="BlazeFace .tflite"
    )
    args = parser.parse_args(argv)
    try:
        train = load_split(args.data, "train")
    except DataError as exc:
        parser.error(str(exc))
    detector = FaceDetector(model_path=args.face_model, tone_grey_frames=False)
    variants = {"as it is": None, f"SKIN_TONE {SKIN_TONE}": SKIN_TONE} | {f"tone {t}": t for t in OTHER_TONES}
    found, false_pos = dict.fromkeys(variants, 0), dict.fromkeys(variants, 0)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(train.images))[: args.faces]
    cfg = FrameBenchConfig(seed=args.seed, min_scale=args.min_scale, colour=0.0)
    for i in order:
        frame, how = draw_frame(np.asarray(train.images[i]), rng, cfg)
        for name, tone in variants.items():
            faces = [
                {"box": (b.x, b.y, b.w, b.h)} for b in detector.detect(frame if tone is None else tinted(frame, tone))
            ]
            hit = match_face(faces, how["cx"], how["cy"], how["side"])
            found[name] += hit is not None
            false_pos[name] += len(faces) - (hit is not None)
    print(f"{len(order)} train faces in grey frames, {args.min_scale:g}-{cfg.max_scale:g} of the frame width")
    for name in variants:
        print(f"{name:32s} found {found[name] / len(order) * 100:6.2f}%   false positives {false_pos[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
