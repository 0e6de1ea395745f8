"""Face detection (MediaPipe BlazeFace, or OpenCV's Haar cascade as a fallback) and FER2013-style face crops.

The BlazeFace model file is found by ``emotion.inference.face_model`` (explicit path or ``$EMOTION_FACE_MODEL``,
cache, checked download); without one the Haar cascade bundled with OpenCV runs. ``FaceDetector.source``
says which one runs, so a fallback is never silent.

Box convention: every backend reports boxes framed as BlazeFace frames a face (brows to chin, cheek to
cheek); Haar boxes are converted to that framing, so crops look the same whichever backend ran.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from ..data.dataset import to_face48
from .align import aligned_crop, estimate_eyes, framing_eyes
from .detector_views import (
    TILE_MIN_CONFIDENCE,
    corner_tiles,
    cut_by_tile,
    is_greyscale,
    not_nested,
    overlap_area,
    skin_toned,
)
from .face_model import _resolve

log = logging.getLogger(__name__)

HAAR_CASCADE = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"

DETECT_MAX_SIDE = 1280  # larger frames are downscaled for detection: BlazeFace sees 128x128 anyway
# The Haar cascade's cost grows with the pixels it scans: at 640x480 it took ~70 ms, on a third of that
# (213x160) ~4 ms, and webcam faces (100 px and up) are still 30+ px there, well above its 20 px window.
# It then finds faces from about a tenth of the image's longer side, still smaller than BlazeFace short-range can.
HAAR_SCAN_SIDE = (
    240  # the Haar cascade scans a grayscale copy shrunk by the integer factor nearest to reaching this longer side
)
HAAR_MIN_PX = 20  # smallest face, in pixels of that copy (a 640x480 frame: 60 px faces)
HAAR_SCALE_STEP = (
    1.15  # window growth per pyramid level: 1.1 found no more faces on webcam-sized faces for 40% more time
)
MIN_FACE_PX = 20  # smaller faces carry too little detail for a 48x48 classifier
MAX_FACES = 20  # bounds latency on crowd photos; the largest faces are kept

# Measured on FER2013 test faces pasted into frames (see tests/test_faces.py): a Haar box is ~1.24x the
# BlazeFace box of the same face and centred ~0.095 of its side higher; a FER2013 crop is ~1.25x the
# BlazeFace box and centred ~0.12 of its height higher (FER crops include the forehead).
_HAAR_TO_BLAZE_SCALE = 0.81
_HAAR_TO_BLAZE_SHIFT = 0.095
_FER_CENTRE_SHIFT = 0.12


@dataclass(frozen=True)
class Box:
    """A face box in frame pixels, with the detector's confidence (1.0 for Haar, which has none).

    ``eyes`` is (x, y) of the subject's right eye then left eye, in frame pixels, that crops are aligned
    on: for a MediaPipe box ``align.framing_eyes`` of its box and eye keypoints (the keypoints' tilt, the box's
    centre and scale), for a Haar box estimated from the box alone. None: framed from the box alone.
    ``tile`` is the corner tile (0-3, see ``detector_views.corner_tiles``) the small-face pass found it in;
    None: the whole frame.
    """

    x: int
    y: int
    w: int
    h: int
    score: float = 1.0
    eyes: tuple[float, float, float, float] | None = None
    tile: int | None = None


def as_rgb(image: np.ndarray | None) -> np.ndarray:
    """Any grayscale, RGB or RGBA array as HxWx3 uint8 RGB (transparency composited on white)."""
    if image is None:
        raise ValueError("no image given (got None)")
    arr = np.asarray(image)
    if arr.size == 0 or arr.ndim not in (2, 3) or min(arr.shape[:2]) == 0:
        raise ValueError(f"expected a non-empty HxW or HxWxC image, got an array of shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8) * 255
        elif np.issubdtype(arr.dtype, np.floating):
            scale = 255.0 if float(np.nanmax(arr)) <= 1.0 else 1.0  # float images are [0, 1] or [0, 255]
            arr = np.clip(np.nan_to_num(arr) * scale, 0, 255).astype(np.uint8)
        elif arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        else:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    channels = arr.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=2))
    if channels == 4:
        alpha = arr[:, :, 3:4]
        if alpha.min() == 255:
            return np.ascontiguousarray(arr[:, :, :3])
        a = alpha.astype(np.float32) / 255.0
        return (arr[:, :, :3] * a + 255.0 * (1.0 - a)).round().astype(np.uint8)
    if channels != 3:
        raise ValueError(f"expected 1, 3 or 4 colour channels, got {channels}")
    return np.ascontiguousarray(arr)


def _shrink(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` shrunk by an integer ``factor`` (area-averaged), at least 1 px a side: a 1x5000 strip stays 1 px high.

    Given as ``fx``/``fy``, an integer factor keeps INTER_AREA on its fast path: 0.1 s instead of 0.27 s for an
    8000x6000 frame; a side thinner than the factor would round to 0 px that way, so such strips get a size.
    """
    height, width = image.shape[:2]
    if factor == 1:
        return image
    if min(height, width) < factor:
        return cv2.resize(image, (max(1, width // factor), max(1, height // factor)), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, None, fx=1 / factor, fy=1 / factor, interpolation=cv2.INTER_AREA)


def _clip_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int, score: float) -> Box | None:
    """The part of a box inside the frame, or None when nothing is left."""
    ix0, iy0 = max(0, int(round(x0))), max(0, int(round(y0)))
    ix1, iy1 = min(width, int(round(x1))), min(height, int(round(y1)))
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    return Box(ix0, iy0, ix1 - ix0, iy1 - iy0, float(score))


_unclosed: list = []  # MediaPipe tasks of detectors the garbage collector took, closed at the next safe point
_exiting = False  # set once the interpreter's exit handlers run, when tasks are closed at once


def _close_later(task) -> None:
    """A collected detector's MediaPipe task: closed now at exit, else queued for ``_close_unclosed``.

    The garbage collector runs finalizers inside whatever allocation triggers it, ThreadPoolExecutor.submit
    included, whose module-wide lock it then holds; MediaPipe's close() submits to a thread pool itself, so
    closing there deadlocked the process (seen: the data loader's decoding pool, in the test suite).
    """
    if _exiting:
        with contextlib.suppress(Exception):
            task.close()
    else:
        _unclosed.append(task)


def _close_unclosed() -> None:
    while _unclosed:
        with contextlib.suppress(Exception):  # a task that fails to close is only memory, never an error
            _unclosed.pop().close()


@atexit.register
def _close_at_exit() -> None:
    """Close MediaPipe's native tasks before interpreter teardown, when their own __del__ would fail."""
    global _exiting
    _exiting = True
    _close_unclosed()


class FaceDetector:
    """Finds faces in RGB frames; create it once and share it (``detect`` is thread-safe).

    ``model_path`` names a BlazeFace model (see ``face_model.resolve_face_model`` for the search order);
    ``backend="haar"`` skips it and runs the Haar cascade (e.g. to benchmark the fallback);
    ``min_confidence`` applies to BlazeFace only (Haar boxes have no score); faces smaller than
    ``min_face_px`` are dropped and only the ``max_faces`` largest are kept. ``tone_grey_frames`` lets
    BlazeFace see greyscale frames as a skin-toned copy (``SKIN_TONE``), where it finds more of their faces.
    """

    def __init__(
        self,
        model_path: str | None = None,
        min_confidence: float = 0.5,
        allow_download: bool = True,
        max_faces: int = MAX_FACES,
        min_face_px: int = MIN_FACE_PX,
        backend: str = "auto",
        tone_grey_frames: bool = True,
    ):
        self.min_confidence = min_confidence
        self.tone_grey_frames = tone_grey_frames
        self.max_faces = max_faces
        self.min_face_px = min_face_px
        self._lock = threading.Lock()  # neither MediaPipe's task nor OpenCV's cascade is documented thread-safe
        self._mp = None
        self._haar = None
        self._finalizer = None
        _close_unclosed()  # a safe point: no lock of another library is held here
        if backend == "auto":
            path, description, explicit = _resolve(model_path, allow_download)
        elif backend == "haar":
            path, description, explicit = None, "OpenCV Haar cascade (asked for)", False
        else:
            raise ValueError(f"face detector backend must be 'auto' or 'haar', got {backend!r}")
        if path is not None:
            try:
                self._mp = self._create_mediapipe(path, min_confidence)
            except (OSError, ValueError, RuntimeError) as exc:
                if explicit:
                    raise ValueError(f"face model {path} could not be loaded by MediaPipe ({exc})") from exc
                log.warning("face model %s could not be loaded (%s); falling back to the Haar cascade", path, exc)
                description = f"OpenCV Haar cascade (fallback: MediaPipe could not load {path})"
        if self._mp is not None:
            self.backend = "mediapipe"
            self._finalizer = weakref.finalize(self, _close_later, self._mp)
        else:
            self.backend = "haar"
            self._haar = cv2.CascadeClassifier(str(HAAR_CASCADE))
            if self._haar.empty():
                raise RuntimeError(
                    f"OpenCV's Haar cascade {HAAR_CASCADE} could not be loaded and no MediaPipe model was found"
                )
        self.source = description
        log.info("face detector: %s", description)

    @staticmethod
    def _create_mediapipe(path: str, min_confidence: float):
        from mediapipe.tasks.python import BaseOptions, vision  # imported lazily: only this backend needs it

        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=path),
            running_mode=vision.RunningMode.IMAGE,
            min_detection_confidence=min_confidence,
        )
        return vision.FaceDetector.create_from_options(options)

    def detect(self, rgb: np.ndarray, small_faces: bool = False, tiles: Sequence[int] = ()) -> list[Box]:
        """Faces in an HxWx3 uint8 RGB frame: clipped to the frame, largest first, at most ``max_faces``.

        ``small_faces`` adds BlazeFace's pass over four overlapping corner tiles (``TILE_FRACTION``), which finds
        faces down to about an eighth of the frame's width for about four times the detection cost (photos);
        ``tiles`` scans only those of them (0-3), as a live stream does a few a frame (``TileSchedule``). The
        Haar fallback already scans every size and ignores both.
        """
        rgb = as_rgb(rgb)
        height, width = rgb.shape[:2]
        factor = math.ceil(max(height, width) / DETECT_MAX_SIDE)
        small = _shrink(rgb, factor)
        sx, sy = width / small.shape[1], height / small.shape[0]
        if self._mp is not None and self.tone_grey_frames and is_greyscale(small):
            small = skin_toned(small)
        with self._lock:
            raw = self._detect_mediapipe(small) if self._mp is not None else self._detect_haar(small)
            raw = [(*r, None) for r in raw]  # found in the whole frame: no tile
            if self._mp is not None and (small_faces or tiles):
                raw += self._detect_tiles(small, raw, range(4) if small_faces else tiles)
        boxes = []
        for x, y, w, h, score, eyes, tile in raw:
            box = _clip_box(x * sx, y * sy, (x + w) * sx, (y + h) * sy, width, height, score)
            if box is not None and min(box.w, box.h) >= self.min_face_px:
                eyes = (eyes[0] * sx, eyes[1] * sy, eyes[2] * sx, eyes[3] * sy)
                boxes.append(replace(box, eyes=tuple(float(v) for v in eyes), tile=tile))
        boxes.sort(key=lambda b: b.w * b.h, reverse=True)
        if len(boxes) > self.max_faces:
            log.info("%d faces found; keeping the %d largest", len(boxes), self.max_faces)
        return boxes[: self.max_faces]

    def _detect_mediapipe(self, rgb: np.ndarray) -> list[tuple]:
        import mediapipe as mp

        result = self._mp.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)))
        height, width = rgb.shape[:2]
        out = []
        for det in result.detections:
            b = det.bounding_box
            score = det.categories[0].score if det.categories else 1.0
            kps = det.keypoints or []
            if len(kps) >= 2:  # keypoints 0 and 1: the subject's right and left eye, relative to the image size
                eyes = (kps[0].x * width, kps[0].y * height, kps[1].x * width, kps[1].y * height)
                eyes = framing_eyes(b.origin_x, b.origin_y, b.width, b.height, eyes)
            else:
                eyes = estimate_eyes(b.origin_x, b.origin_y, b.width, b.height)
            out.append((b.origin_x, b.origin_y, b.width, b.height, score, eyes))
        boxes = np.array([o[:4] for o in out], dtype=np.float64).reshape(-1, 4)
        return [out[i] for i in not_nested(boxes, np.array([o[4] for o in out]))]

    def _detect_tiles(self, rgb: np.ndarray, found: list[tuple], which: Sequence[int]) -> list[tuple]:
        """Faces BlazeFace finds in the frame's corner tiles ``which`` and not in the whole frame (see
        ``TILE_FRACTION``), as (x, y, w, h, score, eyes, tile)."""
        extra = []
        for index, (x0, y0, tw, th) in enumerate(corner_tiles(*rgb.shape[:2])):
            if index not in which:
                continue
            for x, y, w, h, score, eyes in self._detect_mediapipe(rgb[y0 : y0 + th, x0 : x0 + tw]):
                box = (x + x0, y + y0, w, h)
                if (
                    cut_by_tile(box, (x0, y0, tw, th), rgb.shape[:2])
                    or score < TILE_MIN_CONFIDENCE
                    or any(overlap_area(box, f[:4]) > 0 for f in found)
                ):
                    continue
                extra.append((*box, score, (eyes[0] + x0, eyes[1] + y0, eyes[2] + x0, eyes[3] + y0), index))
        boxes = np.array([e[:4] for e in extra], dtype=np.float64).reshape(-1, 4)
        return [extra[i] for i in not_nested(boxes, np.array([e[4] for e in extra]))]  # tiles overlap: once a face

    def _detect_haar(self, rgb: np.ndarray) -> list[tuple]:
        # No histogram equalisation: on frames with large flat areas it found a third fewer faces.
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        factor = max(1, round(max(gray.shape) / HAAR_SCAN_SIDE))
        if factor > 1:
            gray = _shrink(gray, factor)
        found, votes = self._haar.detectMultiScale2(
            gray, scaleFactor=HAAR_SCALE_STEP, minNeighbors=4, minSize=(HAAR_MIN_PX, HAAR_MIN_PX)
        )
        out = []
        found = np.asarray(found, dtype=np.float64).reshape(-1, 4)
        for x, y, w, h in found[not_nested(found, np.ravel(votes))] * factor:
            side = w * _HAAR_TO_BLAZE_SCALE
            cx, cy = x + w / 2, y + h / 2 + _HAAR_TO_BLAZE_SHIFT * h
            x0, y0 = cx - side / 2, cy - side / 2
            out.append((x0, y0, side, side, 1.0, estimate_eyes(x0, y0, side, side)))  # no keypoints: FER2013's ratios
        return out

    def close(self) -> None:
        """Release MediaPipe's native resources (also done after the detector is collected, or at exit)."""
        if self._finalizer is not None and self._finalizer.detach():
            self._mp.close()
        _close_unclosed()


