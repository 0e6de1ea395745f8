"""Videos analyzed frame by frame: any file OpenCV reads, every face labelled and followed by a stable id.

    recognizer = Recognizer(EmotionClassifier.from_checkpoint(), FaceDetector())
    result = analyze_video("clip.mp4", "out/", recognizer)   # annotated.mp4, faces.csv, timeline.png, summary.json

For a caller's own loop, ``VideoReader`` yields decoded frames and ``VideoAnalyzer`` labels them:

    with VideoReader("clip.mp4") as reader:
        for frame in VideoAnalyzer(recognizer).run(reader):
            ...  # frame.index, frame.time_s, frame.rgb, frame.faces (each face dict has a "face_id")

A video is never loaded whole: a background thread decodes a few frames ahead while the current one is
analyzed, and ``VideoJob`` encodes the annotated video in another thread, so decoding, inference and
encoding overlap on two cores. Bad files raise ``VideoError`` with a message written for the user.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from .recognizer import FaceTracker, Recognizer
from .video_report import AnnotatedVideoWriter, FacesCsv, Timeline

log = logging.getLogger(__name__)

DEFAULT_FPS = 25.0  # used when a file does not state a usable frame rate
MAX_FRAME_PIXELS = 40_000_000  # 8K UHD is 33 MP; bigger frames would take gigabytes for the few decoded ahead
# Leading bytes of common video containers: a file with one of these that OpenCV cannot decode is damaged,
# not "not a video", and the message says so.
_CONTAINER_MAGIC = ((4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (0, b"RIFF"), (0, b"\x1a\x45\xdf\xa3"), (0, b"OggS"),
                    (0, b"FLV"), (0, b"\x00\x00\x01\xba"), (0, b"YUV4MPEG2"))
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


@dataclass
class FrameFaces:
    """A frame with its faces; on frames skipped by ``every`` the faces are those of the last analyzed frame."""

    frame: VideoFrame
    faces: list[dict]  # emotion.predict.face_result dicts plus "face_id", boxes in the pixels of ``frame.rgb``
    analyzed: bool


def _describe_unreadable(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if any(head[offset:offset + len(magic)] == magic for offset, magic in _CONTAINER_MAGIC):
        return (f"{path.name} looks like a video file but cannot be decoded: it is probably truncated, damaged or "
                "has no frames; try exporting it again")
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
        raise VideoError(f"{path.name} is a still {still} image, not a video; use `predict` or the Upload tab for photos")
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) if cap.isOpened() else 0
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) if cap.isOpened() else 0
    if not cap.isOpened() or width <= 0 or height <= 0:
        cap.release()
        raise VideoError(_describe_unreadable(path))
    if width * height > MAX_FRAME_PIXELS:
        cap.release()
        raise VideoError(f"{path.name} has {width}×{height} frames, more than the {MAX_FRAME_PIXELS / 1e6:.0f} megapixels "
                         "that can be analyzed; scale it down first")
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
            raise VideoError(f"{info.path.name} contains no frame that could be decoded: it is probably truncated or damaged")
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


class VideoAnalyzer:
    """Labels the faces of successive frames, each with a ``face_id`` kept across frames by a ``FaceTracker``.

    ``every`` analyzes one frame in N (the frames between carry the last results); ``smoothing`` is the
    tracker's weight of the newest frame in each face's moving average (1.0 = raw per-frame probabilities).
    """

    def __init__(self, recognizer: Recognizer, every: int = 1, smoothing: float = 0.5):
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.recognizer = recognizer
        self.every = every
        self.tracker = FaceTracker(alpha=smoothing)

    def analyze(self, frame: VideoFrame) -> list[dict]:
        """The faces of one frame, largest first, each with its ``face_id``."""
        faces = self.recognizer.analyze(frame.rgb, tracker=self.tracker)
        for face, face_id in zip(faces, self.tracker.ids):
            face["face_id"] = face_id
        return faces

    def run(self, frames: Iterable[VideoFrame]) -> Iterator[FrameFaces]:
        """Every frame with its faces, in order."""
        last: list[dict] = []
        for frame in frames:
            analyzed = frame.index % self.every == 0
            if analyzed:
                last = self.analyze(frame)
            yield FrameFaces(frame, last, analyzed)


@dataclass
class VideoConfig:
    """How ``analyze_video`` runs."""

    every: int = 1  # analyze one frame in N; the frames between show the last labels in the annotated video
    max_side: int = 1280  # frames are shrunk to this longer side for analysis and the annotated video; 0 = full size
    smoothing: float = 0.5  # weight of the newest frame in each face's moving average; 1.0 = raw per-frame probabilities
    annotated_name: str = "annotated.mp4"  # .mp4 (MPEG-4 Part 2, fast) or .webm (VP8: plays in browsers, ~6x slower to encode)
    max_seconds: float = 0.0  # refuse videos longer than this (VideoError); 0 = no limit
    timeline_faces: int = 6  # faces plotted in timeline.png (those seen longest); the CSV and summary keep all


@dataclass
class VideoResult:
    """What ``analyze_video`` wrote and found."""

    info: VideoInfo
    out_dir: Path
    annotated: Path
    csv: Path
    timeline: Path
    summary: Path
    frames: int  # frames decoded
    analyzed_frames: int
    truncated: bool  # the file ended before the frames it announced
    seconds: float  # wall time of the whole run
    faces: list[dict] = field(default_factory=list)  # the per-face part of summary.json

    @property
    def fps(self) -> float:
        """Frames processed per second of wall time."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def problem(self) -> str | None:
        """A one-line description of what went wrong with this video (truncated, no faces), or None."""
        if self.truncated:
            return (f"{self.info.path.name} is truncated or damaged: only {self.frames} of the {self.info.frame_count} "
                    f"frames it announces could be decoded; the outputs cover its first {self.frames / self.info.fps:.1f} s")
        if not self.faces:
            return f"no face was found in any of the {self.analyzed_frames} analyzed frames of {self.info.path.name}"
        return None


