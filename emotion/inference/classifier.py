"""Classify face crops with a trained checkpoint: the package API the CLI and the app share."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.dataset import to_face48
from ..data.labels import CLASS_NAMES
from ..models.checkpoint import CheckpointError, LoadedModel, load_checkpoint, member_network
from ..models.temperature import apply_temperature, resolve_temperature
from ..utils.runtime import amp_dtype, autocast_for, fastest, pick_device

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEFAULT_CHECKPOINT = ASSETS / "emotion_cnn.pt"  # the offline CNN trained on FER2013 and shipped with the project
ENV_CHECKPOINT = "EMOTION_CHECKPOINT"

# Test-time augmentation: the views of each face whose probabilities are averaged, as (dx, dy, mirror)
# shifts in pixels of the 48x48 face. "shift" mirrors the training's random crops and flips.
_SHIFTS = ((0, 0), (2, 0), (-2, 0), (0, 2), (0, -2))
TTA_VIEWS: dict[str, tuple[tuple[int, int, bool], ...]] = {
    "none": ((0, 0, False),),
    "flip": ((0, 0, False), (0, 0, True)),
    "shift": tuple((dx, dy, mirror) for mirror in (False, True) for dx, dy in _SHIFTS),
}


def tta_views(faces: torch.Tensor, mode: str, view: int | None = None) -> torch.Tensor:
    """The ``mode`` views of faces (N, 1, H, W), stacked view-major: (V * N, 1, H, W); with ``view``
    (0-based) only that one view, (N, 1, H, W)."""
    views = TTA_VIEWS[mode]
    if view is not None:
        if not 0 <= view < len(views):
            raise ValueError(f"view must be 0-{len(views) - 1} for TTA {mode!r}, got {view}")
        views = views[view : view + 1]
    if views == ((0, 0, False),):  # the plain view: the live path pays for no copy
        return faces
    pad = max(max(abs(dx), abs(dy)) for dx, dy, _ in views)
    h, w = faces.shape[-2:]
    padded = F.pad(faces, (pad, pad, pad, pad), mode="replicate") if pad else faces
    out = []
    for dx, dy, mirror in views:
        v = padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]
        out.append(v.flip(-1) if mirror else v)
    return torch.cat(out)


def resolve_tta(tta: str | bool | None, loaded: LoadedModel) -> str:
    """The TTA mode to use: ``tta`` itself, or (None) the checkpoint's own inference setting."""
    if tta is None:
        stored = loaded.inference.get("tta", "none") if isinstance(loaded.inference, dict) else None
        if (
            not isinstance(stored, str) or stored not in TTA_VIEWS
        ):  # a damaged or hostile file: refuse it like any other malformed entry
            raise CheckpointError(
                f"{loaded.path}: its inference setting {str(loaded.inference)[:80]!r} is not valid; "
                f"re-release it with `train_cli.py ship --tta {'|'.join(TTA_VIEWS)}`"
            )
        return stored
    elif isinstance(tta, bool):
        tta = "flip" if tta else "none"
    if tta not in TTA_VIEWS:
        raise ValueError(f"unknown test-time augmentation {tta!r}: use one of {', '.join(TTA_VIEWS)}")
    return tta


ENGINES = ("auto", "torch", "onnxruntime")


