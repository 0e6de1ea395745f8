"""Videos analyzed frame by frame: any file OpenCV reads, every face labelled and followed by a stable id.

    recognizer = Recognizer(EmotionClassifier.from_checkpoint(), FaceDetector())
    result = analyze_video("clip.mp4", "out/", recognizer)   # annotated.mp4, faces.csv, timeline.png, summary.json

For a caller's own loop, ``VideoReader`` yields decoded frames and ``VideoAnalyzer`` labels them:

    with VideoReader("clip.mp4") as reader:
        for item in VideoAnalyzer(recognizer).run(reader):
            ...  # item.frame.index, .time_s, .rgb; item.faces (each face dict has a "face_id")

A video is never loaded whole: ``VideoReader`` (emotion.video.reader) decodes a few frames ahead in a
background thread while the current one is analyzed, and ``VideoJob`` encodes the annotated video in
another, so decoding, inference and encoding overlap on two cores. Bad files raise ``VideoError`` with a
message written for the user. The reader's names are importable from here too.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..inference.recognizer import FaceTracker, Recognizer
from .reader import VideoError, VideoFrame, VideoInfo, VideoReader, open_capture
from .report import AnnotatedVideoWriter, FacesCsv, Timeline

__all__ = [
    "FrameFaces",
    "VideoAnalyzer",
    "VideoConfig",
    "VideoError",
    "VideoFrame",
    "VideoInfo",
    "VideoJob",
    "VideoReader",
    "VideoResult",
    "analyze_video",
    "benchmark_fps",
    "open_capture",
    "write_clip",
]

log = logging.getLogger(__name__)


@dataclass
class FrameFaces:
    """A frame with its faces; on frames skipped by ``every`` the faces are those of the last analyzed frame."""

    frame: VideoFrame
    faces: list[
        dict
    ]  # emotion.inference.classifier.face_result dicts plus "face_id", boxes in the pixels of ``frame.rgb``
    analyzed: bool


class VideoAnalyzer:
    """Labels the faces of successive frames, each with a ``face_id`` kept across frames by a ``FaceTracker``.

    ``every`` analyzes one frame in N (the frames between carry the last results); ``smoothing`` is the
    tracker's weight of the newest frame in each face's moving average (1.0 = raw per-frame probabilities).
    With smoothing, an ensemble runs one network per analyzed frame, in turn (see ``FaceTracker``);
    raw per-frame probabilities come from the whole ensemble on every frame.
    """

    def __init__(self, recognizer: Recognizer, every: int = 1, smoothing: float = 0.5):
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.recognizer = recognizer
        self.every = every
        self.tracker = FaceTracker(alpha=smoothing, rotate=smoothing < 1.0)

    def analyze(self, frame: VideoFrame) -> list[dict]:
        """The faces of one frame, largest first, each with its ``face_id``."""
        faces = self.recognizer.analyze(frame.rgb, tracker=self.tracker)
        for face, face_id in zip(faces, self.tracker.ids, strict=False):
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
    smoothing: float = (
        0.5  # weight of the newest frame in each face's moving average; 1.0 = raw per-frame probabilities
    )
    annotated_name: str = (
        "annotated.mp4"  # .mp4 (MPEG-4 Part 2, fast) or .webm (VP8: plays in browsers, ~6x slower to encode)
    )
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
            return (
                f"{self.info.path.name} is truncated or damaged: only {self.frames} of the {self.info.frame_count} "
                f"frames it announces could be decoded; the outputs cover its first {self.frames / self.info.fps:.1f} s"
            )
        if not self.faces:
            return f"no face was found in any of the {self.analyzed_frames} analyzed frames of {self.info.path.name}"
        return None


class VideoJob:
    """One video analyzed into ``out_dir``; iterate it to drive the work (progress, cancelling), or call ``run``.

    Each iteration yields a ``FrameFaces`` once it has been written. Stopping early (``close``, or leaving
    the loop) releases the file and the writers; ``result`` is set only when the whole video was processed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        out_dir: str | os.PathLike,
        recognizer: Recognizer,
        config: VideoConfig | None = None,
    ):
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
            raise VideoError(
                f"{info.path.name} lasts {info.duration_s:.0f} s; at most {self.config.max_seconds:.0f} s can be analyzed here"
            )
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
                    raise VideoError(
                        f"{info.path.name} is longer than {cfg.max_seconds:.0f} s, the most that can be analyzed here"
                    )
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
        result = VideoResult(
            info,
            self.out_dir,
            annotated.path,
            csv.path,
            self.out_dir / "timeline.png",
            self.out_dir / "summary.json",
            frames,
            analyzed,
            self.reader.truncated,
            time.perf_counter() - start,
            faces,
        )
        timeline.write_summary(
            result.summary,
            {
                "video": {
                    "file": info.path.name,
                    "width": info.width,
                    "height": info.height,
                    "fps": round(info.fps, 3),
                    "frames": frames,
                    "announced_frames": info.frame_count,
                    "truncated": result.truncated,
                    "analyzed_frames": analyzed,
                    "every": cfg.every,
                    "analyzed_size": list(self.reader.size),
                },
                "model": self.recognizer.classifier.name,
                "face_detector": self.recognizer.detector.source if self.recognizer.detector else None,
            },
        )
        self.result = result
        log.info(
            "%s: %d frames (%d analyzed) in %.1f s, %.1f frames/s, %d face id(s)",
            info.path.name,
            frames,
            analyzed,
            result.seconds,
            result.fps,
            len(faces),
        )

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


def analyze_video(
    path: str | os.PathLike, out_dir: str | os.PathLike, recognizer: Recognizer, config: VideoConfig | None = None
) -> VideoResult:
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


def benchmark_fps(
    recognizer: Recognizer, frame: np.ndarray, frames: int = 300, fps: float = 30.0, config: VideoConfig | None = None
) -> dict:
    """Frames per second of ``analyze_video`` end to end (decode, analysis, all four outputs) on a synthetic clip.

    The clip shows ``frame`` (e.g. 640x480 with one face) drifting a few pixels per frame, like a steady
    camera; writing it is not timed. It runs with the caller's torch threads (``train_cli.py video`` uses 1,
    leaving the other core to decoding and encoding, which run alongside).
    """
    with tempfile.TemporaryDirectory(prefix="emotion-video-bench-") as tmp:
        clip = write_clip(Path(tmp) / "clip.mp4", (np.roll(frame, (i % 24) - 12, axis=1) for i in range(frames)), fps)
        result = analyze_video(clip, Path(tmp) / "out", recognizer, config)
    return {
        "frames": result.frames,
        "seconds": round(result.seconds, 3),
        "fps": round(result.fps, 1),
        "face_ids": len(result.faces),
        "every": (config or VideoConfig()).every,
        "size": [int(frame.shape[1]), int(frame.shape[0])],
        "torch_threads": torch.get_num_threads(),
    }