class VideoJob:
    """One video analyzed into ``out_dir``; iterate it to drive the work (progress, cancelling), or call ``run``.

    Each iteration yields a ``FrameFaces`` once it has been written. Stopping early (``close``, or leaving
    the loop) releases the file and the writers; ``result`` is set only when the whole video was processed.
    """

    def __init__(self, path: str | os.PathLike, out_dir: str | os.PathLike, recognizer: Recognizer,
                 config: VideoConfig | None = None):
        self.config = config or VideoConfig()
        if self.config.every < 1:
            raise ValueError(f"--every must be at least 1, got {self.config.every}")
        if self.config.max_side < 0 or 0 < self.config.max_side < 32:
            raise ValueError(f"--max-side must be 0 (full size) or at least 32 pixels, got {self.config.max_side}")
        if not 0.0 < self.config.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.config.smoothing}")
        self.recognizer = recognizer
        self.reader = VideoReader(path, self.config.max_side)
        info = self.reader.info
        if self.config.max_seconds and info.duration_s > self.config.max_seconds:
            self.reader.close()
            raise VideoError(f"{info.path.name} lasts {info.duration_s:.0f} s; at most {self.config.max_seconds:.0f} s can be analyzed here")
        self.out_dir = Path(out_dir)
        self.result: VideoResult | None = None
        self._closers: list[Callable[[], None]] = [self.reader.close]

    @property
    def info(self) -> VideoInfo:
        return self.reader.info

    def __iter__(self) -> Iterator[FrameFaces]:
        cfg, info = self.config, self.reader.info
        self.out_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        annotated = AnnotatedVideoWriter(self.out_dir / cfg.annotated_name, info.fps, self.reader.size)
        self._closers.append(annotated.close)
        csv = FacesCsv(self.out_dir / "faces.csv", scale=self.reader.scale)
        self._closers.append(csv.close)
        timeline = Timeline()
        analyzer = VideoAnalyzer(self.recognizer, cfg.every, cfg.smoothing)
        analyzed = 0
        try:
            for item in analyzer.run(self.reader):
                if cfg.max_seconds and item.frame.time_s > cfg.max_seconds:
                    raise VideoError(f"{info.path.name} is longer than {cfg.max_seconds:.0f} s, the most that can be analyzed here")
                annotated.write(item.frame.rgb, item.faces)
                if item.analyzed:
                    analyzed += 1
                    csv.add(item.frame.index, item.frame.time_s, item.faces)
                    timeline.add(item.frame.time_s, item.faces)
                yield item
            annotated.close()
            csv.close()
        finally:
            self.close()
        frames = self.reader.frames_read
        timeline.plot(self.out_dir / "timeline.png", cfg.timeline_faces)
        faces = timeline.summary()
        result = VideoResult(info, self.out_dir, annotated.path, csv.path, self.out_dir / "timeline.png",
                             self.out_dir / "summary.json", frames, analyzed, self.reader.truncated,
                             time.perf_counter() - start, faces)
        timeline.write_summary(result.summary, {
            "video": {"file": info.path.name, "width": info.width, "height": info.height, "fps": round(info.fps, 3),
                      "frames": frames, "announced_frames": info.frame_count, "truncated": result.truncated,
                      "analyzed_frames": analyzed, "every": cfg.every, "analyzed_size": list(self.reader.size)},
            "model": self.recognizer.classifier.name,
            "face_detector": self.recognizer.detector.source if self.recognizer.detector else None,
        })
        self.result = result
        log.info("%s: %d frames (%d analyzed) in %.1f s, %.1f frames/s, %d face id(s)", info.path.name, frames,
                 analyzed, result.seconds, result.fps, len(faces))

    def run(self) -> VideoResult:
        """Process the whole video and return what was written."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    def close(self) -> None:
        """Release the file and the writers (idempotent)."""
        while self._closers:
            self._closers.pop()()


def analyze_video(path: str | os.PathLike, out_dir: str | os.PathLike, recognizer: Recognizer,
                  config: VideoConfig | None = None) -> VideoResult:
    """Analyze a whole video into ``out_dir``: annotated video, faces.csv, timeline.png and summary.json."""
    return VideoJob(path, out_dir, recognizer, config).run()


def write_clip(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float) -> Path:
    """Write RGB frames (all one size) as a video (codec from the suffix, as for the annotated video)."""
    frames = iter(frames)
    first = next(frames)
    writer = AnnotatedVideoWriter(Path(path), fps, (first.shape[1], first.shape[0]), draw=False)
    try:
        writer.write(first, [])
        for rgb in frames:
            writer.write(rgb, [])
    finally:
        writer.close()
    return writer.path


def benchmark_fps(recognizer: Recognizer, frame: np.ndarray, frames: int = 300, fps: float = 30.0,
                  config: VideoConfig | None = None) -> dict:
    """Frames per second of ``analyze_video`` end to end (decode, analysis, all four outputs) on a synthetic clip.

    The clip shows ``frame`` (e.g. 640x480 with one face) drifting a few pixels per frame, like a steady
    camera; writing it is not timed. It runs with the caller's torch threads (``train_cli.py video`` uses 1,
    leaving the other core to decoding and encoding, which run alongside).
    """
    with tempfile.TemporaryDirectory(prefix="emotion-video-bench-") as tmp:
        clip = write_clip(Path(tmp) / "clip.mp4", (np.roll(frame, (i % 24) - 12, axis=1) for i in range(frames)), fps)
        result = analyze_video(clip, Path(tmp) / "out", recognizer, config)
    return {"frames": result.frames, "seconds": round(result.seconds, 3), "fps": round(result.fps, 1),
            "face_ids": len(result.faces), "every": (config or VideoConfig()).every,
            "size": [int(frame.shape[1]), int(frame.shape[0])], "torch_threads": torch.get_num_threads()}
