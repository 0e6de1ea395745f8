"""The framing refiner: a small CNN that says how a 48x48 face crop is framed against FER2013's framing.

The emotion networks learnt FER2013's framing, and a face detector's crop only approximates it: on faces found
in frames, the crop's scale, tilt and centre miss the face's own FER2013 crop by about 18% (log-scale SD), 14
degrees and 4.5 px (RMS), and accuracy falls with that miss. ``FramerNet`` looks at the inner disk of a crop
(``DISK_RADIUS`` px about its centre, so what lies beyond a face's own square never shows) and predicts the
similarity from the crop to the face's FER2013 framing as (log scale, tilt / ``ROTATION_UNIT``, shift x and y /
``SHIFT_UNIT``), which ``emotion.inference.framer`` undoes by cutting the crop again.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

FACE = 48  # side of the crops it reads (FER2013's)
INNER = 32  # side of the centre square fed to the network
DISK_RADIUS = (
    14.0  # px; only this disk of the crop is seen, which stays inside the face's square for the jitter trained on
)
ROTATION_UNIT = 20.0  # degrees per unit of the tilt output
SHIFT_UNIT = 0.2  # fractions of the half side per unit of the shift outputs
FORMAT = "emotion-framer"  # marker of a framer file (see ``emotion.training.framer.save_framer``)

_yy, _xx = np.mgrid[0:INNER, 0:INNER] + 0.5 - INNER / 2
DISK = (np.hypot(_yy, _xx) <= DISK_RADIUS).astype(np.float32)  # 1 inside the disk, 0 outside


def disk_input(crops: np.ndarray) -> torch.Tensor:
    """(N, 1, INNER, INNER) float network input from (N, 48, 48) uint8 crops: their centre disk in [0, 1]."""
    o = (FACE - INNER) // 2
    inner = np.asarray(crops, dtype=np.float32)[:, o : o + INNER, o : o + INNER] / 255.0
    return torch.from_numpy(inner * DISK).unsqueeze(1)


def crop_to_face(log_scale: float, tilt: float, shift_x: float, shift_y: float) -> np.ndarray:
    """The 2x3 similarity taking 48x48 crop coordinates (continuous, corner origin) to the face's FER2013 crop
    coordinates: scaled by exp(``log_scale``) and turned ``tilt`` degrees about the centre, then shifted by
    (``shift_x``, ``shift_y``) half sides. The network predicts these four, in its output units."""
    c = FACE / 2
    cos, sin = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))
    a = math.exp(log_scale) * np.array([[cos, -sin], [sin, cos]])
    t = np.array([c, c]) - a @ np.array([c, c]) + c * np.array([shift_x, shift_y])
    return np.hstack([a, t[:, None]])


def to_units(log_scale: float, tilt: float, shift_x: float, shift_y: float) -> tuple[float, float, float, float]:
    """The network's targets for a framing (see ``crop_to_face``): each quantity in its output unit."""
    return (log_scale, tilt / ROTATION_UNIT, shift_x / SHIFT_UNIT, shift_y / SHIFT_UNIT)


def from_units(out: np.ndarray) -> tuple[float, float, float, float]:
    """``crop_to_face``'s arguments from one row of the network's output."""
    return (float(out[0]), float(out[1]) * ROTATION_UNIT, float(out[2]) * SHIFT_UNIT, float(out[3]) * SHIFT_UNIT)


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FramerNet(nn.Module):
    """Three conv stages (``width``, 2x, 4x channels, each halving the 32 px input) and a two-layer head with
    four outputs: log scale, tilt, shift x, shift y (see ``to_units``)."""

    def __init__(self, width: int = 24):
        super().__init__()
        self.width = width
        self.features = nn.Sequential(
            _stage(1, width), _stage(width, 2 * width), _stage(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * width, 64), nn.ReLU(inplace=True), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
