"""The live pipeline's benchmark: camera-like frames of real FER2013 faces, per-stage timing of one frame
(detection, crops, model, overlay), the Grad-CAM explanation's cost, and the app's memory in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..inference.classifier import EmotionClassifier
from ..utils.runtime import pick_device
from .timing import FRAME_SIZE, REPO, BenchConfig, proc_status_mb, summarize_ms, time_ms


def _fer_faces(fer_dir: Path) -> list[np.ndarray]:
    """Candidate real faces: the first few test faces of the expressive classes, as 48x48 uint8."""
    from PIL import Image

    test = fer_dir / "test"
    if not test.is_dir():
        raise FileNotFoundError(
            f"{test} does not exist: the pipeline benchmark composes its frames from real FER2013 "
            "test faces; pass BenchConfig.fer_dir (a folder with test/<class>/*.jpg)"
        )
    files = [f for cls in ("happy", "neutral", "surprise", "sad", "angry") for f in sorted((test / cls).glob("*"))[:6]]
    return [np.asarray(Image.open(f).convert("L")) for f in files]


def _paste(canvas: np.ndarray, face: np.ndarray, cx: int, cy: int, side: int) -> None:
    import cv2

    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    y0, x0 = cy - side // 2, cx - side // 2
    canvas[y0 : y0 + side, x0 : x0 + side] = big[:, :, None]


def compose_frames(detector, fer_dir: Path) -> dict[int, np.ndarray]:
    """640x480 RGB frames with 1 and 4 real faces (150-200 px) on grey, using faces the detector finds alone."""
    layouts = {1: [(320, 240, 190)], 4: [(160, 120, 200), (480, 120, 180), (160, 360, 160), (480, 360, 150)]}
    usable = []
    for face in _fer_faces(fer_dir):
        probe = np.full((*FRAME_SIZE, 3), 128, np.uint8)
        _paste(probe, face, 320, 240, 176)
        if len(detector.detect(probe)) == 1:
            usable.append(face)
        if len(usable) == 4:
            break
    if len(usable) < 4:
        raise RuntimeError(
            f"the face detector found only {len(usable)} of the FER2013 test faces it was shown; is it {detector.source}?"
        )
    frames = {}
    for n, spots in layouts.items():
        frame = np.full((*FRAME_SIZE, 3), 128, np.uint8)
        for face, (cx, cy, side) in zip(usable, spots, strict=False):
            _paste(frame, face, cx, cy, side)
        frames[n] = frame
    return frames


def time_pipeline(recognizer, frame: np.ndarray, cfg: BenchConfig, rotate: bool = True) -> dict:
    """Per-stage and total wall time of one live frame: recognizer stages, then the overlay. ``rotate`` False
    runs every network of an ensemble on every frame instead of one per frame, as the live view does."""
    from ..inference.overlay import draw_faces
    from ..inference.recognizer import FaceTracker

    tracker = FaceTracker(rotate=rotate, scan_tiles=True)  # as in the live view: smoothing, tiles in turn
    samples: dict[str, list[float]] = {}
    faces: list = []
    for i in range(cfg.warmup + cfg.frames):
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        faces = recognizer.analyze(frame, tracker=tracker, timings=stages)
        t1 = time.perf_counter()
        draw_faces(frame, faces)
        t2 = time.perf_counter()
        if i < cfg.warmup:
            continue
        stages |= {"overlay": (t2 - t1) * 1000, "total": (t2 - t0) * 1000}
        for stage, ms in stages.items():
            samples.setdefault(stage, []).append(ms)
    return {"faces_detected": len(faces)} | {f"{stage}_ms": summarize_ms(ms) for stage, ms in samples.items()}


def explain_timings(recognizer, frames: dict[int, np.ndarray], cfg: BenchConfig) -> dict:
    """Per frame of ``frames`` (faces -> frame): a photo's analysis (every network, the checkpoint's TTA) plus the
    overlay, without and with Grad-CAM (``emotion.inference.explain``), in ms, and the extra ms per face the explanation costs."""
    from ..inference.explain import explain_image
    from ..inference.overlay import draw_faces

    out = {}
    for n, frame in frames.items():
        faces = recognizer.analyze(frame)
        plain = time_ms(lambda frame=frame: draw_faces(frame, recognizer.analyze(frame)), cfg)

        def explained(frame=frame) -> None:
            found = recognizer.analyze(frame)
            draw_faces(explain_image(recognizer.classifier, frame, found), found)

        with_cam = time_ms(explained, cfg)
        out[f"{n}_face"] = {
            "faces_detected": len(faces),
            "plain_ms": plain,
            "explained_ms": with_cam,
            "explain_ms_per_face": round((with_cam["median"] - plain["median"]) / max(1, len(faces)), 2),
        }
    return out


def memory_probe(checkpoint: str, face_model: str, device: str, frame_path: str) -> dict:
    """Load the app's parts (classifier, detector, recognizer), run a frame and report RSS; run in a fresh process."""
    from ..inference.faces import FaceDetector
    from ..inference.overlay import draw_faces
    from ..inference.recognizer import Recognizer

    detector = FaceDetector(face_model or None, allow_download=False)
    recognizer = Recognizer(EmotionClassifier.from_checkpoint(checkpoint, device=device), detector)
    frame = np.load(frame_path)
    for _ in range(3):
        draw_faces(frame, recognizer.analyze(frame))
    out = {"peak_rss_mb": round(proc_status_mb("VmHWM"), 1), "rss_mb": round(proc_status_mb("VmRSS"), 1)}
    if torch.cuda.is_available() and pick_device(device).type == "cuda":
        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def memory_in_fresh_process(
    checkpoint: Path, face_model: str | None, frame: np.ndarray, cfg: BenchConfig, tmp: Path
) -> dict:
    """``memory_probe`` in a fresh interpreter, so this process's own allocations do not count."""
    frame_path = tmp / "frame.npy"
    np.save(frame_path, frame)
    code = "import json, sys; from emotion.bench.pipeline import memory_probe; print(json.dumps(memory_probe(*sys.argv[1:])))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(checkpoint), face_model or "", cfg.device, str(frame_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {checkpoint} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
