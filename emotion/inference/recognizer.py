"""The recognizer API shared by the CLI and the app: faces in, per-face emotions out, optionally smoothed over time.

``Recognizer.analyze`` runs detection, cropping and one batched classifier forward per frame.
``FaceTracker`` (one per video stream) smooths each face's probabilities across frames so labels do not
flicker; faces are matched between frames by box overlap. With an ensemble or test-time views, a tracked
stream runs one network on one view per frame, in turn, and each face keeps every (network, view) pair's
latest output: their mean is the whole model's prediction (for a still face, exactly), at the cost of one
network on one view per frame.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from ..data.dataset import MAX_DECODE_PIXELS, WIDE_MODES, to_face48, wide_to_uint8
from .classifier import EmotionClassifier, face_result
from .detector_views import TileSchedule
from .faces import Box, FaceDetector, as_rgb, crop_faces

log = logging.getLogger(__name__)

STAGES = ("detect", "crop", "forward", "smooth")  # keys ``analyze`` fills in ``timings`` (milliseconds)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not overlap)."""
    iw = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    ih = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / float(a.w * a.h + b.w * b.h - inter)


@dataclass
class _Track:
    box: Box
    probs: np.ndarray
    face_id: int  # stable id of this face in its stream, 1, 2, ... in order of first appearance
    latest: np.ndarray  # (networks, classes): each network's latest probabilities for this face
    missed: int = 0  # consecutive frames without a matching face


def _latest_outputs(probs: np.ndarray, slot: int | None, slots: int) -> np.ndarray:
    """A face's first per-slot memory: this frame's output standing in for every slot (one row for a whole-model frame)."""
    return np.tile(probs, (slots if slot is not None else 1, 1))


class FaceTracker:
    """Per-stream temporal smoothing: an exponential moving average of each face's probabilities.

    ``alpha`` is the weight of the newest frame (1.0 turns smoothing off). A face is the same face as in
    an earlier frame when their boxes overlap by at least ``iou_threshold`` (greedy, best overlap first);
    a track not seen for more than ``max_age`` frames is forgotten, so a face that comes back starts fresh.
    After each ``update``, ``ids`` holds the face id of every box, in the order of the boxes.

    ``rotate`` (with a model of several networks or test-time views): ``next_slot`` hands out its slots (a
    network and a view, see ``Recognizer.analyze``) in turn, one per frame, and ``update`` takes that slot's
    probabilities; each face keeps every slot's latest output and smooths their mean. A new face starts with
    its first slot's output standing in for the others.

    ``scan_tiles`` (a live stream): each frame also scans a few of the detector's corner tiles for faces too
    small for the whole-frame pass, as ``tiles`` (a ``TileSchedule``) picks them.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        iou_threshold: float = 0.3,
        max_age: int = 10,
        rotate: bool = True,
        scan_tiles: bool = False,
    ):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.iou_threshold = iou_threshold
        self.max_age = max_age
        self.rotate = rotate
        self.tiles = TileSchedule() if scan_tiles else None
        self.tracks: list[_Track] = []
        self.ids: list[int] = []
        self._next_id = 1
        self._frame = 0

    def reset(self) -> None:
        """Forget every face, e.g. when the stream restarts."""
        if self.tiles is not None:
            self.tiles = TileSchedule()
        self.tracks = []
        self.ids = []
        self._next_id = 1
        self._frame = 0

    def next_slot(self, slots: int) -> int | None:
        """The slot (0-based) to run on the next frame of a model with ``slots`` of them; None: all of them."""
        if not self.rotate or slots < 2:
            return None
        self._frame += 1
        return (self._frame - 1) % slots

    def update(self, boxes: Sequence[Box], probs: np.ndarray, slot: int | None = None, slots: int = 1) -> np.ndarray:
        """Smoothed probabilities for this frame's faces, in the order of ``boxes``. ``probs`` are the
        whole model's, or with ``slot`` those of that slot (0-based) of a model with ``slots`` of them."""
        probs = np.asarray(probs, dtype=np.float32)
        if len(boxes) != len(probs):
            raise ValueError(f"{len(boxes)} boxes but {len(probs)} probability rows")
        if slot is not None and not 0 <= slot < slots:
            raise ValueError(f"slot must be 0-{slots - 1}, got {slot}")
        pairs = sorted(
            ((box_iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)),
            reverse=True,
        )
        matched_tracks: set[int] = set()
        track_of: dict[int, int] = {}
        for iou, ti, bi in pairs:
            if iou < self.iou_threshold:
                break
            if ti not in matched_tracks and bi not in track_of:
                matched_tracks.add(ti)
                track_of[bi] = ti
        out = probs.copy()
        for bi, box in enumerate(boxes):
            if bi in track_of:
                track = self.tracks[track_of[bi]]
                if slot is None or len(track.latest) != slots:  # a whole-model frame, or the model was switched
                    track.latest = _latest_outputs(probs[bi], slot, slots)
                else:
                    track.latest[slot] = probs[bi]
                track.probs = self.alpha * track.latest.mean(0) + (1.0 - self.alpha) * track.probs
                track.box, track.missed = box, 0
                out[bi] = track.probs
        for ti, track in enumerate(self.tracks):
            if ti not in matched_tracks:
                track.missed += 1
        ids = [self.tracks[track_of[bi]].face_id if bi in track_of else 0 for bi in range(len(boxes))]
        self.tracks = [t for t in self.tracks if t.missed <= self.max_age]
        for bi, box in enumerate(boxes):
            if bi not in track_of:
                self.tracks.append(
                    _Track(box, probs[bi].copy(), self._next_id, _latest_outputs(probs[bi], slot, slots))
                )
                ids[bi] = self._next_id
                self._next_id += 1
        self.ids = ids
        return out


