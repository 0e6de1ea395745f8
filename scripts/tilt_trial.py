"""Trial: should the aligned crop undo only part of the eye line's tilt? (docs/frames_benchmark.md)

FER2013 keeps each face's own head roll (its eye line's tilt spreads over about +-10 deg) and BlazeFace's eye
keypoints on a face in a frame miss by as much again, so levelling every face fully moves the crop further
from the face's FER2013 framing than it brings it back. The candidate crops undo ``KEEP`` of an eye-line tilt
up to ``NEAR`` degrees and all of a tilt from ``FAR`` degrees on (a face turned sideways is levelled), and may
take the crop's scale from the box alone. Held-out train faces are placed in frames as ``evaluate --frames``
draws them, each frame is detected once, and every crop of the found face is classified by the mean
probabilities of the given networks (flip TTA, ONNX Runtime fp32 by default).

    python scripts/tilt_trial.py assets/heldout/cnn-s3[1-4].pt --data .data/fer2013 --seeds 3 4 5
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
from emotion.evaluation.frames import FrameBenchConfig, draw_frame, face_to_crop
from emotion.inference.align import EYE_CX_IN_BOX, EYE_CY_IN_BOX, EYE_DIST_IN_BOX, FACE
from emotion.inference.classifier import EmotionClassifier
from emotion.inference.faces import FaceDetector, crop_faces

KEEP, NEAR, FAR = 0.4, 45.0, 90.0  # KEEP fitted on train faces outside the held-out share (tilt RMS), NEAR/FAR set


def undone_tilt(theta: float, keep: float = KEEP, near: float = NEAR, far: float = FAR) -> float:
    """The part (radians) of an eye-line tilt ``theta`` (radians) that the crop undoes: ``keep`` of it up to
    ``near`` degrees, all of it from ``far`` degrees on, the part left in between shrinking linearly."""
    a = abs(math.degrees(theta))
    if a <= near:
        return keep * theta
    left = 0.0 if a >= far else (1 - keep) * near * (far - a) / (far - near)
    return math.copysign(math.radians(a - left), theta)


def crop_eyes(box, tilt=undone_tilt, box_weight: float = 0.5) -> tuple[float, float, float, float]:
    """The eyes a crop of ``box`` is aligned on, for a tilt rule and a weight of the box in the eye distance.

    ``box.eyes`` are ``align.framing_eyes`` of the box and BlazeFace's keypoints, which keep the keypoints' tilt
    and put half their distance into the crop's scale; both are read back from them."""
    rx, ry, lx, ly = box.eyes
    theta = math.atan2(ly - ry, lx - rx)
    keypoint_dist = 2 * math.hypot(lx - rx, ly - ry) - EYE_DIST_IN_BOX * box.w
    t = tilt(theta)
    cos, sin = math.cos(t), math.sin(t)
    half = (box_weight * EYE_DIST_IN_BOX * box.w + (1 - box_weight) * keypoint_dist) / 2
    ox, oy = (EYE_CX_IN_BOX - 0.5) * box.w, (EYE_CY_IN_BOX - 0.5) * box.h
    cx, cy = box.x + box.w / 2 + cos * ox - sin * oy, box.y + box.h / 2 + sin * ox + cos * oy
    return (cx - half * cos, cy - half * sin, cx + half * cos, cy + half * sin)


CROPS = {
    "app crop (levelled)": None,  # the detector's own eyes, as the app crops today
    "A: tilt undone in part": dict(tilt=undone_tilt),
    "B: A, scale from the box": dict(tilt=undone_tilt, box_weight=1.0),
}


def tilt_left(how: dict, eyes: tuple[float, float, float, float]) -> float:
    """Degrees between the crop's framing of the placed face and the face's FER2013 framing."""
    m = face_to_crop(how, eyes)
    return math.degrees(math.atan2(m[1, 0], m[0, 0]))


def run_seed(images, labels, detector, predict, seed: int) -> None:
    """One draw of frames: each crop's accuracy on the found faces, its tilt miss, and the direct crops'."""
    rng, cfg = np.random.default_rng(seed), FrameBenchConfig(seed=seed)
    order = rng.permutation(len(images))
    crops = {name: [] for name in CROPS}
    misses = {name: [] for name in CROPS}
    found = []
    for i in order:
        frame, how = draw_frame(images[i], rng, cfg)
        boxes = [
            b
            for b in detector.detect(frame, small_faces=True)
            if b.eyes is not None and b.x <= how["cx"] <= b.x + b.w and b.y <= how["cy"] <= b.y + b.h
        ]
        if not boxes:
            continue
        box = min(boxes, key=lambda b: math.hypot(b.x + b.w / 2 - how["cx"], b.y + b.h / 2 - how["cy"]))
        found.append(i)
        for name, kw in CROPS.items():
            eyes = box.eyes if kw is None else crop_eyes(box, **kw)
            crops[name].append(crop_faces(frame, [replace(box, eyes=eyes)])[0])
            misses[name].append(tilt_left(how, eyes))
    found = np.array(found)
    direct = predict(images[found]) == labels[found]
    print(f"\nseed {seed}: {len(found)} of {len(images)} found; direct crops {direct.mean():.2%}")
    print("| crop | tilt miss RMS | acc. on found | gap | right where the app crop is wrong / the reverse |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for name in CROPS:
        right = predict(np.stack(crops[name])) == labels[found]
        base = right if base is None else base
        rms = math.sqrt(np.mean(np.square(misses[name])))
        flips = f"{np.sum(right & ~base)} / {np.sum(base & ~right)}"
        print(f"| {name} | {rms:.2f} | {right.mean():.2%} | {(direct.mean() - right.mean()) * 100:.2f} | {flips} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="networks whose mean probabilities classify each crop")
    p.add_argument("--data", default="../shared/fer2013", help="dataset folder or packed copy; train is read")
    p.add_argument("--seeds", type=int, nargs="+", default=[3], help="frame draws (evaluate --frames --seed)")
    p.add_argument("--face-model", default="../shared/models/face_detection_short_range.tflite", help="BlazeFace")
    p.add_argument("--engine", default="onnxruntime", choices=["auto", "torch", "onnxruntime"], help="runtime")
    a = p.parse_args(argv)
    try:  # a missing dataset or detector, a broken checkpoint: a message, not a traceback
        held = split_train_val(load_split(a.data, "train"), 0.05, 0)[1]
        nets = [EmotionClassifier.from_checkpoint(c, device="cpu", engine=a.engine) for c in a.checkpoints]
        detector = FaceDetector(a.face_model, allow_download=False)
    except (ValueError, OSError) as e:  # DataError and CheckpointError are ValueErrors
        p.error(str(e))
    images, labels = held.images.numpy().reshape(-1, FACE, FACE), held.labels.numpy()

    def predict(faces: np.ndarray) -> np.ndarray:
        # In chunks: ONNX Runtime sizes each network's memory arena for the largest batch it sees.
        chunks = [np.mean([n.predict_faces(faces[i : i + 128]) for n in nets], 0) for i in range(0, len(faces), 128)]
        return np.concatenate(chunks).argmax(1)

    for seed in a.seeds:
        run_seed(images, labels, detector, predict, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
