"""The Live tab's timeline: the main face's smoothed probabilities over the last 30 seconds, as a small chart.

It is drawn with OpenCV into a small RGB image and redrawn only a few times per second, so it costs the
stream about a millisecond now and then rather than a plotting library's tens of milliseconds per frame.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np

from ..data.labels import CLASS_NAMES, display
from ..inference.overlay import CLASS_COLOURS

WINDOW_S = 30.0  # seconds of history shown
EVERY_S = 0.25  # seconds between redraws: 4 per second looks live and costs the stream next to nothing
GAP_S = 1.0  # no face for longer than this breaks the lines instead of joining across the gap
SIZE = (640, 200)  # (width, height) of the chart image in pixels
_PLOT = (40, 10, 520, 170)  # (left, top, right, bottom) of the plotting area; the legend sits to its right
_BACKGROUND = (255, 255, 255)
_GRID = (225, 225, 225)
_TEXT = (90, 90, 90)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class Timeline:
    """A rolling history of one face's class probabilities, and its chart.

    ``add`` records a frame's probabilities; ``due`` says whether a redraw is worth it (at most one per
    ``every_s``); ``render`` draws the last ``window_s`` seconds, newest at the right edge. Frames without
    a face are simply not recorded: a gap longer than ``GAP_S`` breaks the lines.
    """

    def __init__(self, window_s: float = WINDOW_S, every_s: float = EVERY_S):
        self.window_s = window_s
        self.every_s = every_s
        self.times: deque[float] = deque()
        self.probs: deque[np.ndarray] = deque()
        self.drawn_at: float | None = None
        self.drawn_empty = False  # the last chart drawn had no lines: another empty one would be the same picture

    def reset(self) -> None:
        """Forget everything, e.g. when the stream restarts."""
        self.times.clear()
        self.probs.clear()
        self.drawn_at = None
        self.drawn_empty = False

    def add(self, now: float, probs: np.ndarray) -> None:
        """Record the main face's probabilities (in ``CLASS_NAMES`` order) at time ``now``."""
        self.times.append(now)
        self.probs.append(np.asarray(probs, dtype=np.float32))
        self._forget(now)

    def _forget(self, now: float) -> None:
        while self.times and self.times[0] < now - self.window_s:
            self.times.popleft()
            self.probs.popleft()

    def due(self, now: float) -> bool:
        """Whether ``every_s`` has passed since the last ``render`` and the chart would show something new."""
        self._forget(now)
        if self.drawn_empty and not self.times:
            return False
        return self.drawn_at is None or now - self.drawn_at >= self.every_s

    def _segments(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Runs of frames without a gap longer than ``GAP_S``: (times (n,), probabilities (n, 7)) each."""
        if not self.times:
            return []
        times, rows = np.array(self.times), np.stack(self.probs)
        cuts = np.flatnonzero(np.diff(times) > GAP_S) + 1
        return list(zip(np.split(times, cuts), np.split(rows, cuts), strict=False))

    def render(self, now: float) -> np.ndarray:
        """The chart (``SIZE``, RGB uint8): one line per emotion in its colour, time axis in seconds ago."""
        self.drawn_at = now
        self._forget(now)
        self.drawn_empty = not self.times
        width, height = SIZE
        left, top, right, bottom = _PLOT
        out = np.full((height, width, 3), _BACKGROUND, np.uint8)
        for p in (0.0, 0.5, 1.0):
            y = round(bottom - p * (bottom - top))
            cv2.line(out, (left, y), (right, y), _GRID, 1)
            cv2.putText(out, f"{p:.0%}" if p else "0", (2, y + 4), _FONT, 0.35, _TEXT, 1, cv2.LINE_AA)
        for ago in range(0, int(self.window_s) + 1, 10):
            x = round(right - ago / self.window_s * (right - left))
            cv2.line(out, (x, top), (x, bottom), _GRID, 1)
            text = "now" if ago == 0 else f"-{ago}s"
            (tw, _), _ = cv2.getTextSize(text, _FONT, 0.35, 1)
            cv2.putText(out, text, (x - tw // 2, bottom + 16), _FONT, 0.35, _TEXT, 1, cv2.LINE_AA)
        for times, rows in self._segments():
            xs = right - (now - times) / self.window_s * (right - left)
            for c, name in enumerate(CLASS_NAMES):
                ys = bottom - rows[:, c] * (bottom - top)
                points = np.round(np.stack([xs, ys], axis=1)).astype(np.int32)
                cv2.polylines(out, [points], False, CLASS_COLOURS[name], 2, cv2.LINE_8)  # antialiased: 6x slower
        for c, name in enumerate(CLASS_NAMES):  # the legend: one coloured line and name per emotion
            y = top + 8 + c * 23
            cv2.line(out, (right + 14, y), (right + 34, y), CLASS_COLOURS[name], 3, cv2.LINE_AA)
            cv2.putText(out, display(name, with_emoji=False), (right + 40, y + 4), _FONT, 0.4, _TEXT, 1, cv2.LINE_AA)
        return out
