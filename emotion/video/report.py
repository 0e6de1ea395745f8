"""The outputs of a video analysis: the annotated video, faces.csv, timeline.png and summary.json.

Each writer takes frames or faces as ``emotion.video.analysis`` produces them and keeps only what its file needs:
the video writer encodes in a background thread, the CSV is written row by row, and ``Timeline`` keeps
seven probabilities per face per analyzed frame (about 1 MB for an hour of one face at 30 fps).
"""

from __future__ import annotations

import csv
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..data.labels import CLASS_NAMES, display
from ..inference.overlay import CLASS_COLOURS, draw_faces
from ..utils.runtime import write_json_atomic

log = logging.getLogger(__name__)

# FourCC per output suffix: OpenCV's bundled FFmpeg has no H.264 encoder, so .mp4 is MPEG-4 Part 2 (fast, plays
# in desktop players) and .webm is VP8 (plays in every browser, about 6x slower to encode).
CODECS = {".mp4": "mp4v", ".webm": "VP80", ".avi": "MJPG"}
CSV_COLUMNS = ("frame", "time_s", "face_id", "x", "y", "w", "h", "label", "score", *CLASS_NAMES)


class AnnotatedVideoWriter:
    """Draws each frame's faces (``emotion.inference.overlay``) and encodes the frames in a background thread.

    ``size`` is (width, height) of the RGB frames given to ``write``; ``draw=False`` writes them as they are.
    Raises ValueError for an unsupported suffix and OSError when OpenCV cannot create the file.
    """

    def __init__(self, path: Path, fps: float, size: tuple[int, int], draw: bool = True, depth: int = 8):
        self.path = Path(path)
        codec = CODECS.get(self.path.suffix.lower())
        if codec is None:
            raise ValueError(f"cannot write {self.path.name}: the annotated video must end in {', '.join(CODECS)}")
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*codec), float(fps), tuple(size))
        if not self._writer.isOpened():
            raise OSError(
                f"OpenCV cannot write the video {self.path} (codec {codec}); check that the folder is writable"
            )
        self._draw = draw
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._encode, name="video-encode", daemon=True)
        self._thread.start()

    def _encode(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain, so the producer never blocks on a dead writer
            try:
                rgb, faces = item
                if self._draw and faces:
                    rgb = draw_faces(rgb, faces)
                self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            except BaseException as exc:  # re-raised in the producer's thread by write/close
                self._error = exc

    def write(self, rgb: np.ndarray, faces: Sequence[dict]) -> None:
        """Queue one RGB frame with the faces to draw on it (blocks when the encoder is ``depth`` frames behind)."""
        if self._error is not None:
            raise self._error
        self._queue.put((rgb, faces))

    def close(self) -> None:
        """Encode what is queued and finish the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self._writer.release()
        if self._error is not None:
            raise self._error


class FacesCsv:
    """faces.csv: one row per face per analyzed frame; boxes in source-video pixels (``scale``: frame px per source px)."""

    def __init__(self, path: Path, scale: float = 1.0):
        self.path = Path(path)
        self.scale = scale
        self._fh = open(self.path, "w", newline="")
        self._csv = csv.writer(self._fh)
        self._csv.writerow(CSV_COLUMNS)

    def add(self, frame: int, time_s: float, faces: Sequence[dict]) -> None:
        """Rows for the faces of one analyzed frame."""
        for face in faces:
            box = [round(v / self.scale) for v in face["box"]]
            probs = [f"{face['probabilities'][name]:.4f}" for name in CLASS_NAMES]
            self._csv.writerow(
                [frame, f"{time_s:.3f}", face["face_id"], *box, face["label"], f"{face['score']:.4f}", *probs]
            )

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        self._fh.close()


@dataclass
class _FaceTrack:
    times: list[float] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)


class Timeline:
    """Each tracked face's probabilities over time: the summary and timeline.png."""

    def __init__(self) -> None:
        self.faces: dict[int, _FaceTrack] = {}

    def add(self, time_s: float, faces: Sequence[dict]) -> None:
        """Record the faces of one analyzed frame."""
        for face in faces:
            track = self.faces.setdefault(int(face["face_id"]), _FaceTrack())
            track.times.append(time_s)
            track.probs.append(np.array([face["probabilities"][name] for name in CLASS_NAMES], dtype=np.float32))

    def summary(self) -> list[dict]:
        """Per face id: frames seen, first and last time, share of frames per emotion, dominant emotion, mean probabilities."""
        out = []
        for face_id, track in sorted(self.faces.items()):
            probs = np.stack(track.probs)
            counts = np.bincount(probs.argmax(axis=1), minlength=len(CLASS_NAMES))
            share = counts / counts.sum()
            mean = probs.mean(axis=0)
            dominant = max(range(len(CLASS_NAMES)), key=lambda i: (share[i], mean[i]))  # ties go to the likelier one
            out.append(
                {
                    "face_id": face_id,
                    "frames": len(track.times),
                    "first_s": round(track.times[0], 3),
                    "last_s": round(track.times[-1], 3),
                    "dominant": CLASS_NAMES[dominant],
                    "share": {name: round(float(s), 4) for name, s in zip(CLASS_NAMES, share, strict=False)},
                    "mean_probabilities": {
                        name: round(float(p), 4) for name, p in zip(CLASS_NAMES, mean, strict=False)
                    },
                }
            )
        return out

    def write_summary(self, path: Path, header: dict) -> None:
        """summary.json: ``header`` (video, model) plus the per-face ``summary``."""
        write_json_atomic(path, {**header, "faces": self.summary()})

    def plot(self, path: Path, max_faces: int = 6) -> None:
        """timeline.png: one panel per face (the ``max_faces`` seen longest), one line per emotion in its colour."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        shown = sorted(sorted(self.faces, key=lambda i: len(self.faces[i].times), reverse=True)[:max_faces])
        fig = Figure(figsize=(10, 0.8 + 2.2 * max(1, len(shown))), layout="constrained")
        FigureCanvasAgg(fig)  # a canvas of its own: no pyplot, so this is safe in the app's threads
        axes = fig.subplots(max(1, len(shown)), 1, sharex=True, squeeze=False)[:, 0]
        if not shown:
            axes[0].text(
                0.5, 0.5, "No face found in the analyzed frames", ha="center", va="center", transform=axes[0].transAxes
            )
            axes[0].set_axis_off()
        summaries = {s["face_id"]: s for s in self.summary()}
        for ax, face_id in zip(axes, shown, strict=False):
            times, probs = _with_gaps(np.array(self.faces[face_id].times), np.stack(self.faces[face_id].probs))
            for i, name in enumerate(CLASS_NAMES):
                ax.plot(
                    times,
                    probs[:, i],
                    color=np.array(CLASS_COLOURS[name]) / 255.0,
                    linewidth=1.4,
                    label=display(name, with_emoji=False),
                )
            s = summaries[face_id]
            ax.set_title(
                f"Face {face_id}: mostly {display(s['dominant'], with_emoji=False)} "
                f"({s['share'][s['dominant']]:.0%} of {s['frames']} frames)",
                fontsize=10,
                loc="left",
            )
            ax.set_ylim(0, 1)
            ax.set_ylabel("probability")
            ax.grid(alpha=0.3)
        if shown:
            axes[-1].set_xlabel("time (s)")
            fig.legend(
                *axes[0].get_legend_handles_labels(),
                loc="outside upper center",
                ncol=len(CLASS_NAMES),
                fontsize=8,
                frameon=False,
            )
            if len(self.faces) > len(shown):
                fig.suptitle(
                    f"{len(shown)} of {len(self.faces)} faces shown (those seen longest); faces.csv has all", fontsize=9
                )
        fig.savefig(path, dpi=100)


def _with_gaps(times: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert a NaN row where a face was out of view, so its lines break instead of bridging the gap."""
    if len(times) < 3:
        return times, probs
    steps = np.diff(times)
    gaps = np.flatnonzero(steps > 3 * max(float(np.median(steps)), 1e-3)) + 1
    if not len(gaps):
        return times, probs
    times = np.insert(times, gaps, np.nan)
    probs = np.insert(probs, gaps, np.nan, axis=0)
    return times, probs
