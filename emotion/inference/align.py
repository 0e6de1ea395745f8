"""Face crops aligned like FER2013: one similarity warp puts the eyes where FER2013 train faces have them.

A detector's box only says roughly where a face is and ignores head tilt; two eye keypoints give the tilt
but jitter. ``framing_eyes`` combines them: the box gives the crop's centre and scale, and the line through
the keypoints the in-plane rotation, of which the warp undoes part (``undone_tilt``): FER2013 keeps each
face's own head roll, so a crop that levels every face frames it further from FER2013 than one that leaves
small tilts partly in place. The constants below were measured on FER2013 TRAIN faces by
``scripts/measure_fer_framing.py`` (medians over the faces BlazeFace found); coordinates are continuous
48x48-crop units, (0, 0) the crop's top-left corner.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

FACE = 48  # side of the crop (FER2013's)
# Measured by scripts/measure_fer_framing.py --faces 3000 --seed 0 on the train split.
# BlazeFace found 2906 of 3000 faces; quartiles in brackets (FER2013's own framing varies that much).
EYE_CX = 24.26  # eye midpoint, x [22.79, 25.54]
EYE_CY = 19.80  # eye midpoint, y [18.07, 20.99]
EYE_DIST = 16.95  # distance between the eyes [14.84, 18.61]; the eye line's tilt: median 0.7 deg [-6.3, 6.8]
# Where the eyes sit in a BlazeFace-framed box (fractions of its width/height): every crop's centre and scale.
EYE_CX_IN_BOX = 0.4962  # eye midpoint, x [0.4435, 0.5421]
EYE_CY_IN_BOX = 0.2760  # eye midpoint, y [0.2523, 0.2973]
EYE_DIST_IN_BOX = 0.4242  # distance between the eyes [0.4071, 0.4396]
# How much of an eye line's tilt the crop undoes (docs/frames_benchmark.md, "undo the camera's tilt"): 0.4 of it up
# to 45 deg, all of it from 90 deg on. 0.4 framed train faces in frames closest to their FER2013 crops (tilt miss
# RMS 11.1 deg against 15.2 for levelling them); a face turned sideways is still levelled.
TILT_UNDONE = 0.4
TILT_NEAR = 45.0  # degrees: up to here the crop undoes TILT_UNDONE of the tilt
TILT_FAR = 90.0  # degrees: from here on it undoes all of it
MAX_SUPERSAMPLE = 8  # the warp renders at most 8x48 px; bigger faces are first shrunk by an integer factor


def estimate_eyes(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
    """(right eye x, y, left eye x, y) where FER2013's framing puts them in an upright BlazeFace-framed box."""
    cx, cy, half = x + EYE_CX_IN_BOX * w, y + EYE_CY_IN_BOX * h, EYE_DIST_IN_BOX * w / 2
    return (cx - half, cy, cx + half, cy)


def undone_tilt(theta: float) -> float:
    """The part (radians) of an eye line's tilt ``theta`` (radians) that the crop undoes: ``TILT_UNDONE`` of it up
    to ``TILT_NEAR`` degrees, all of it from ``TILT_FAR`` degrees on, the part left shrinking linearly between.

    Why not all of it: FER2013's faces keep their own head roll (their eye lines spread over about +-10 deg) and
    BlazeFace's keypoints miss the eye line by as much again, so fully levelling moves most faces further from
    their FER2013 framing than it brings them back (on held-out train faces in frames it cost 1.2 points)."""
    degrees = abs(math.degrees(theta))
    if degrees <= TILT_NEAR:
        return TILT_UNDONE * theta
    left = 0.0 if degrees >= TILT_FAR else (1 - TILT_UNDONE) * TILT_NEAR * (TILT_FAR - degrees) / (TILT_FAR - TILT_NEAR)
    return math.copysign(math.radians(degrees - left), theta)


def framing_eyes(
    x: float, y: float, w: float, h: float, keypoints: tuple[float, float, float, float]
) -> tuple[float, float, float, float]:
    """The eyes a detected face is aligned on: centre and scale from its box, part of the tilt from its keypoints.

    Two keypoints are noisy: alone they set the crop's centre and scale poorly, and their tilt is as much
    BlazeFace's miss and the head's own roll as the camera's. The crop is the box's FER2013 framing turned about
    the box's centre by ``undone_tilt`` of the keypoints' angle: the eye midpoint lies where FER2013's framing
    has it in the box (``EYE_*_IN_BOX``, turned by that angle), ``EYE_DIST_IN_BOX`` of the box's width apart.
    Keypoints that are not two distinct points are returned unchanged.
    """
    rx, ry, lx, ly = (float(v) for v in keypoints)
    dist = math.hypot(lx - rx, ly - ry)
    if not math.isfinite(dist) or dist < 1e-3:
        return keypoints
    turn = undone_tilt(math.atan2(ly - ry, lx - rx))
    cos, sin = math.cos(turn), math.sin(turn)
    half = EYE_DIST_IN_BOX * w / 2
    ox, oy = (EYE_CX_IN_BOX - 0.5) * w, (EYE_CY_IN_BOX - 0.5) * h  # eye midpoint from the box centre, upright
    cx, cy = x + w / 2 + cos * ox - sin * oy, y + h / 2 + sin * ox + cos * oy
    return (cx - half * cos, cy - half * sin, cx + half * cos, cy + half * sin)


