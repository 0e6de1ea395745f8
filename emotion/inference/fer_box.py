"""FER2013's own framing: the box OpenCV's Haar face detector draws, found again around a detected face.

FER2013's faces were cut by OpenCV's face detector (Goodfellow et al., 2013), and it shows: on FER2013 train
faces upscaled 4x on a plain canvas, the Haar cascade ``haarcascade_frontalface_alt`` finds a box centred on
the 48x48 crop's centre (median offset 0.1 and -0.3 px) and ``HAAR_TO_FER`` of its side, within 5% of that
scale for 46% of the faces against 29% for the crop ``align.framing_eyes`` derives from BlazeFace's box
(docs/frames_benchmark.md, "FER2013's framing is a Haar box"). ``haar_refined_eyes`` looks for that box in
an upright patch around the face BlazeFace found and moves the crop onto it: scale and centre from the Haar
box, tilt as before. Where the cascade finds no box near the expected one, the crop is left as it was.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .align import EYE_CX, EYE_CY, EYE_DIST, FACE, fer_transform

HAAR_FER_CASCADE = cv2.data.haarcascades + "haarcascade_frontalface_alt.xml"
HAAR_TO_FER = 0.979  # Haar box side / FER2013 crop side, median over 377 train faces (scripts/haar_crop_trial.py)
PATCH_FACE = 64  # px of the expected crop's side in the patch the cascade scans (its window is 20 px)
PATCH = 2 * PATCH_FACE  # the patch: the expected crop with half its side to spare all round
MAX_SHIFT = 0.18  # a Haar box whose centre is further than this share of the crop's side from the expected...
MAX_LOG_SCALE = 0.22  # ...or whose size is off by more than this (natural log) is another face or a miss
SEARCH = (0.7, 1.45)  # box sides the cascade tries, as shares of the expected Haar box
SCALE_STEP = 1.05  # the cascade's window grows by this factor from size to size (1.03: 6.6 ms a face, not 4.3)


class HaarFraming:
    """Finds FER2013's framing of a face near a crop BlazeFace's box suggests (create once; not thread-safe:
    callers hold ``FaceDetector``'s lock)."""

    def __init__(self) -> None:
        self._cascade = cv2.CascadeClassifier(HAAR_FER_CASCADE)
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV's Haar cascade {HAAR_FER_CASCADE} could not be loaded")

    def _patch(self, rgb: np.ndarray, eyes: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
        """The upright greyscale patch around the crop on ``eyes`` and the 3x3 transform from frame to patch."""
        k = PATCH_FACE / FACE
        to_patch = np.vstack([fer_transform(eyes) * k, [0.0, 0.0, 1.0]])
        to_patch[:2, 2] += PATCH / 2 - FACE / 2 * k
        corners = np.linalg.inv(to_patch) @ np.array([[0, PATCH, 0, PATCH], [0, 0, PATCH, PATCH], [1, 1, 1, 1]])
        height, width = rgb.shape[:2]
        x0, y0 = (max(0, int(v)) for v in np.floor(corners[:2].min(1)))
        x1, y1 = min(width, int(np.ceil(corners[0].max())) + 1), min(height, int(np.ceil(corners[1].max())) + 1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise ValueError("the crop lies outside the frame")
        grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
        local = to_patch @ np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1.0]])  # region px -> patch px
        shrink = max(1, int(1.0 / (1.5 * math.hypot(local[0, 0], local[0, 1]))))  # antialias a big face cheaply
        if shrink > 1 and min(grey.shape) >= shrink:
            grey = cv2.resize(grey, (grey.shape[1] // shrink, grey.shape[0] // shrink), interpolation=cv2.INTER_AREA)
            local = local @ np.diag([shrink, shrink, 1.0])
        warp = local[:2].copy()
        warp[:, 2] += warp[:, :2] @ np.array([0.5, 0.5]) - 0.5  # OpenCV puts pixel centres at integers, not at +0.5
        patch = cv2.warpAffine(grey, warp, (PATCH, PATCH), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return patch, to_patch

    def refine(self, rgb: np.ndarray, eyes: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """``eyes`` moved so the crop is the Haar box's FER2013 framing (same tilt); ``eyes`` unchanged when the
        cascade finds no box within ``MAX_SHIFT`` and ``MAX_LOG_SCALE`` of the expected one."""
        try:
            patch, to_patch = self._patch(rgb, eyes)
        except ValueError:
            return eyes
        expected = PATCH_FACE * HAAR_TO_FER
        found = self._cascade.detectMultiScale(
            patch,
            scaleFactor=SCALE_STEP,
            minNeighbors=3,
            minSize=(int(SEARCH[0] * expected),) * 2,
            maxSize=(int(SEARCH[1] * expected),) * 2,
        )
        if len(found) == 0:
            return eyes
        boxes = np.asarray(found, dtype=np.float64).reshape(-1, 4)
        centres = boxes[:, :2] + boxes[:, 2:] / 2
        off = np.hypot(*(centres - PATCH / 2).T)
        best = int(np.argmin(off))
        if off[best] > MAX_SHIFT * PATCH_FACE or abs(math.log(boxes[best, 2] / expected)) > MAX_LOG_SCALE:
            return eyes
        side = boxes[best, 2] / HAAR_TO_FER  # the FER2013 crop's side, patch px
        corner = centres[best] - side / 2
        crop_eyes = np.array([[EYE_CX - EYE_DIST / 2, EYE_CY, 1.0], [EYE_CX + EYE_DIST / 2, EYE_CY, 1.0]])
        in_patch = np.column_stack([crop_eyes[:, :2] * side / FACE + corner, np.ones(2)])
        (rx, ry), (lx, ly) = (np.linalg.inv(to_patch) @ in_patch.T).T[:, :2]
        return (float(rx), float(ry), float(lx), float(ly))