class Recognizer:
    """A face detector and an emotion classifier, shared by all users of a process (both are thread-safe)."""

    def __init__(self, classifier: EmotionClassifier, detector: FaceDetector | None):
        self.classifier = classifier
        self.detector = detector

    def analyze(
        self,
        rgb: np.ndarray,
        *,
        whole_image: bool = False,
        tracker: FaceTracker | None = None,
        timings: dict[str, float] | None = None,
        small_faces: bool | None = None,
    ) -> list[dict]:
        """Emotions of every face in an image, largest face first, as ``emotion.inference.classifier.face_result`` dicts.

        ``rgb`` is an RGB, RGBA or grayscale array of any size. ``whole_image`` classifies the whole image
        as one face instead of detecting faces. ``tracker`` smooths results across video frames and picks
        the network and test-time view that run on this frame (see ``FaceTracker``).
        ``timings``, when given, receives milliseconds per stage (``STAGES``). ``small_faces`` runs the
        detector's small-face pass over all four tiles (``FaceDetector.detect``); by default a still image gets
        it and a video frame (one with a ``tracker``) does not, as it must keep pace: a tracker made with
        ``scan_tiles`` has a few tiles scanned a frame instead.
        """
        image = as_rgb(rgb)
        height, width = image.shape[:2]
        t0 = time.perf_counter()
        if whole_image:
            boxes = [Box(0, 0, width, height)]
        elif self.detector is None:
            raise RuntimeError("this recognizer has no face detector: use whole_image=True or give it a FaceDetector")
        else:
            boxes = self._detect(image, tracker, small_faces)
        t1 = time.perf_counter()
        # A whole image is centre-cropped like any photo; detected faces are framed like FER2013 crops.
        crops = [to_face48(image)] if whole_image else crop_faces(image, boxes)
        t2 = time.perf_counter()
        # With a tracker, each frame runs one (network, TTA view) slot, networks first, and the slots' outputs are
        # averaged across frames; the temperature is applied to that mean, as to the whole model's, so a still
        # face gets exactly the whole model's bars at a fraction of its cost per frame.
        members, views = self.classifier.members, self.classifier.views
        slot = tracker.next_slot(members * views) if tracker is not None else None
        if slot is None:
            probs = self.classifier.predict_faces(crops, calibrated=tracker is None)
        else:
            view, member = divmod(slot, members)
            probs = self.classifier.predict_faces(
                crops, member if members > 1 else None, calibrated=False, view=view if views > 1 else None
            )
        t3 = time.perf_counter()
        if tracker is not None:
            probs = self.classifier.calibrate(tracker.update(boxes, probs, slot, members * views))
        t4 = time.perf_counter()
        if timings is not None:
            for stage, start, end in zip(STAGES, (t0, t1, t2, t3), (t1, t2, t3, t4), strict=False):
                timings[stage] = (end - start) * 1000.0
        return [face_result((b.x, b.y, b.w, b.h), p, b.eyes) for b, p in zip(boxes, probs, strict=False)]

    def _detect(self, image: np.ndarray, tracker: FaceTracker | None, small_faces: bool | None) -> list[Box]:
        """The detector's boxes, with the small-face pass a photo gets, or the tiles a live stream's turn gives."""
        if small_faces is not None or tracker is None:
            return self.detector.detect(image, small_faces=tracker is None if small_faces is None else small_faces)
        if tracker.tiles is None:
            return self.detector.detect(image)
        boxes = self.detector.detect(image, tiles=tracker.tiles.next())
        tracker.tiles.found([b.tile for b in boxes])
        return boxes