def fer_transform(eyes: tuple[float, float, float, float]) -> np.ndarray:
    """The 2x3 similarity taking frame coordinates to 48x48-crop coordinates (both continuous, corner origin).

    The subject's right eye (``eyes[:2]``) lands on the crop's left, as in an unmirrored photo; rotation of
    the eye line is undone whatever its angle. Raises ValueError for eyes that are not two distinct points.
    """
    rx, ry, lx, ly = (float(v) for v in eyes)
    dx, dy = lx - rx, ly - ry
    dist = math.hypot(dx, dy)
    if not math.isfinite(dist) or dist < 1e-3:
        raise ValueError(f"eye keypoints {eyes} are not two distinct points")
    scale, cos, sin = EYE_DIST / dist, dx / dist, dy / dist
    a = scale * np.array([[cos, sin], [-sin, cos]])  # rotates the eye line onto the x axis, then scales
    t = np.array([EYE_CX, EYE_CY]) - a @ np.array([(rx + lx) / 2, (ry + ly) / 2])
    return np.hstack([a, t[:, None]])


def _roi(m: np.ndarray, width: int, height: int, margin: int) -> tuple[int, int, int, int] | None:
    """The frame rectangle (x0, y0, x1, y1) that the crop samples, with ``margin`` px to spare; None if outside."""
    inv = cv2.invertAffineTransform(m)
    corners = inv @ np.array([[0, FACE, 0, FACE], [0, 0, FACE, FACE], [1, 1, 1, 1]], dtype=np.float64)
    x0, y0 = np.floor(corners.min(1)).astype(int) - margin
    x1, y1 = np.ceil(corners.max(1)).astype(int) + margin
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    return None if x1 <= x0 or y1 <= y0 else (int(x0), int(y0), int(x1), int(y1))


def aligned_crop(rgb: np.ndarray, eyes: tuple[float, float, float, float]) -> np.ndarray | None:
    """48x48 uint8 grayscale crop of an HxWx3 RGB frame with the eyes where FER2013 has them.

    Only the frame region the crop covers is converted and warped, so a crop costs well under a millisecond.
    Parts beyond the frame's edge replicate it, as the box crop does. Shrinking is antialiased: a big face
    is first area-shrunk by an integer factor, then warped at up to ``MAX_SUPERSAMPLE`` x 48 px and area-
    averaged down. Returns None when the eyes are degenerate or the crop lies wholly outside the frame.
    """
    try:
        m = fer_transform(eyes)
    except ValueError:
        return None
    scale = math.hypot(m[0, 0], m[0, 1])  # crop px per frame px
    shrink = max(1, int(1.0 / (scale * MAX_SUPERSAMPLE)))  # integer pre-shrink keeps INTER_AREA on its fast path
    height, width = rgb.shape[:2]
    roi = _roi(m, width, height, margin=2 + shrink)
    if roi is None:
        return None
    x0, y0, x1, y1 = roi
    if shrink > 1:  # trim the region to whole blocks of the shrink factor, so the factor is exact
        x1, y1 = x0 + max(shrink, (x1 - x0) // shrink * shrink), y0 + max(shrink, (y1 - y0) // shrink * shrink)
        x1, y1 = min(x1, width), min(y1, height)
    patch = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    a, t = m[:, :2], m[:, 2] + m[:, :2] @ np.array([x0, y0], dtype=np.float64)  # frame -> patch coordinates
    if shrink > 1 and min(patch.shape) >= shrink:
        patch = cv2.resize(patch, (patch.shape[1] // shrink, patch.shape[0] // shrink), interpolation=cv2.INTER_AREA)
        a = a * shrink
    k = max(1, min(MAX_SUPERSAMPLE, math.ceil(1.0 / math.hypot(a[0, 0], a[0, 1]) - 1e-6)))  # <= 1 source px per sample
    a, t = a * k, t * k
    t = t + a @ np.array([0.5, 0.5]) - 0.5  # OpenCV puts pixel centres at integers, not at +0.5
    out = cv2.warpAffine(
        patch, np.hstack([a, t[:, None]]), (FACE * k, FACE * k), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    if k > 1:
        out = cv2.resize(out, (FACE, FACE), interpolation=cv2.INTER_AREA)
    return out
