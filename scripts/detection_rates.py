"""How many faces BlazeFace finds in camera-like frames, one detector choice against another (TRAIN faces).

Each sampled train face is placed in a frame as ``evaluate --frames`` draws it (``--min-scale``/``--max-scale``
set the face width, as a fraction of the frame's) and each variant's detector runs on it. Prints, per variant,
the share of faces found, false positives and milliseconds a frame. Only the train split is read.

``--compare tones``: grey frames only, BlazeFace on the frame as it is, tinted to ``SKIN_TONE`` (what
``FaceDetector`` does with greyscale frames) and to a few other warm tones, to show that the gain is not one
tone's. ``--compare tiles``: grey and colour frames, the whole frame alone (as video is detected), the Live tab's
tiles in turn (``TileSchedule``: the twelfth frame of a still scene, when every tile has had its turn; its
milliseconds are for all twelve frames) and the small-face pass of photos at a few tile confidence floors
(``TILE_MIN_CONFIDENCE``).

    python scripts/detection_rates.py --compare tones --data ../shared/fer2013 --faces 800 --seed 102 --min-scale 0.25
    python scripts/detection_rates.py --compare tiles --data ../shared/fer2013 --faces 600 --seed 105 --max-scale 0.25
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from emotion.data.dataset import DataError
from emotion.data.splits import load_split
from emotion.evaluation.frames import FrameBenchConfig, draw_frame, match_face
from emotion.inference import faces as faces_mod
from emotion.inference.detector_views import SKIN_TONE, TILE_MIN_CONFIDENCE, TileSchedule
from emotion.inference.faces import Box, FaceDetector

OTHER_TONES = ((1.0, 0.85, 0.75), (1.0, 0.78, 0.62), (1.0, 0.9, 0.85))  # warmer and paler than SKIN_TONE
TILE_FLOORS = (0.5, TILE_MIN_CONFIDENCE, 0.65)


def tinted(frame: np.ndarray, tone: tuple[float, float, float]) -> np.ndarray:
    """The frame's channels multiplied by ``tone`` (no longer greyscale, so the detector takes it as it is)."""
    return np.clip(frame.astype(np.float32) * np.asarray(tone, np.float32), 0, 255).round().astype(np.uint8)


def tone_variants(face_model: str) -> dict[str, Callable[[np.ndarray], list[Box]]]:
    """BlazeFace on a grey frame as it is and tinted to each tone."""
    detector = FaceDetector(model_path=face_model, tone_grey_frames=False)
    variants = {"as it is": detector.detect}
    for tone in (SKIN_TONE, *OTHER_TONES):
        name = f"SKIN_TONE {tone}" if tone == SKIN_TONE else f"tone {tone}"
        variants[name] = lambda frame, tone=tone: detector.detect(tinted(frame, tone))
    return variants


def tile_variants(face_model: str) -> dict[str, Callable[[np.ndarray], list[Box]]]:
    """The whole frame alone, then with the small-face pass at each tile confidence floor."""
    detector = FaceDetector(model_path=face_model)

    def with_tiles(frame: np.ndarray, floor: float) -> list[Box]:
        faces_mod.TILE_MIN_CONFIDENCE = floor  # the module global the tile pass reads
        try:
            return detector.detect(frame, small_faces=True)
        finally:
            faces_mod.TILE_MIN_CONFIDENCE = TILE_MIN_CONFIDENCE

    def live(frame: np.ndarray) -> list[Box]:
        schedule, boxes = TileSchedule(), []
        for _ in range(4 * schedule.every):  # a live stream's first frames of a still scene: every tile once
            boxes = detector.detect(frame, tiles=schedule.next())
            schedule.found([b.tile for b in boxes])
        return boxes

    variants = {"whole frame (video)": detector.detect, "live: tiles in turn, 12th frame": live}
    for floor in TILE_FLOORS:
        name = f"+ tiles, floor {floor:g}" + (" (photos)" if floor == TILE_MIN_CONFIDENCE else "")
        variants[name] = lambda frame, floor=floor: with_tiles(frame, floor)
    return variants


def main(argv: list[str] | None = None) -> int:
    """Place train faces in frames and print how many each detector variant finds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=("tones", "tiles"), default="tones", help="which choice to measure")
    parser.add_argument("--data", default="../shared/fer2013", help="FER2013 folder (or packed copy) holding train")
    parser.add_argument("--faces", type=int, default=800, help="train faces to place in frames")
    parser.add_argument("--seed", type=int, default=102, help="seed of the face sample and the frames' draws")
    parser.add_argument("--min-scale", type=float, default=1 / 8, help="smallest face width / frame width")
    parser.add_argument("--max-scale", type=float, default=1 / 2, help="largest face width / frame width")
    parser.add_argument(
        "--face-model", default="../shared/models/face_detection_short_range.tflite", help="BlazeFace .tflite"
    )
    args = parser.parse_args(argv)
    try:
        train = load_split(args.data, "train")
    except DataError as exc:
        parser.error(str(exc))
    variants = (tone_variants if args.compare == "tones" else tile_variants)(args.face_model)
    found, false_pos, seconds = dict.fromkeys(variants, 0), dict.fromkeys(variants, 0), dict.fromkeys(variants, 0.0)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(train.images))[: args.faces]
    colour = 0.0 if args.compare == "tones" else FrameBenchConfig.colour
    cfg = FrameBenchConfig(seed=args.seed, min_scale=args.min_scale, max_scale=args.max_scale, colour=colour)
    for i in order:
        frame, how = draw_frame(np.asarray(train.images[i]), rng, cfg)
        for name, detect in variants.items():
            start = time.perf_counter()
            boxes = detect(frame)
            seconds[name] += time.perf_counter() - start
            hit = match_face([{"box": (b.x, b.y, b.w, b.h)} for b in boxes], how["cx"], how["cy"], how["side"])
            found[name] += hit is not None
            false_pos[name] += len(boxes) - (hit is not None)
    kind = "grey frames" if args.compare == "tones" else "frames"
    print(f"{len(order)} train faces in {kind}, {args.min_scale:g}-{args.max_scale:g} of the frame width")
    n = max(1, len(order))
    for name in variants:
        print(
            f"{name:32s} found {found[name] / n * 100:6.2f}%   false positives {false_pos[name]:3d}   "
            f"{seconds[name] / n * 1000:5.1f} ms a frame"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
