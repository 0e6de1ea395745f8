"""Reading video files: any file OpenCV's FFmpeg backend reads, frame by frame, never loaded whole.

``VideoReader`` decodes a few frames ahead in a background thread and yields RGB frames with their
timestamps from the file (so variable-frame-rate videos get their real times). Bad files raise
``VideoError``, whose message is written for the user: missing, empty, a still image, not a video,
truncated or damaged, frames too large.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_FPS = 25.0  # used when a file does not state a usable frame rate
MAX_FRAME_PIXELS = 40_000_000  # 8K UHD is 33 MP; bigger frames would take gigabytes for the few decoded ahead
# Leading bytes of common video containers: a file with one of these that OpenCV cannot decode is damaged,
# not "not a video", and the message says so.
_CONTAINER_MAGIC = (
    (4, b"ftyp"),
    (4, b"moov"),
    (4, b"mdat"),
    (0, b"RIFF"),
    (0, b"\x1a\x45\xdf\xa3"),
    (0, b"OggS"),
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),
    (0, b"YUV4MPEG2"),
)
# Still-image formats OpenCV's FFmpeg backend would open as a one-frame "video".
_STILL_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "PPM", "JPEG2000", "ICO", "TGA"})


class VideoError(ValueError):
    """A video that cannot be analyzed; the message is written for the user (no stack trace needed)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself."""

    path: Path
    width: int  # source frame size in pixels
    height: int
    fps: float  # the stated frame rate, or DEFAULT_FPS when the file states none
    frame_count: int  # frames the container announces; 0 when unknown (it may also be slightly off)

    @property
    def duration_s(self) -> float:
        """The announced duration in seconds (0 when the frame count is unknown)."""
        return self.frame_count / self.fps


@dataclass
class VideoFrame:
    """One decoded frame: its index in the file, its timestamp and its pixels (RGB, shrunk to ``max_side``)."""

    index: int
    time_s: float
    rgb: np.ndarray


def _describe_unreadable(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if any(head[offset : offset + len(magic)] == magic for offset, magic in _CONTAINER_MAGIC):
        return (
            f"{path.name} looks like a video file but cannot be decoded: it is probably truncated, damaged or "
            "has no frames; try exporting it again"
        )
    return f"{path.name} is not a video OpenCV can read; use a common format such as MP4, WebM, AVI or MOV"


def _still_image_format(path: Path) -> str | None:
    """The image format name when ``path`` is a still image (which OpenCV would read as a one-frame video)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format in _STILL_FORMATS or (im.format == "GIF" and getattr(im, "n_frames", 1) <= 1):
                return im.format
    except Exception:  # PIL raises many types for files it does not know, which is what a video usually is
        return None
    return None


def open_capture(path: str | os.PathLike) -> tuple[cv2.VideoCapture, VideoInfo]:
    """An opened ``cv2.VideoCapture`` and what the file says about itself; raises VideoError for bad files."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path.name} is empty (0 bytes)")
    still = _still_image_format(path)
    if still:
        raise VideoError(
            f"{path.name} is a still {still} image, not a video; use `predict` or the Upload tab for photos"
        )
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) if cap.isOpened() else 0
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) if cap.isOpened() else 0
    if not cap.isOpened() or width <= 0 or height <= 0:
        cap.release()
        raise VideoError(_describe_unreadable(path))
    if width * height > MAX_FRAME_PIXELS:
        cap.release()
        raise VideoError(
            f"{path.name} has {width}×{height} frames, more than the {MAX_FRAME_PIXELS / 1e6:.0f} megapixels "
            "that can be analyzed; scale it down first"
        )
    fps = cap.get(cv2.CAP_PROP_FPS)
    if not (math.isfinite(fps) and 1.0 <= fps <= 1000.0):
        log.warning("%s states no usable frame rate (%s); assuming %.0f fps", path.name, fps, DEFAULT_FPS)
        fps = DEFAULT_FPS
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    count = int(count) if math.isfinite(count) and 0 < count < 2**31 else 0
    return cap, VideoInfo(path, width, height, float(fps), count)


def fit_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) shrunk to fit ``max_side`` (unchanged when it already fits or ``max_side`` is 0/None)."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class _Prefetch:
    """Runs an iterator in a daemon thread, up to ``depth`` items ahead; ``close`` stops and joins it."""

    _END = object()

    def __init__(self, items: Iterator, depth: int):
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="video-decode", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer, who raises it in its own thread
            self._put(exc)
            return
        self._put(self._END)

    def __iter__(self) -> Iterator:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class VideoReader:
    """Decodes a video file frame by frame (a few frames ahead in a background thread), never the whole file.

    Frames come as RGB, shrunk so their longer side is at most ``max_side`` (0 or None: full size).
    Timestamps come from the file, so variable-frame-rate videos get their real times. After iterating,
    ``frames_read`` and ``truncated`` tell whether the file ended before the frames it announced.
    Raises VideoError for files that are missing, empty, still images, or not decodable.
    """

    def __init__(self, path: str | os.PathLike, max_side: int | None = 1280, prefetch: int = 8):
        self.cap, info = open_capture(path)
        self.frames_read = 0
        # The first frame is decoded now: a file without one is refused before any output is written, and its
        # real size is known (FFmpeg turns phone videos upright, so it can differ from the stated size).
        self._first = self._read()
        if self._first is None:
            self.cap.release()
            raise VideoError(
                f"{info.path.name} contains no frame that could be decoded: it is probably truncated or damaged"
            )
        height, width = self._first.shape[:2]
        self.info = VideoInfo(info.path, width, height, info.fps, info.frame_count)
        self.max_side = max_side
        self.size = fit_size(width, height, max_side)  # (width, height) of the frames yielded
        self.scale = self.size[0] / width  # frame pixels per source pixel
        self._prefetch_depth = prefetch
        self._prefetch: _Prefetch | None = None

    def _read(self) -> np.ndarray | None:
        """The next frame as BGR, or None at the end or at a frame that cannot be decoded."""
        try:
            ok, bgr = self.cap.read()
        except cv2.error as exc:  # a damaged packet deep in the file: keep what was read so far
            log.warning("decoding stopped after %d frames: %s", self.frames_read, exc)
            return None
        return bgr if ok and bgr is not None and bgr.size else None

    def _decode(self) -> Iterator[VideoFrame]:
        last_t = -math.inf
        bgr, self._first = self._first, None
        while bgr is not None:
            t = self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if not math.isfinite(t) or t <= last_t:  # containers without usable timestamps: count frames
                t = max(0.0, last_t + 1.0 / self.info.fps) if self.frames_read else 0.0
            last_t = t
            rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB if bgr.ndim == 2 else cv2.COLOR_BGR2RGB)
            if (rgb.shape[1], rgb.shape[0]) != self.size:
                rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
            self.frames_read += 1
            yield VideoFrame(self.frames_read - 1, t, rgb)
            bgr = self._read()

    def __iter__(self) -> Iterator[VideoFrame]:
        if self._prefetch_depth <= 0:
            return self._decode()
        if self._prefetch is not None:
            raise RuntimeError("a VideoReader can be iterated once")
        self._prefetch = _Prefetch(self._decode(), self._prefetch_depth)
        return iter(self._prefetch)

    @property
    def truncated(self) -> bool:
        """Whether fewer frames were decoded than the file announced (beyond the usual off-by-a-few)."""
        expected = self.info.frame_count
        return expected > 0 and self.frames_read < expected - max(2, round(0.02 * expected))

    def close(self) -> None:
        """Stop decoding and release the file."""
        if self._prefetch is not None:
            self._prefetch.close()
        self.cap.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