class ImageTooLargeError(ValueError):
    """An image with so many pixels that decoding it would take too much memory; refused before decoding."""


def _draft_request(size: tuple[int, int], max_side: int | None, max_pixels: int) -> tuple[int, int] | None:
    """The size to ask ``Image.draft`` for: small enough for ``max_side`` and ``max_pixels``, None when no reduction is needed."""
    width, height = size
    scale = 1
    while (width // scale) * (height // scale) > max_pixels and scale < 8:  # JPEG can decode at 1/2, 1/4 or 1/8 scale
        scale *= 2
    request = (max(1, width // scale), max(1, height // scale))
    if max_side:
        request = (min(request[0], max_side), min(request[1], max_side))
    return None if request == (width, height) else request


def read_rgb(
    source: str | os.PathLike | BinaryIO, max_side: int | None = None, max_pixels: int = MAX_DECODE_PIXELS
) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB, turned upright by its EXIF orientation; raises on unreadable files.

    With ``max_side`` the image is shrunk to fit it, and JPEGs are decoded at reduced scale, so an
    8000 px photo loads in a fraction of the time. Any bit depth is scaled to 8 bits (16-bit PNG/TIFF,
    float TIFF). An image with more than ``max_pixels`` pixels is decoded at reduced scale when the
    format allows (JPEG), else refused with ImageTooLargeError before any pixel is decoded, so a tiny
    file claiming 13000x13000 pixels cannot take gigabytes of memory.
    """
    try:
        with warnings.catch_warnings():  # PIL's decompression-bomb warning: the size is checked right below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    with im:
        request = _draft_request(im.size, max_side, max_pixels)
        if request is not None:
            im.draft(None, request)  # JPEG only: decodes at 1/2 to 1/8 scale; other formats are unchanged
        if im.width * im.height > max_pixels:
            raise ImageTooLargeError(
                f"{im.width}x{im.height} pixels, more than the {max_pixels / 1e6:.0f} megapixels that are decoded"
            )
        im = ImageOps.exif_transpose(im)  # phone photos are often stored sideways with an EXIF rotation
        if max_side:
            im.thumbnail((max_side, max_side))
        if im.mode in WIDE_MODES:
            return as_rgb(wide_to_uint8(im))
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            return as_rgb(np.asarray(im.convert("RGBA")))
        return as_rgb(np.asarray(im.convert("RGB")))


def predict_files(paths: Sequence[str | os.PathLike], recognizer: Recognizer, whole_image: bool = False) -> list[dict]:
    """``[{"image": path, "faces": [...]}, ...]`` for image files; an unreadable file gets an ``"error"`` instead."""
    results = []
    for path in paths:
        try:
            rgb = read_rgb(path)
        except Exception as exc:  # PIL raises many types for bad files; one bad file must not stop the batch
            log.warning("cannot read %s (%s)", path, exc)
            results.append({"image": str(path), "error": f"cannot read image: {type(exc).__name__}: {exc}"})
            continue
        results.append({"image": str(path), "faces": recognizer.analyze(rgb, whole_image=whole_image)})
    return results
