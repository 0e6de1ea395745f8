"""ONNX export: preprocessing folded in, parity with PyTorch, dynamic batch size, CNN and CLIP."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emotion.checkpoint import save_checkpoint
from emotion.export import PARITY_TOLERANCE, OnnxClassifier, export_onnx
from emotion.labels import CLASS_NAMES
from emotion.models import ModelConfig, build_model
from emotion.predict import EmotionClassifier


@pytest.fixture(scope="module")
def tiny_clip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained CLIP checkpoint on the tiny test architecture (random weights, 32 px input)."""
    torch.manual_seed(0)
    cfg = ModelConfig(kind="clip", clip_model="emotion-tiny-vit", adapter_dims=(32,))
    model, _ = build_model(cfg, clip_weights="random")
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    save_checkpoint(path, model, cfg)
    return path


def _faces(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 48, 48), dtype=np.uint8)


@pytest.mark.parametrize("which", ["cnn", "clip"])
def test_export_parity_and_dynamic_batch(which: str, tiny_cnn_checkpoint: Path, tiny_clip_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = tiny_cnn_checkpoint if which == "cnn" else tiny_clip_checkpoint
    info = export_onnx(str(ckpt), str(tmp_path / f"{which}.onnx"))
    assert Path(info["path"]).is_file()
    assert info["parity_ok"], f"export parity: max |onnx - torch| = {info['max_abs_diff']:.3e}"

    onnx_clf = OnnxClassifier(info["path"])
    torch_clf = EmotionClassifier.from_checkpoint(ckpt, device="cpu", amp="off")
    assert onnx_clf.kind == which
    for n in (1, 5):
        faces = torch.from_numpy(_faces(n, seed=n))
        got, expected = onnx_clf.predict_tensor(faces), torch_clf.predict_tensor(faces)
        assert got.shape == (n, len(CLASS_NAMES))
        diff = float((got - expected).abs().max())
        assert diff < PARITY_TOLERANCE, f"{which}, batch {n}: max |onnx - torch| probability difference {diff:.3e} >= {PARITY_TOLERANCE}"
        assert torch.allclose(got.sum(1), torch.ones(n), atol=1e-5)


def test_onnx_classifier_face_crops(tiny_cnn_checkpoint: Path, tmp_path: Path) -> None:
    path = export_onnx(str(tiny_cnn_checkpoint), str(tmp_path / "cnn.onnx"), faces=_faces(3, seed=7))["path"]
    clf = OnnxClassifier(path)
    rgb_crop = np.random.default_rng(1).integers(0, 256, size=(120, 100, 3), dtype=np.uint8)
    probs = clf.predict_faces([rgb_crop, _faces(1, seed=2)[0]])
    assert probs.shape == (2, len(CLASS_NAMES))
    assert clf.predict_faces([]).shape == (0, len(CLASS_NAMES))
    assert "cnn" in clf.name
