"""ONNX export of a checkpoint, preprocessing and softmax included, and a classifier that runs it.

The exported graph takes faces as float (N, 1, 48, 48) in [0, 1] and returns class probabilities
(N, 7); the model's own ``Preprocess`` (channel repeat, resize, normalisation) is part of the
graph, so the file cannot disagree with the normalisation its weights were trained with. The batch
dimension is dynamic. ``OnnxClassifier`` has the ``predict_tensor`` / ``predict_faces`` interface of
``emotion.inference.classifier.EmotionClassifier`` and runs on ONNX Runtime, without PyTorch in the loop.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.dataset import to_face48
from ..data.labels import CLASS_NAMES
from .checkpoint import LoadedModel, load_checkpoint, member_network
from .temperature import apply_temperature, check_temperature, resolve_temperature

log = logging.getLogger(__name__)

INPUT_NAME = "faces"  # float32 (N, 1, 48, 48) in [0, 1]
OUTPUT_NAME = "probs"  # float32 (N, 7), rows sum to 1
PARITY_TOLERANCE = 1e-4  # max |ONNX Runtime - PyTorch| over probabilities accepted as "the same model"


class FacesToProbs(nn.Module):
    """Faces (N, 1, 48, 48) in [0, 1] -> probabilities: the checkpoint's preprocessing, model and softmax in one
    module; ``member`` (0-based) takes one network of an ensemble instead of the whole model."""

    def __init__(self, loaded: LoadedModel, member: int | None = None):
        super().__init__()
        self.preprocess = loaded.preprocess
        self.model = loaded.model if member is None else member_network(loaded, member)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(faces)).float().softmax(-1)


def _as_input(faces: np.ndarray) -> np.ndarray:
    """uint8 (N, 48, 48) or float (N, 1, 48, 48) faces as the graph's float32 (N, 1, 48, 48) input."""
    faces = np.asarray(faces)
    if faces.dtype == np.uint8:
        # Same arithmetic as EmotionClassifier (float32 divide by 255), so both see identical inputs.
        faces = faces.astype(np.float32) / np.float32(255.0)
    if faces.ndim == 3:
        faces = faces[:, None]
    return np.ascontiguousarray(faces, dtype=np.float32)


