"""Re-framing detected faces the way FER2013 frames them, with the framing refiner (``emotion.models.framer``).

A detector's eyes set the app's crop (``align.aligned_crop``); the refiner reads that crop, predicts how it is
framed against FER2013's framing, and the eyes are moved so the crop cut on them undoes it. ``passes`` repeats
this on the new crop. The refiner is one small file beside the emotion models (``assets/framer/framer.pt``, trained by
``train_cli.py train-framer``); without it faces are cropped as the detector's eyes say.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..models.framer import FORMAT, FramerNet, crop_to_face, disk_input, from_units
from .align import EYE_CX, EYE_CY, EYE_DIST, aligned_crop, fer_transform

log = logging.getLogger(__name__)

DEFAULT_FRAMER = (
    Path(__file__).resolve().parents[2] / "assets" / "framer" / "framer.pt"
)  # not in assets/*.pt: no emotion model
MAX_WIDTH = 256  # channels of the first stage a framer file may ask for
MAX_LOG_SCALE = math.log(2.0)  # a correction beyond these is not a re-framing but a misread crop: it is clipped
MAX_TILT = 45.0
MAX_SHIFT = 0.5
# The eyes in a crop framed like FER2013 (x, y of the right eye, then the left), continuous 48x48 coordinates.
_FER_EYES = np.array([[EYE_CX - EYE_DIST / 2, EYE_CY], [EYE_CX + EYE_DIST / 2, EYE_CY]])


class FramerError(ValueError):
    """A framer file that cannot be used; the message says why and what to do."""


def load_framer(path: str | os.PathLike) -> tuple[FramerNet, dict]:
    """The refiner network in ``path`` (eval mode) and its description; raises FramerError."""
    path = Path(path)
    if not path.is_file():
        raise FramerError(f"framer {path} does not exist: train one with `python train_cli.py train-framer`")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged or hostile file
        raise FramerError(f"{path} is not a readable framer file ({type(exc).__name__})") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise FramerError(f"{path} is not a framer file (no '{FORMAT}' marker); make one with train-framer")
    cfg, weights = blob.get("config"), blob.get("model")
    width = cfg.get("width") if isinstance(cfg, dict) else None
    if not isinstance(width, int) or not 1 <= width <= MAX_WIDTH or not isinstance(weights, dict):
        raise FramerError(f"{path} has a malformed config or weights; make it again with train-framer")
    net = FramerNet(width)
    try:
        net.load_state_dict(weights)
    except (RuntimeError, TypeError) as exc:
        raise FramerError(f"{path}'s weights do not fit a framer of width {width}: {str(exc)[:200]}") from exc
    return net.eval(), blob


class FramingRefiner:
    """Moves detected faces' eyes so their crops are framed as FER2013 frames faces (thread-safe)."""

    def __init__(self, net: FramerNet, passes: int = 1, source: str = "a framer network", tilt: bool = True):
        if passes < 1:
            raise ValueError(f"the framer needs at least 1 pass, got {passes}")
        self.net, self.passes, self.source, self.tilt = net.eval(), passes, source, tilt
        self._lock = threading.Lock()  # torch modules are not documented safe for concurrent forward passes

    @classmethod
    def from_file(cls, path: str | os.PathLike = DEFAULT_FRAMER, passes: int = 1, tilt: bool = True) -> FramingRefiner:
        """The refiner stored at ``path``; raises FramerError. ``tilt`` False keeps the crop's tilt (scale and
        centre are still re-framed)."""
        net, _ = load_framer(path)
        return cls(net, passes, source=str(path), tilt=tilt)

    def describe(self) -> str:
        """What re-frames the crops, for logs and reports: e.g. "framer.pt (1 pass)"."""
        return f"{Path(self.source).name} ({self.passes} pass{'es' if self.passes > 1 else ''})"

    def refine(self, rgb: np.ndarray, eyes: Sequence[tuple[float, float, float, float]]) -> list[tuple]:
        """The eyes each face of the HxWx3 RGB frame should be cropped on; a face whose crop cannot be cut
        keeps its eyes."""
        eyes = [tuple(float(v) for v in e) for e in eyes]
        for _ in range(self.passes):
            crops = [aligned_crop(rgb, e) for e in eyes]
            cut = [i for i, c in enumerate(crops) if c is not None]
            if not cut:
                break
            with self._lock, torch.inference_mode():
                out = self.net(disk_input(np.stack([crops[i] for i in cut]))).numpy()
            for i, row in zip(cut, out, strict=True):
                log_scale, tilt, sx, sy = from_units(row)
                eyes[i] = _moved_eyes(eyes[i], (log_scale, tilt if self.tilt else 0.0, sx, sy))
        return eyes


def resolve_framer(framer: FramingRefiner | str | None) -> FramingRefiner | None:
    """A detector's refiner: the one given, the file named, or for "auto" the shipped file if it is there
    (without it, or with a broken one, None and a warning: the app works on without it)."""
    if framer is None or isinstance(framer, FramingRefiner):
        return framer
    if framer != "auto":
        return FramingRefiner.from_file(framer)  # a file asked for by name: a bad one is an error
    try:
        return FramingRefiner.from_file(DEFAULT_FRAMER)
    except FramerError as exc:  # the app still works without it, with crops a little less like FER2013's
        log.warning("%s; faces are cropped on the detector's eyes", exc)
        return None


def _moved_eyes(eyes: tuple[float, ...], framing: tuple[float, float, float, float]) -> tuple[float, ...]:
    """Eyes whose aligned crop is the crop on ``eyes`` re-framed by undoing ``framing`` (crop -> FER2013 crop)."""
    log_scale, tilt, sx, sy = framing
    log_scale = min(max(log_scale, -MAX_LOG_SCALE), MAX_LOG_SCALE)
    tilt, sx, sy = (min(max(v, -lim), lim) for v, lim in ((tilt, MAX_TILT), (sx, MAX_SHIFT), (sy, MAX_SHIFT)))
    try:
        to_crop = np.vstack([fer_transform(eyes), [0.0, 0.0, 1.0]])
    except ValueError:
        return eyes
    to_fer = np.vstack([crop_to_face(log_scale, tilt, sx, sy), [0.0, 0.0, 1.0]]) @ to_crop  # frame -> FER crop
    back = np.linalg.inv(to_fer)
    moved = _FER_EYES @ back[:2, :2].T + back[:2, 2]
    return tuple(float(v) for v in moved.ravel())
