"""Grad-CAM ("why this label") on the shipped model: its cost per face on this machine, and the docs' picture.

    python scripts/explain_demo.py --time --frames 20                       # ms per photo/face without and with Grad-CAM
    python scripts/explain_demo.py --screenshot docs/screenshots/explain.png  # FER2013 test faces in a frame, explained

Timing uses the benchmark's 640x480 frames (1 and 4 real FER2013 test faces, ``emotion.bench.pipeline.compose_frames``) and
``emotion.bench.pipeline.explain_timings``, also part of ``train_cli.py bench``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from emotion.bench.pipeline import compose_frames, explain_timings  # noqa: E402
from emotion.bench.timing import SHARED_FER, BenchConfig  # noqa: E402
from emotion.inference.classifier import EmotionClassifier  # noqa: E402
from emotion.inference.explain import explain_image  # noqa: E402
from emotion.inference.faces import FaceDetector  # noqa: E402
from emotion.inference.overlay import draw_faces  # noqa: E402
from emotion.inference.recognizer import Recognizer  # noqa: E402

FACE_MODEL = ROOT.parent / "shared" / "models" / "face_detection_short_range.tflite"


def screenshot(recognizer: Recognizer, path: Path) -> None:
    """Four clear FER2013 test faces (tests/make_clip.py's) on one 640x480 frame, explained, as a small PNG."""
    import cv2
    from make_clip import face_scene, load_faces

    faces, side = load_faces(), 190  # BlazeFace short range finds faces from about a quarter of the frame's width
    spots = ((160, 120), (480, 120), (160, 360), (480, 360))
    frame = face_scene(faces[0], face_px=side, centre=spots[0])
    for face, (cx, cy) in zip(faces[1:], spots[1:], strict=False):
        frame[cy - side // 2 : cy + side // 2, cx - side // 2 : cx + side // 2] = cv2.resize(
            face, (side, side), interpolation=cv2.INTER_CUBIC
        )[:, :, None]
    found = recognizer.analyze(frame)
    picture = draw_faces(explain_image(recognizer.classifier, frame, found), found)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(
        f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB): "
        + ", ".join(f"{f['label']} {f['score']:.0%}" for f in found)
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="model to explain (default: the shipped assets/emotion_cnn.pt)")
    p.add_argument("--time", action="store_true", help="time a photo's analysis without and with Grad-CAM")
    p.add_argument("--frames", type=int, default=20, help="timed repetitions per measurement (after 3 untimed ones)")
    p.add_argument("--screenshot", type=Path, default=None, help="write the docs' example picture (PNG) here")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    detector = FaceDetector(str(FACE_MODEL) if FACE_MODEL.is_file() else None, allow_download=False)
    recognizer = Recognizer(EmotionClassifier.from_checkpoint(a.checkpoint, device="cpu"), detector)
    print(f"model: {recognizer.classifier.name}, tta {recognizer.classifier.tta}; faces: {detector.source}")
    if a.time:
        frames = compose_frames(detector, SHARED_FER)
        result = explain_timings(recognizer, frames, BenchConfig(frames=a.frames, warmup=3))
        print(json.dumps(result, indent=2))
        for key, r in result.items():
            n = max(1, r["faces_detected"])
            print(
                f"{key}: without {r['plain_ms']['median']:.1f} ms ({r['plain_ms']['median'] / n:.1f} ms/face), "
                f"with Grad-CAM {r['explained_ms']['median']:.1f} ms ({r['explained_ms']['median'] / n:.1f} ms/face); "
                f"Grad-CAM adds {r['explain_ms_per_face']:.1f} ms/face"
            )
    if a.screenshot:
        screenshot(recognizer, a.screenshot)
    return 0 if (a.time or a.screenshot) else 2


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
