"""ONNX export: preprocessing folded in, parity with PyTorch, dynamic batch size, CNN and CLIP; the classifier's ONNX Runtime engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emotion.data.labels import CLASS_NAMES
from emotion.inference.classifier import EmotionClassifier, resolve_engine
from emotion.models.checkpoint import load_checkpoint, save_checkpoint
from emotion.models.export import PARITY_TOLERANCE, OnnxClassifier, export_onnx
from emotion.models.networks import ModelConfig, build_model


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
def test_export_parity_and_dynamic_batch(
    which: str, tiny_cnn_checkpoint: Path, tiny_clip_checkpoint: Path, tmp_path: Path
) -> None:
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
        assert diff < PARITY_TOLERANCE, (
            f"{which}, batch {n}: max |onnx - torch| probability difference {diff:.3e} >= {PARITY_TOLERANCE}"
        )
        assert torch.allclose(got.sum(1), torch.ones(n), atol=1e-5)


def test_onnx_classifier_face_crops(tiny_cnn_checkpoint: Path, tmp_path: Path) -> None:
    path = export_onnx(str(tiny_cnn_checkpoint), str(tmp_path / "cnn.onnx"), faces=_faces(3, seed=7))["path"]
    clf = OnnxClassifier(path)
    rgb_crop = np.random.default_rng(1).integers(0, 256, size=(120, 100, 3), dtype=np.uint8)
    probs = clf.predict_faces([rgb_crop, _faces(1, seed=2)[0]])
    assert probs.shape == (2, len(CLASS_NAMES))
    assert clf.predict_faces([]).shape == (0, len(CLASS_NAMES))
    assert "cnn" in clf.name


# ---------------------------------------------------------------- the classifier's engine


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_onnxruntime_engine_matches_torch(tiny_cnn_checkpoint: Path, tta: str) -> None:
    on_torch = EmotionClassifier.from_checkpoint(tiny_cnn_checkpoint, device="cpu", amp="off", tta=tta, engine="torch")
    on_ort = EmotionClassifier.from_checkpoint(
        tiny_cnn_checkpoint, device="cpu", amp="off", tta=tta, engine="onnxruntime"
    )
    assert on_ort.name.endswith("fp32 on onnxruntime") and on_torch.name.endswith("fp32 on torch")
    faces = torch.randint(0, 256, (5, 48, 48), dtype=torch.uint8)
    assert torch.allclose(on_ort.predict_tensor(faces), on_torch.predict_tensor(faces), atol=1e-5)
    larger = torch.rand(2, 1, 64, 64)  # the API takes other sizes too: both engines resize them the same way
    assert torch.allclose(on_ort.predict_tensor(larger), on_torch.predict_tensor(larger), atol=1e-5)
    for clf in (on_ort, on_torch):
        assert clf.predict_tensor(torch.zeros(0, 48, 48, dtype=torch.uint8)).shape == (0, 7)
        assert clf.predict_faces(np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)


def test_onnxruntime_engine_follows_torch_thread_count(tiny_cnn_checkpoint: Path) -> None:
    clf = EmotionClassifier.from_checkpoint(tiny_cnn_checkpoint, device="cpu", amp="off", engine="onnxruntime")
    faces = torch.randint(0, 256, (2, 48, 48), dtype=torch.uint8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = clf.predict_tensor(faces)
    finally:
        torch.set_num_threads(before)
    assert 1 in clf._onnx._sessions  # the bench's and a busy app's 1-thread setting reaches ONNX Runtime too
    assert torch.allclose(one, clf.predict_tensor(faces), atol=1e-6)


def test_auto_engine_picks_onnxruntime_for_the_fp32_cnn_and_a_timing_on_a_bf16_cpu(
    tiny_cnn_checkpoint: Path, tiny_clip_checkpoint: Path
) -> None:
    cnn, clip = load_checkpoint(tiny_cnn_checkpoint), load_checkpoint(tiny_clip_checkpoint)
    cpu = torch.device("cpu")
    assert resolve_engine("auto", cnn, cpu, None) == "onnxruntime"
    assert resolve_engine("auto", cnn, cpu, torch.bfloat16) == "fastest"  # native bf16 CPUs: timed at load
    assert resolve_engine("auto", cnn, torch.device("cuda"), None) == "torch"
    assert resolve_engine("auto", clip, cpu, None) == "torch"
    assert resolve_engine("auto", clip, cpu, torch.bfloat16) == "fastest"
    assert resolve_engine("torch", cnn, cpu, None) == "torch"
    with pytest.raises(ValueError, match="unknown engine"):
        resolve_engine("tensorrt", cnn, cpu, None)
    with pytest.raises(ValueError, match="runs on the CPU"):
        resolve_engine("onnxruntime", cnn, torch.device("cuda"), None)


@pytest.mark.parametrize(
    "amp, winner",
    [
        ("bf16", "bfloat16 on torch"),
        ("bf16", "fp32 on onnxruntime"),
        ("auto", "fp32 on torch"),
        ("auto", "fp32 on onnxruntime"),
    ],
)
def test_auto_engine_on_a_bf16_cpu_keeps_the_fastest_setting(
    tiny_cnn_checkpoint: Path, amp: str, winner: str, monkeypatch, caplog
) -> None:
    import emotion.inference.classifier
    import emotion.utils.runtime

    timed = []

    def rigged(candidates, repeats=5, warmup=2):
        _, seconds = emotion.utils.runtime.fastest(candidates, repeats=1, warmup=0)  # every candidate really runs
        timed.append(sorted(seconds))
        return winner, {name: 0.01 if name == winner else 0.02 for name in seconds}

    monkeypatch.setattr(emotion.inference.classifier, "fastest", rigged)
    monkeypatch.setattr(
        emotion.inference.classifier, "amp_dtype", lambda device, amp: None if amp == "off" else torch.bfloat16
    )  # a bf16 CPU
    caplog.set_level("INFO", logger="emotion.inference.classifier")
    clf = EmotionClassifier.from_checkpoint(tiny_cnn_checkpoint, device="cpu", amp=amp)
    # An explicit --amp bf16 is kept on PyTorch; "auto" also tries PyTorch in fp32.
    expected = ["bfloat16 on torch", "fp32 on onnxruntime"] + (["fp32 on torch"] if amp == "auto" else [])
    assert timed == [sorted(expected)] and clf.name.endswith(winner) and f"using {winner}" in caplog.text
    assert (clf._onnx is not None) == winner.endswith("onnxruntime")
    faces = torch.from_numpy(_faces(3, 4))
    reference = EmotionClassifier.from_checkpoint(
        tiny_cnn_checkpoint,
        device="cpu",
        amp="bf16" if "bfloat16" in winner else "off",
        engine=winner.rsplit(" ", 1)[-1],
    )
    assert torch.allclose(clf.predict_tensor(faces), reference.predict_tensor(faces), atol=1e-6)


def test_auto_engine_times_clip_in_both_precisions_on_a_bf16_cpu(tiny_clip_checkpoint: Path, monkeypatch) -> None:
    import emotion.inference.classifier

    seen = []
    monkeypatch.setattr(
        emotion.inference.classifier,
        "fastest",
        lambda candidates, **kw: (seen.append(sorted(candidates)) or "fp32 on torch", {}),
    )
    monkeypatch.setattr(emotion.inference.classifier, "amp_dtype", lambda device, amp: torch.bfloat16)
    clf = EmotionClassifier.from_checkpoint(tiny_clip_checkpoint, device="cpu")
    assert seen == [["bfloat16 on torch", "fp32 on torch"]] and clf.engine == "torch" and clf.dtype is None


def test_fastest_times_every_candidate_and_picks_the_quickest() -> None:
    import time

    from emotion.utils.runtime import fastest

    calls = {"slow": 0, "quick": 0}

    def work(name: str, seconds: float):
        def run() -> None:
            calls[name] += 1
            time.sleep(seconds)

        return run

    name, seconds = fastest({"slow": work("slow", 0.02), "quick": work("quick", 0.0)}, repeats=3, warmup=1)
    assert name == "quick" and calls == {"slow": 4, "quick": 4} and seconds["slow"] >= 0.02 > seconds["quick"]


def test_auto_engine_falls_back_to_torch_when_the_export_fails(tiny_cnn_checkpoint: Path, monkeypatch, caplog) -> None:
    import emotion.models.export

    def broken(loaded):
        raise RuntimeError("operator not supported")

    monkeypatch.setattr(emotion.models.export, "OnnxRuntimeForward", broken)
    clf = EmotionClassifier.from_checkpoint(tiny_cnn_checkpoint, device="cpu", amp="off")
    assert clf.engine == "torch" and "export" in caplog.text
    assert clf.predict_tensor(torch.zeros(1, 48, 48, dtype=torch.uint8)).shape == (1, 7)
    with pytest.raises(RuntimeError, match="operator not supported"):  # asked for by name: no silent substitute
        EmotionClassifier.from_checkpoint(tiny_cnn_checkpoint, device="cpu", amp="off", engine="onnxruntime")
