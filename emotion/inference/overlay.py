"""Draw recognition results onto a frame: a box, the emotion and its confidence per face (OpenCV only, fast)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..data.labels import display
from .faces import as_rgb

# One RGB colour per class, chosen to be told apart at a glance (and not to rely on red/green alone).
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "angry": (230, 40, 40),
    "disgust": (120, 170, 30),
    "fear": (150, 70, 200),
    "happy": (255, 200, 0),
    "neutral": (170, 170, 170),
    "sad": (40, 110, 230),
    "surprise": (255, 120, 200),
}
_DEFAULT_COLOUR = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text_colour(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light label backgrounds, white on dark ones."""
    luma = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def draw_faces(rgb: np.ndarray, faces: Sequence[dict]) -> np.ndarray:
    """A copy of ``rgb`` with each face's box, label (e.g. 'Happy 87%', '#2 Happy 87%' with a face_id) and a colour per class.

    Line widths follow the frame size and the text size follows the face size, so labels stay readable on
    a 320 px thumbnail and on a 4K photo alike.
    """
    out = as_rgb(rgb).copy()
    height, width = out.shape[:2]
    line = max(1, round(max(height, width) / 400))
    for face in faces:
        x, y, w, h = (int(v) for v in face["box"])
        colour = CLASS_COLOURS.get(face["label"], _DEFAULT_COLOUR)
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), colour, line, cv2.LINE_AA)

        text = f"{display(face['label'], with_emoji=False)} {face['score'] * 100:.0f}%"
        if "face_id" in face:  # videos: the id that faces.csv uses for this face
            text = f"#{face['face_id']} {text}"
        # About a third of the face width per label, but never unreadably small or absurdly large.
        scale = float(np.clip(w / 300.0, 0.4, 3.0))
        thickness = max(1, round(scale * 1.5))
        (tw, th), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
        pad = max(2, round(th * 0.3))
        label_h = th + baseline + 2 * pad
        # Above the box when there is room, otherwise inside its top edge; always within the frame.
        top = y - label_h if y - label_h >= 0 else y
        left = min(max(0, x), max(0, width - tw - 2 * pad))
        cv2.rectangle(out, (left, top), (left + tw + 2 * pad, top + label_h), colour, cv2.FILLED)
        cv2.putText(out, text, (left + pad, top + pad + th), _FONT, scale, _text_colour(colour), thickness, cv2.LINE_AA)
    return out
