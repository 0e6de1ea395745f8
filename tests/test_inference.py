"""Test-time augmentation and the released checkpoint's inference setting (``ship``)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import train_tiny_cnn

from emotion.data.dataset import FaceDataset
from emotion.evaluation.evaluate import predict_dataset
from emotion.inference.classifier import ENGINES, TTA_VIEWS, EmotionClassifier, tta_views
from emotion.models.checkpoint import SHIP_WEIGHTS, load_checkpoint, read_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train_cli  # noqa: E402
from emotion_cli import flags  # noqa: E402


def test_tta_views_are_shifts_and_mirrors_of_the_face():
    faces = torch.rand(3, 1, 48, 48)
    views = tta_views(faces, "shift").view(len(TTA_VIEWS["shift"]), 3, 1, 48, 48)
    assert torch.equal(views[0], faces)  # the face itself comes first
    for v, (dx, dy, mirror) in zip(views, TTA_VIEWS["shift"], strict=False):
        expect = faces.flip(-1) if mirror else faces
        if (dx, dy, mirror) == (2, 0, False):  # content moves left by 2 px; the border repeats the edge column
            assert torch.equal(v[..., :, :-2], faces[..., :, 2:]) and torch.equal(v[..., -1], faces[..., -1])
        elif (dx, dy) == (0, 0):
            assert torch.equal(v, expect)
    assert torch.equal(tta_views(faces, "none"), faces)
    assert tta_views(faces, "flip").shape == (6, 1, 48, 48)


def test_cli_tta_engine_and_weight_choices_match_the_library():
    assert set(flags.TTA_CHOICES) == set(TTA_VIEWS)
    assert flags.ENGINE_CHOICES == ENGINES
    assert flags.SHIP_WEIGHTS == SHIP_WEIGHTS


def test_tta_averages_view_probabilities(tiny_cnn_checkpoint):
    plain = EmotionClassifier.from_checkpoint(tiny_cnn_checkpoint, device="cpu", amp="off", tta="none")
    shift = EmotionClassifier.from_checkpoint(tiny_cnn_checkpoint, device="cpu", amp="off", tta="shift")
    faces = torch.randint(0, 256, (4, 48, 48), dtype=torch.uint8)
    x = faces.unsqueeze(1).float() / 255
    per_view = torch.stack([plain.predict_tensor(v) for v in tta_views(x, "shift").split(4)])
    assert torch.allclose(shift.predict_tensor(faces), per_view.mean(0), atol=1e-5)
    assert torch.allclose(shift.predict_tensor(faces).sum(1), torch.ones(4), atol=1e-5)
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        EmotionClassifier.from_checkpoint(tiny_cnn_checkpoint, device="cpu", tta="ten-crop")


def test_dataset_evaluation_caps_images_per_forward_with_tta(tiny_cnn_checkpoint, monkeypatch):
    shift = EmotionClassifier.from_checkpoint(tiny_cnn_checkpoint, device="cpu", amp="off", tta="shift")
    images = torch.randint(0, 256, (23, 48, 48), dtype=torch.uint8)
    expected = shift.predict_tensor(images)
    seen = []
    forward = shift.predict_tensor
    monkeypatch.setattr(shift, "predict_tensor", lambda faces: seen.append(len(faces)) or forward(faces))
    probs = predict_dataset(shift, FaceDataset(images, torch.zeros(23, dtype=torch.long), "synthetic"), batch_size=40)
    assert max(seen) * len(TTA_VIEWS["shift"]) <= 40 and sum(seen) == 23  # 4 faces x 10 views a pass
    assert torch.allclose(torch.from_numpy(probs), expected, atol=1e-5)


@pytest.mark.parametrize("batch_size", [0, -5])
def test_dataset_evaluation_refuses_a_batch_size_below_one(tiny_cnn_checkpoint, batch_size):
    classifier = EmotionClassifier.from_checkpoint(tiny_cnn_checkpoint, device="cpu", amp="off")
    images = torch.zeros(3, 48, 48, dtype=torch.uint8)
    with pytest.raises(ValueError, match="at least 1"):
        predict_dataset(
            classifier, FaceDataset(images, torch.zeros(3, dtype=torch.long), "synthetic"), batch_size=batch_size
        )


def test_ship_records_the_tta_that_predict_and_evaluate_then_use(tiny_fer, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_tiny_cnn(tiny_fer, run) == 0
    assert EmotionClassifier.from_checkpoint(run / "best.pt", device="cpu").tta == "none"  # a fresh run: no TTA
    shipped = tmp_path / "assets" / "model.pt"
    assert (
        train_cli.main(["ship", str(run / "best.pt"), "--out", str(shipped), "--tta", "shift", "--data", str(tiny_fer)])
        == 0
    )
    assert "with tta shift" in capsys.readouterr().out
    blob = read_checkpoint(shipped)
    assert blob["inference"] == {"tta": "shift"} and "training_state" not in blob
    assert set(blob["metrics"]["evaluation"]) == {"none", "shift"} and blob["metrics"]["history"]
    assert load_checkpoint(shipped).inference["tta"] == "shift"
    assert EmotionClassifier.from_checkpoint(shipped, device="cpu").tta == "shift"
    assert EmotionClassifier.from_checkpoint(shipped, device="cpu", tta="none").tta == "none"
    out = tmp_path / "report"
    assert train_cli.main(["evaluate", "--checkpoint", str(shipped), "--data", str(tiny_fer), "--out", str(out)]) == 0
    assert "tta: shift" in capsys.readouterr().out and json.loads((out / "metrics.json").read_text())["tta"] == "shift"


def test_training_with_cutmix_and_mixup_records_them(tiny_fer, tmp_path):
    run = tmp_path / "run"
    assert train_tiny_cnn(tiny_fer, run, "--cutmix", "1.0", "--mixup", "0.2", "--mix-prob", "1") == 0
    augment = read_checkpoint(run / "best.pt")["train_config"]["augment"]
    assert (augment["cutmix"], augment["mixup"], augment["mix_prob"]) == (1.0, 0.2, 1.0)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= row["train_acc"] <= 1 and math.isfinite(row["train_loss"])


@pytest.mark.parametrize("inference", [{"tta": "evil"}, {"tta": ["shift"]}, "shift"])
def test_a_bad_stored_inference_setting_is_a_checkpoint_error(tiny_cnn_checkpoint, tmp_path, inference):
    from emotion.models.checkpoint import CheckpointError

    blob = torch.load(tiny_cnn_checkpoint, weights_only=True)
    blob["inference"] = inference
    bad = tmp_path / "bad.pt"
    torch.save(blob, bad)
    with pytest.raises(CheckpointError, match="inference setting"):
        EmotionClassifier.from_checkpoint(bad, device="cpu")
    assert (
        EmotionClassifier.from_checkpoint(bad, device="cpu", tta="flip").tta == "flip"
    )  # an explicit choice still works