def resolve_engine(engine: str, loaded: LoadedModel, device: torch.device, dtype: torch.dtype | None) -> str:
    """The engine that runs the model: ``engine`` itself, or for "auto": ONNX Runtime for the CNN in fp32 on
    a CPU (1.7x PyTorch's speed on a 2-core AMD EPYC without native bf16), "fastest" on a CPU with native
    bf16 (PyTorch bf16, PyTorch fp32 and, for the CNN, ONNX Runtime fp32 are timed when the model loads,
    since which one wins depends on the CPU), and PyTorch everywhere else (GPUs; CLIP in fp32)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "auto":
        if device.type != "cpu":
            return "torch"
        if dtype is not None:
            return "fastest"
        return "onnxruntime" if loaded.config.kind == "cnn" and importlib.util.find_spec("onnxruntime") else "torch"
    if engine == "onnxruntime" and device.type != "cpu":
        raise ValueError(f"engine onnxruntime runs on the CPU; got device {device}")
    return engine


def default_checkpoint() -> Path:
    """``$EMOTION_CHECKPOINT`` if set, else the shipped offline CNN."""
    return Path(os.environ.get(ENV_CHECKPOINT) or DEFAULT_CHECKPOINT)


class EmotionClassifier:
    """A loaded checkpoint that turns face crops into class probabilities, all faces in one forward pass."""

    def __init__(
        self,
        loaded: LoadedModel,
        device: torch.device,
        amp: str = "auto",
        tta: str | bool | None = None,
        engine: str = "auto",
    ):
        self.loaded = loaded
        self.device = device
        self.dtype = amp_dtype(device, amp)
        self.tta = resolve_tta(tta, loaded)  # None: the setting the checkpoint's accuracy was measured with
        self.temperature = resolve_temperature(loaded)  # 1.0 unless `train_cli.py calibrate` stored one
        self.engine = resolve_engine(engine, loaded, device, self.dtype)
        self._onnx = None
        self.channels_last = loaded.config.kind == "cnn"
        if self.channels_last:
            loaded.model.to(memory_format=torch.channels_last)
        onnx_ok = loaded.config.kind == "cnn" and importlib.util.find_spec("onnxruntime") is not None
        if self.engine == "onnxruntime" or (self.engine == "fastest" and onnx_ok):
            from ..models.export import OnnxRuntimeForward

            try:
                self._onnx = OnnxRuntimeForward(loaded)
            except Exception as exc:  # noqa: BLE001 - an export ONNX cannot express still runs, on PyTorch
                if engine != "auto":
                    raise
                log.warning("ONNX Runtime export of %s failed (%s); running on PyTorch", loaded.name, exc)
                if self.engine == "onnxruntime":  # "fastest" goes on to time PyTorch's precisions
                    self.engine = "torch"
        if self.engine == "fastest":
            self.engine = self._time_engines(fp32_too=amp == "auto")
        if self.engine == "onnxruntime":
            self.dtype = None  # the exported graph computes in fp32

    def _time_engines(self, fp32_too: bool) -> str:
        """Keep whichever runs one face fastest here: PyTorch in ``self.dtype`` (bf16), PyTorch in fp32 (when
        ``fp32_too``: the precision was not asked for) and ONNX Runtime fp32 (when exported); returns the engine."""
        face = torch.rand(1, 1, 48, 48, generator=torch.Generator().manual_seed(0))
        onnx, bf16 = self._onnx, self.dtype
        options = {f"{self._precision(bf16)} on torch": (None, bf16)}
        if fp32_too:
            options["fp32 on torch"] = (None, None)
        if onnx is not None:
            options["fp32 on onnxruntime"] = (onnx, None)
        if len(options) == 1:
            self._onnx = None
            return "torch"

        def run(setting: tuple) -> Callable[[], None]:
            def once() -> None:
                self._onnx, self.dtype = setting
                self.predict_tensor(face)

            return once

        winner, seconds = fastest({name: run(setting) for name, setting in options.items()})
        self._onnx, self.dtype = options[winner]
        log.info(
            "engine auto: one face takes %s; using %s",
            ", ".join(f"{t * 1e3:.1f} ms in {name}" for name, t in seconds.items()),
            winner,
        )
        return winner.rsplit(" ", 1)[-1]

    @staticmethod
    def _precision(dtype: torch.dtype | None) -> str:
        return str(dtype).replace("torch.", "") if dtype is not None else "fp32"

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike | None = None,
        device: str = "auto",
        amp: str = "auto",
        tta: str | bool | None = None,
        engine: str = "auto",
    ) -> EmotionClassifier:
        """Load ``path`` (default: ``default_checkpoint()``) for inference; ``tta`` None uses the checkpoint's
        setting; ``engine``: auto, torch or onnxruntime (see ``resolve_engine``)."""
        dev = pick_device(device)
        loaded = load_checkpoint(path or default_checkpoint(), dev)
        classifier = cls(loaded, dev, amp, tta, engine)
        log.info("emotion model: %s on %s", classifier.name, dev)
        return classifier

    @property
    def name(self) -> str:
        """What is running and how, for logs, reports and the UI: e.g. "cnn ensemble of 3 (emotion_cnn.pt), fp32 on onnxruntime"."""
        return f"{self.loaded.name}, {self._precision(self.dtype)} on {self.engine}"

    @property
    def members(self) -> int:
        """Networks in the model: more than 1 for an ensemble, whose prediction is their mean."""
        return self.loaded.config.members

    @property
    def views(self) -> int:
        """How many test-time views of each face the TTA setting averages (1 for none, 2 for flip)."""
        return len(TTA_VIEWS[self.tta])

    @torch.inference_mode()
    def predict_tensor(
        self, faces: torch.Tensor, member: int | None = None, calibrated: bool = True, view: int | None = None
    ) -> torch.Tensor:
        """Probabilities (N, 7) for faces given as uint8 (N, 48, 48) or float (N, 1, 48, 48) in [0, 1];
        ``member`` (0-based) runs one network of an ensemble alone and ``view`` (0-based) one TTA view alone
        (the live view's rotation); ``calibrated`` False returns them before the checkpoint's temperature
        (see ``calibrate``)."""
        model = self.loaded.model if member is None else member_network(self.loaded, member)
        if faces.dtype == torch.uint8:
            faces = faces.unsqueeze(1).float().div_(255.0)
        n = len(faces)
        if n == 0:
            return torch.zeros(0, len(CLASS_NAMES))
        x = tta_views(faces.to(self.device), self.tta, view)
        if self._onnx is not None:
            probs = self._onnx(x, member)  # preprocessing and softmax are part of the graph
        else:
            x = self.loaded.preprocess(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(self.device, self.dtype):
                probs = model(x).float().softmax(-1)
        probs = probs.view(-1, n, probs.shape[-1]).mean(0).cpu()
        return self.calibrate(probs) if calibrated else probs

    def calibrate(self, probs: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """The checkpoint's temperature applied to final probabilities (after the ensemble's and TTA's mean, on
        either engine, so both agree); the predicted class never changes. See ``emotion.models.temperature``."""
        if isinstance(probs, np.ndarray):
            return apply_temperature(torch.from_numpy(probs), self.temperature).numpy()
        return apply_temperature(probs, self.temperature)

    def predict_faces(
        self,
        faces: Sequence[np.ndarray] | np.ndarray,
        member: int | None = None,
        calibrated: bool = True,
        view: int | None = None,
    ) -> np.ndarray:
        """Probabilities (N, 7) for face crops of any size and colour (HxW or HxWxC uint8 arrays, RGB);
        ``member``, ``calibrated`` and ``view`` as in ``predict_tensor``."""
        if len(faces) == 0:
            return np.zeros((0, len(CLASS_NAMES)), dtype=np.float32)
        batch = torch.from_numpy(
            np.stack([f if f.shape == (48, 48) and f.dtype == np.uint8 else to_face48(f) for f in faces])
        )
        return self.predict_tensor(batch, member, calibrated, view).numpy()


def face_result(box: Sequence[int], probs: np.ndarray, eyes: Sequence[float] | None = None) -> dict:
    """One face in the JSON schema: box [x, y, w, h], eyes [right x, y, left x, y] in frame pixels (the points its
    crop was aligned on; None when the crop was framed from the box alone), label, score and per-class probabilities."""
    best = int(np.argmax(probs))
    return {
        "box": [int(v) for v in box],
        "eyes": None if eyes is None else [round(float(v), 1) for v in eyes],
        "label": CLASS_NAMES[best],
        "score": float(probs[best]),
        "probabilities": {name: float(p) for name, p in zip(CLASS_NAMES, probs, strict=False)},
    }