def _fer_square(box: Box, margin: float) -> tuple[int, int, int]:
    """(x0, y0, side) of the square around ``box`` framed like a FER2013 face; may extend past the frame."""
    side = max(1, int(round(max(box.w, box.h) * (1.0 + margin))))
    cx = box.x + box.w / 2
    cy = box.y + box.h / 2 - _FER_CENTRE_SHIFT * box.h
    return int(round(cx - side / 2)), int(round(cy - side / 2)), side


def square_boxes(boxes: Sequence[Box], frame_shape: Sequence[int], margin: float = 0.25) -> list[Box]:
    """Square boxes framed like FER2013 faces (``margin`` of the box size added in all), clipped to the frame."""
    height, width = int(frame_shape[0]), int(frame_shape[1])
    out = []
    for box in boxes:
        x0, y0, side = _fer_square(box, margin)
        clipped = _clip_box(x0, y0, x0 + side, y0 + side, width, height, box.score)
        if clipped is not None:
            out.append(clipped)
    return out


def crop_faces(rgb: np.ndarray, boxes: Sequence[Box], margin: float = 0.25) -> list[np.ndarray]:
    """48x48 uint8 grayscale crops framed like FER2013 training faces, one per box.

    A box with ``eyes`` is cropped by ``emotion.inference.align.aligned_crop`` (scale, centre and tilt from the eyes,
    see ``Box``); one without is the square around the box. Parts of the square that fall outside the frame
    are filled by replicating the edge, which keeps the face centred as in FER2013 rather than shifted or squashed.
    """
    rgb = as_rgb(rgb)
    height, width = rgb.shape[:2]
    crops = []
    for box in boxes:
        aligned = aligned_crop(rgb, box.eyes) if box.eyes is not None else None
        if aligned is not None:
            crops.append(aligned)
            continue
        x0, y0, side = _fer_square(box, margin)
        cx0, cy0 = max(0, x0), max(0, y0)
        cx1, cy1 = min(width, x0 + side), min(height, y0 + side)
        if cx1 <= cx0 or cy1 <= cy0:
            raise ValueError(f"box {box} lies outside the {width}x{height} frame")
        patch = rgb[cy0:cy1, cx0:cx1]
        pads = (cy0 - y0, y0 + side - cy1, cx0 - x0, x0 + side - cx1)
        if any(pads):
            patch = cv2.copyMakeBorder(patch, *pads, cv2.BORDER_REPLICATE)
        if side > 4 * 48:  # shrink big faces cheaply first: PIL's resize of a 4000 px crop costs tens of ms
            patch = cv2.resize(patch, (4 * 48, 4 * 48), interpolation=cv2.INTER_AREA)
        crops.append(to_face48(patch))
    return crops