def _providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def onnx_graph(loaded: LoadedModel, opset: int = 17, member: int | None = None) -> bytes:
    """``loaded`` (or its network ``member``) as a serialized ONNX graph: faces (N, 1, 48, 48) in [0, 1] ->
    probabilities, N dynamic."""
    wrapper = FacesToProbs(loaded, member).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Preprocess's shape checks become constants in the trace, which is right: the input is always 48x48.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # The torch.export-based exporter needs onnxscript, which is not a dependency; the TorchScript one is enough here.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX export")
        torch.onnx.export(
            wrapper,
            (torch.rand(2, 1, 48, 48),),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def session_options(threads: int = 0, spin: bool = True):
    """ONNX Runtime session options: every graph optimisation; ``threads`` > 0 caps intra-op threads (0: one
    per physical core); ``spin`` False lets idle worker threads sleep at once instead of busy-waiting."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def export_onnx(
    checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    opset: int = 17,
    *,
    faces: np.ndarray | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> dict:
    """Export ``checkpoint`` to ``out_path`` as ONNX and check ONNX Runtime against PyTorch.

    ``faces`` (uint8 (N, 48, 48) or float (N, 1, 48, 48) in [0, 1]) is the parity batch; None uses
    8 random faces. Returns ``path``, ``max_abs_diff`` (over probabilities), ``parity_ok``
    (``max_abs_diff <= tolerance``), ``opset``, ``kind``, ``bytes`` and ``export_seconds``.
    """
    import onnx
    import onnxruntime as ort

    loaded = load_checkpoint(checkpoint, "cpu")
    wrapper = FacesToProbs(loaded).eval()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proto = onnx.load_from_string(onnx_graph(loaded, opset))
    # Self-description, like the checkpoints: what the file predicts and what it was made from.
    meta = {
        "class_names": json.dumps(list(CLASS_NAMES)),
        "model_config": json.dumps(loaded.config.to_dict()),
        "source_checkpoint": Path(checkpoint).name,
        "input": "faces float32 (N, 1, 48, 48) in [0, 1], grayscale",
        # The graph outputs raw probabilities (parity with PyTorch); OnnxClassifier applies this after them.
        "temperature": json.dumps(resolve_temperature(loaded)),
    }
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))
    onnx.checker.check_model(str(out))
    export_seconds = time.perf_counter() - t0

    if faces is None:
        faces = np.random.default_rng(0).integers(0, 256, size=(8, 48, 48), dtype=np.uint8)
    x = _as_input(faces)
    with torch.inference_mode():
        expected = wrapper(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    diff = float(np.abs(got - expected).max())
    ok = diff <= tolerance
    (log.info if ok else log.error)(
        "exported %s to %s: ONNX Runtime vs PyTorch max |diff| %.2e over %d faces (%s, tolerance %.0e)",
        loaded.name,
        out,
        diff,
        len(x),
        "ok" if ok else "MISMATCH",
        tolerance,
    )
    return {
        "path": str(out),
        "max_abs_diff": diff,
        "parity_ok": ok,
        "opset": opset,
        "kind": loaded.config.kind,
        "bytes": out.stat().st_size,
        "export_seconds": round(export_seconds, 2),
        "parity_faces": len(x),
    }


class OnnxClassifier:
    """An exported model on ONNX Runtime, with ``EmotionClassifier``'s prediction interface."""

    def __init__(self, path: str | os.PathLike, threads: int = 0, providers: Sequence[str] | None = None):
        """``threads`` > 0 caps ONNX Runtime's intra-op threads (0: one per physical core)."""
        import onnxruntime as ort

        self.path = str(path)
        self.session = ort.InferenceSession(
            self.path, session_options(threads), providers=list(providers or _providers())
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        names = json.loads(meta.get("class_names", "null"))
        if names is not None and names != list(CLASS_NAMES):
            raise ValueError(f"{path} predicts classes {names}, expected {list(CLASS_NAMES)}")
        self.kind = json.loads(meta.get("model_config", "{}")).get("kind", "unknown")
        try:  # files exported before calibration existed have none: 1.0
            self.temperature = check_temperature(json.loads(meta.get("temperature", "1.0")), "its temperature")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            raise ValueError(f"{path}: {exc}; export it again with `train_cli.py export`") from None
        log.info("ONNX emotion model %s on %s", self.path, self.session.get_providers()[0])

    @property
    def name(self) -> str:
        """What is running, for logs and the UI."""
        return f"onnx {self.kind} ({Path(self.path).name})"

    def predict_tensor(self, faces: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Probabilities (N, 7) for faces given as uint8 (N, 48, 48) or float (N, 1, 48, 48) in [0, 1]."""
        x = faces.numpy() if isinstance(faces, torch.Tensor) else np.asarray(faces)
        if len(x) == 0:
            return torch.zeros(0, len(CLASS_NAMES))
        probs = torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: _as_input(x)})[0])
        return apply_temperature(probs, self.temperature)

    def predict_faces(self, faces: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Probabilities (N, 7) for face crops of any size and colour (HxW or HxWxC uint8 arrays, RGB)."""
        if len(faces) == 0:
            return np.zeros((0, len(CLASS_NAMES)), dtype=np.float32)
        batch = np.stack([f if f.shape == (48, 48) and f.dtype == np.uint8 else to_face48(f) for f in faces])
        return self.predict_tensor(batch).numpy()


class OnnxRuntimeForward:
    """A checkpoint's faces -> probabilities on ONNX Runtime's CPU provider, exported in memory; the engine
    ``EmotionClassifier`` runs where it is faster than PyTorch. An ensemble is exported one graph per
    network, so one network can run alone (the live view's rotation) and the whole ensemble is the mean
    of their probabilities, as ``Ensemble`` computes it. Sessions are kept per intra-op thread count,
    created on first use, so ``torch.set_num_threads`` governs both engines alike."""

    def __init__(self, loaded: LoadedModel, spin: bool = False):
        """``spin`` False: idle worker threads sleep rather than busy-wait, leaving the cores to face
        detection and the web server between frames."""
        members = loaded.config.members
        self.graphs = [onnx_graph(loaded, member=i) for i in range(members)] if members > 1 else [onnx_graph(loaded)]
        self.interpolation = loaded.preprocess.interpolation
        self.spin = spin
        self._sessions: dict[int, list] = {}

    def __call__(self, faces: torch.Tensor, member: int | None = None) -> torch.Tensor:
        """Probabilities (N, 7) for float faces (N, 1, H, W) in [0, 1] on the CPU, of the whole model or of
        its network ``member`` (0-based); other sizes than 48x48 are resized first, as ``Preprocess`` does on
        PyTorch (the graph's input is fixed at 48x48)."""
        if faces.shape[-2:] != (48, 48):
            faces = F.interpolate(faces, size=(48, 48), mode=self.interpolation, align_corners=False)
        threads = torch.get_num_threads()
        sessions = self._sessions.get(threads)
        if sessions is None:
            import onnxruntime as ort

            options = session_options(threads, self.spin)
            sessions = [ort.InferenceSession(g, options, providers=["CPUExecutionProvider"]) for g in self.graphs]
            self._sessions[threads] = sessions
        feed = {INPUT_NAME: _as_input(faces.numpy())}
        if member is not None:
            return torch.from_numpy(sessions[member].run([OUTPUT_NAME], feed)[0])
        probs = [session.run([OUTPUT_NAME], feed)[0] for session in sessions]
        return torch.from_numpy(np.mean(probs, axis=0, dtype=np.float32))
