"""What BlazeFace is shown of a frame besides the frame itself, and how its boxes are merged.

A greyscale frame is shown as a skin-toned copy, and a still image also as four overlapping corner tiles, for
faces too small for BlazeFace's 128x128 view of the whole frame. A face reported twice (two boxes, one mostly
inside the other) is kept once. Used by ``faces.FaceDetector``; the constants were chosen on FER2013 TRAIN faces
placed in frames (``scripts/detection_rates.py --compare tones`` and the small-face measurements quoted below).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# BlazeFace finds grey faces less often than coloured ones; a greyscale frame is detected on a skin-toned copy
# (R, G, B = grey x these). On FER2013 train faces in grey frames (scripts/detection_rates.py --compare tones) this
# found 95.3% -> 97.3% of faces at 1/4 of the frame width and larger, and 65.8% -> 71.8% over 1/8-1/2 of the
# width; other warm tones scored within 1.4 points. The crop is still cut from the frame itself.
SKIN_TONE = (1.0, 0.82, 0.70)
# The small-face pass (photos): BlazeFace short-range sees a frame as 128x128 and misses faces under about a
# quarter of its width, so it also runs on four overlapping corner tiles of this fraction of the frame (faces
# twice as large to it). Tile boxes cut by an inner tile edge (``cut_by_tile``), overlapping a whole-frame box or
# scoring under TILE_MIN_CONFIDENCE are dropped. Measured with scripts/detection_rates.py --compare tiles (600
# train faces a run); the figures are in docs/frames_benchmark.md, "Small faces".
TILE_FRACTION = 0.6
TILE_MIN_CONFIDENCE = 0.6


def is_greyscale(rgb: np.ndarray) -> bool:
    """Whether an HxWx3 frame's three channels are equal (a grey photo or camera), judged on every 8th pixel."""
    sample = rgb[::8, ::8]
    return bool(np.array_equal(sample[..., 0], sample[..., 1]) and np.array_equal(sample[..., 0], sample[..., 2]))


_SKIN_LUTS = [np.clip(np.arange(256) * f, 0, 255).round().astype(np.uint8) for f in SKIN_TONE]


def skin_toned(rgb: np.ndarray) -> np.ndarray:
    """A greyscale HxWx3 frame tinted to ``SKIN_TONE`` (from its first channel), for the detector only."""
    grey = np.ascontiguousarray(rgb[..., 0])
    return cv2.merge([cv2.LUT(grey, lut) for lut in _SKIN_LUTS])


def corner_tiles(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of the small-face pass's four tiles: ``TILE_FRACTION`` of the frame each, one per corner."""
    th, tw = max(1, round(height * TILE_FRACTION)), max(1, round(width * TILE_FRACTION))
    return [(x, y, tw, th) for y in (0, height - th) for x in (0, width - tw)]


def cut_by_tile(box: Sequence[float], tile: Sequence[int], frame_hw: Sequence[int], margin: float = 2.0) -> bool:
    """Whether a box (x, y, w, h, frame pixels) found in ``tile`` reaches one of the tile's inner edges, where the
    face may go on into the next tile (a part of a face is not a face); the frame's own edges do not count."""
    x, y, w, h = box[:4]
    tx, ty, tw, th = tile
    height, width = frame_hw
    return (
        (tx > 0 and x <= tx + margin)
        or (ty > 0 and y <= ty + margin)
        or (tx + tw < width and x + w >= tx + tw - margin)
        or (ty + th < height and y + h >= ty + th - margin)
    )


def overlap_area(a: Sequence[float], b: Sequence[float]) -> float:
    """The area two (x, y, w, h) boxes share."""
    return max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])) * max(
        0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    )


def not_nested(boxes: np.ndarray, support: np.ndarray) -> list[int]:
    """Indices of the (x, y, w, h) rows to keep, best supported first: a box that overlaps a better-supported
    kept one by over half the smaller's area is the same face reported twice and is dropped.

    Both detectors sometimes report one face twice: Haar as the face and a larger box around it, or its inner
    part (``support``: how many detection windows voted for each); BlazeFace, mostly on faces it is unsure of,
    as a second box over part of the face (``support``: its score).
    """
    kept: list[int] = []
    for i in np.argsort(-np.asarray(support), kind="stable"):
        if not any(
            overlap_area(boxes[i], boxes[k]) > 0.5 * min(boxes[i][2] * boxes[i][3], boxes[k][2] * boxes[k][3])
            for k in kept
        ):
            kept.append(int(i))
    return kept


class TileSchedule:
    """Which corner tiles a live stream's next frame scans for small faces: every tile that found a face in the
    frame before, so a small face, once found, is looked for in every frame, and every ``every``-th frame one
    more tile, in turn. With no small face in view that is one tile (about 2 ms on a 640x480 frame) every third
    frame, instead of four tiles a frame: the browser's frame rate pays for what a 2-core server spends."""

    def __init__(self, every: int = 3) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.every = every
        self.frame = 0
        self.holding: set[int] = set()

    def next(self) -> list[int]:
        """The tiles (0-3) to scan in the next frame."""
        turn, self.frame = self.frame, self.frame + 1
        new = {turn // self.every % 4} if turn % self.every == 0 else set()
        return sorted(self.holding | new)

    def found(self, tiles: Sequence[int | None]) -> None:
        """The tiles of the faces found in the frame just scanned (None: found in the whole frame)."""
        self.holding = {t for t in tiles if t is not None}
