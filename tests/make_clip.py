"""Scenes with real FER2013 faces, and a Y4M clip of them for Chromium's fake webcam.

BlazeFace finds FER2013's 48x48 faces reliably once they are enlarged to ~200 px on a larger frame,
which is what a face at webcam distance looks like. The clip is YUV4MPEG2 (C420, 640x480): the one
format Chromium's ``--use-file-for-fake-video-capture`` reads besides MJPEG.

    python tests/make_clip.py clip.y4m   # faces from ../shared/fer2013
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

FER_TEST = Path(__file__).resolve().parent.parent.parent / "shared" / "fer2013" / "test"
# Clear, frontal expressions that read well in a screenshot (FER2013 labels are noisy; these are not).
CLIP_FACES = {"happy": "PublicTest_11394394.jpg", "surprise": "PublicTest_11715606.jpg",
              "angry": "PublicTest_12693575.jpg", "neutral": "PublicTest_10262886.jpg"}


def face_scene(face: np.ndarray, size: tuple[int, int] = (640, 480), face_px: int = 200,
               centre: tuple[int, int] | None = None) -> np.ndarray:
    """An RGB frame (width, height = ``size``) with a grayscale face enlarged to ``face_px`` on a soft gradient."""
    width, height = size
    xx = np.linspace(0.0, 1.0, width)[None, :]
    yy = np.linspace(0.0, 1.0, height)[:, None]
    background = np.stack([150 + 40 * xx - 30 * yy, 160 + 20 * xx - 20 * yy, 175 - 20 * xx + 10 * yy], axis=-1)
    frame = np.broadcast_to(background, (height, width, 3)).astype(np.uint8).copy()
    big = cv2.resize(face, (face_px, face_px), interpolation=cv2.INTER_CUBIC)
    cx, cy = centre or (width // 2, height // 2)
    x0, y0 = cx - face_px // 2, cy - face_px // 2
    frame[y0:y0 + face_px, x0:x0 + face_px] = big[:, :, None]
    return frame


def load_faces(files: dict[str, str] = CLIP_FACES, root: Path = FER_TEST) -> list[np.ndarray]:
    """FER2013 test faces ({class: file name}) as 48x48 grayscale arrays."""
    return [np.asarray(Image.open(root / name / file).convert("L")) for name, file in files.items()]


def write_y4m(path: Path, frames: Sequence[np.ndarray], fps: int) -> Path:
    """Write RGB frames (all the same even width and height) as an uncompressed YUV4MPEG2 C420 clip."""
    height, width = frames[0].shape[:2]
    with open(path, "wb") as fh:
        fh.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420\n".encode())
        for rgb in frames:
            # OpenCV's I420 conversion lays out the Y plane, then U and V at quarter size, exactly as Y4M wants.
            fh.write(b"FRAME\n" + cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


def make_clip(path: Path, faces: Sequence[np.ndarray], seconds_per_face: float = 1.0, fps: int = 15) -> Path:
    """A looping clip showing each face in turn, drifting slightly as a real head would.

    Every frame differs (like a real camera's): Gradio caches result images by content, and the same
    frame sent twice in a row makes it rewrite a file the browser may be fetching.
    """
    frames = []
    per_face = max(1, round(seconds_per_face * fps))
    for face in faces:
        for i in range(per_face):
            frames.append(face_scene(face, centre=(320 + 2 * i, 240 + i)))
    return write_y4m(path, frames, fps)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "fake_webcam.y4m")
    print(make_clip(out, load_faces()))
