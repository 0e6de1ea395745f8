"""Scenes with real FER2013 faces, and a Y4M clip of them for Chromium's fake webcam.

BlazeFace finds FER2013's 48x48 faces reliably once they are enlarged to ~200 px on a larger frame,
which is what a face at webcam distance looks like. The clip is YUV4MPEG2 (C420, 640x480, 30 fps): the
one format Chromium's ``--use-file-for-fake-video-capture`` reads besides MJPEG. Each frame carries its
number in a strip of black and white blocks along the bottom edge, so a browser test can tell which
camera frame a result belongs to (``read_frame_number``; the page does the same in JavaScript).

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
CLIP_FACES = {
    "happy": "PublicTest_11394394.jpg",
    "surprise": "PublicTest_11715606.jpg",
    "angry": "PublicTest_12693575.jpg",
    "neutral": "PublicTest_10262886.jpg",
}
CLIP_FPS = 30  # a webcam's frame rate
# The frame-number strip: CODE_BLOCKS blocks of CODE_BLOCK_PX x CODE_HEIGHT_PX across the bottom of a 640 px
# frame: a white start block, the number's bits (most significant first, white = 1), a black stop block. The
# markers also tell a mirrored frame (the webcam component mirrors what it sends) from a plain one.
CODE_BLOCKS = 20
CODE_BLOCK_PX = 32
CODE_HEIGHT_PX = 24
WHITE, BLACK = 235, 16  # video-range luma: survives YUV 4:2:0 and JPEG without clipping


def face_scene(
    face: np.ndarray, size: tuple[int, int] = (640, 480), face_px: int = 200, centre: tuple[int, int] | None = None
) -> np.ndarray:
    """An RGB frame (width, height = ``size``) with a grayscale face enlarged to ``face_px`` on a soft gradient."""
    width, height = size
    xx = np.linspace(0.0, 1.0, width)[None, :]
    yy = np.linspace(0.0, 1.0, height)[:, None]
    background = np.stack([150 + 40 * xx - 30 * yy, 160 + 20 * xx - 20 * yy, 175 - 20 * xx + 10 * yy], axis=-1)
    frame = np.broadcast_to(background, (height, width, 3)).astype(np.uint8).copy()
    big = cv2.resize(face, (face_px, face_px), interpolation=cv2.INTER_CUBIC)
    cx, cy = centre or (width // 2, height // 2)
    x0, y0 = cx - face_px // 2, cy - face_px // 2
    frame[y0 : y0 + face_px, x0 : x0 + face_px] = big[:, :, None]
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


def stamp_frame_number(rgb: np.ndarray, number: int) -> np.ndarray:
    """``rgb`` (640 px wide) with ``number`` written in the strip along its bottom edge, in place."""
    bits = CODE_BLOCKS - 2
    if not 0 <= number < 2**bits:
        raise ValueError(f"frame number {number} does not fit in {bits} bits")
    values = [WHITE] + [WHITE if number >> (bits - 1 - k) & 1 else BLACK for k in range(bits)] + [BLACK]
    for k, value in enumerate(values):
        rgb[-CODE_HEIGHT_PX:, k * CODE_BLOCK_PX : (k + 1) * CODE_BLOCK_PX] = value
    return rgb


def read_frame_number(rgb: np.ndarray) -> int | None:
    """The number ``stamp_frame_number`` wrote, from a plain or mirrored frame; None when there is none."""
    row = rgb[-CODE_HEIGHT_PX // 2].astype(np.float32).mean(axis=-1)
    levels = [row[k * CODE_BLOCK_PX + CODE_BLOCK_PX // 2] > 128 for k in range(CODE_BLOCKS)]
    if not levels[0] and levels[-1]:
        levels = levels[::-1]  # mirrored
    elif not (levels[0] and not levels[-1]):
        return None
    return int("".join("1" if bit else "0" for bit in levels[1:-1]), 2)


def make_clip(path: Path, faces: Sequence[np.ndarray], seconds_per_face: float = 1.0, fps: int = CLIP_FPS) -> Path:
    """A looping clip showing each face in turn, drifting slightly as a real head would, frames numbered.

    Every frame differs (like a real camera's): Gradio caches result images by content, and the same
    frame sent twice in a row makes it rewrite a file the browser may be fetching.
    """
    return write_y4m(path, clip_frames(faces, seconds_per_face, fps), fps)


def clip_frames(faces: Sequence[np.ndarray], seconds_per_face: float = 1.0, fps: int = CLIP_FPS) -> list[np.ndarray]:
    """The frames of ``make_clip``'s clip, as RGB arrays."""
    frames = []
    per_face = max(1, round(seconds_per_face * fps))
    for face in faces:
        for i in range(per_face):
            frame = face_scene(face, centre=(320 + i * 30 // per_face, 240 + i * 15 // per_face))
            frames.append(stamp_frame_number(frame, len(frames)))
    return frames


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "fake_webcam.y4m")
    print(make_clip(out, load_faces()))
