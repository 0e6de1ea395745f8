"""Calibration: ECE and reliability bins, temperature fitting, the stored temperature (hostile values refused),
its application on both engines, and the calibrate / evaluate commands end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_folder_dataset, real_face_split

import train_cli
from emotion.evaluation.calibration import (
    default_held_out,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from emotion.inference.classifier import EmotionClassifier
from emotion.models.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from emotion.models.networks import ModelConfig, build_model
from emotion.models.temperature import apply_temperature


def _rows(confidence: float, n: int, k: int = 7) -> np.ndarray:
    """``n`` rows whose top class (0) has probability ``confidence``, the rest sharing the remainder."""
    p = np.full((n, k), (1.0 - confidence) / (k - 1))
    p[:, 0] = confidence
    return p


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = np.concatenate([_rows(0.8, 100), _rows(0.5, 40)])
    # 80 of the first 100 right, 20 of the next 40 right: each bin's accuracy equals its confidence.
    labels = np.array([0] * 80 + [1] * 20 + [0] * 20 + [2] * 20)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    bins = reliability_bins(probs, labels)
    assert len(bins["count"]) == 15 and sum(bins["count"]) == 140
    assert bins["count"][11] == 100 and bins["accuracy"][11] == pytest.approx(0.8)  # 0.8 falls in (11/15, 12/15]
    assert bins["confidence"][0] is None  # empty bins have no mean


def test_ece_of_known_miscalibration():
    labels = np.array([0] * 60 + [3] * 40)  # 60% right at 90% confidence: ECE 0.3
    assert expected_calibration_error(_rows(0.9, 100), labels) == pytest.approx(0.3)
    # two bins, weighted by count: 100 faces off by 0.3, 100 faces (conf 0.5, all right) off by 0.5
    probs = np.concatenate([_rows(0.9, 100), _rows(0.5, 100)])
    assert expected_calibration_error(probs, np.concatenate([labels, np.zeros(100, int)])) == pytest.approx(0.4)
    assert reliability_bins(_rows(1.0, 3), np.zeros(3, int))["count"][-1] == 3  # confidence 1.0 is in the last bin


def test_ece_refuses_bad_input():
    with pytest.raises(ValueError, match="finite"):
        expected_calibration_error(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="one label per row"):
        expected_calibration_error(_rows(0.5, 3), np.array([0, 1]))


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.0, size=(20000, 7))
    truth = torch.from_numpy(logits).softmax(-1).numpy()
    labels = np.array([rng.choice(7, p=row) for row in truth])
    # The model reports softmax(z * true_t) (overconfident for true_t > 1): p ** (1 / true_t) undoes it exactly.
    shown = torch.from_numpy(logits * true_t).softmax(-1).numpy()
    fitted = fit_temperature(shown, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    calibrated = apply_temperature(torch.from_numpy(shown), fitted).numpy()
    assert negative_log_likelihood(calibrated, labels) < negative_log_likelihood(shown, labels)
    assert expected_calibration_error(calibrated, labels) < 0.02 < expected_calibration_error(shown, labels)


def test_apply_temperature_keeps_the_argmax_and_moves_confidence_the_right_way():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.0, 0.9], [0.34, 0.33, 0.33]])
    for t, softer in ((2.0, True), (0.5, False)):
        out = apply_temperature(probs, t)
        assert torch.equal(out.argmax(1), probs.argmax(1))
        assert torch.allclose(out.sum(1), torch.ones(3))
        top, before = out.max(1).values, probs.max(1).values
        assert bool((top < before).all()) if softer else bool((top > before).all())
    assert apply_temperature(probs, 1.0) is probs


def _checkpoint(path: Path, **inference) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1)
    save_checkpoint(path, build_model(cfg)[0], cfg, inference={"tta": "none", **inference})
    return path


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0.0, 1e9, "2.0", True, [2.0]])
def test_hostile_temperatures_are_refused(tmp_path, bad):
    path = _checkpoint(tmp_path / "bad.pt", temperature=bad)
    with pytest.raises(CheckpointError, match=r"temperature must be a number in \[0.05, 20"):
        EmotionClassifier.from_checkpoint(path, device="cpu", engine="torch")


def test_stored_temperature_is_loaded(tmp_path):
    assert (
        EmotionClassifier.from_checkpoint(_checkpoint(tmp_path / "a.pt"), device="cpu", engine="torch").temperature
        == 1.0
    )
    clf = EmotionClassifier.from_checkpoint(_checkpoint(tmp_path / "b.pt", temperature=2), device="cpu", engine="torch")
    assert clf.temperature == 2.0


@pytest.mark.parametrize("t", [0.3, 3.0])
def test_temperature_on_both_engines(tmp_path, real_faces, t):
    path = _checkpoint(tmp_path / "t.pt", temperature=t)
    faces = torch.from_numpy(np.stack([f for fs in real_faces.values() for f in fs[:2]]))
    outs = {}
    for engine in ("torch", "onnxruntime"):
        clf = EmotionClassifier.from_checkpoint(path, device="cpu", amp="off", engine=engine)
        raw, cal = clf.predict_tensor(faces, calibrated=False), clf.predict_tensor(faces)
        assert torch.equal(cal.argmax(1), raw.argmax(1))
        assert (
            bool((cal.max(1).values > raw.max(1).values).all())
            if t < 1
            else bool((cal.max(1).values < raw.max(1).values).all())
        )
        assert torch.allclose(cal, apply_temperature(raw, t), atol=1e-6)
        assert np.allclose(clf.predict_faces(list(faces.numpy())), cal.numpy(), atol=1e-6)
        outs[engine] = cal
    assert torch.allclose(outs["torch"], outs["onnxruntime"], atol=1e-4)


def test_exported_onnx_carries_the_temperature(tmp_path, real_faces):
    from emotion.models.export import OnnxClassifier, export_onnx

    path = _checkpoint(tmp_path / "t.pt", temperature=0.4)
    export_onnx(path, tmp_path / "t.onnx")
    onnx_clf = OnnxClassifier(tmp_path / "t.onnx")
    faces = np.stack(real_faces["happy"])
    expected = EmotionClassifier.from_checkpoint(path, device="cpu", amp="off", engine="torch").predict_tensor(
        torch.from_numpy(faces)
    )
    assert onnx_clf.temperature == pytest.approx(0.4)
    assert torch.allclose(onnx_clf.predict_tensor(faces), expected, atol=1e-4)


def test_tracker_output_is_the_calibrated_model_output(tmp_path, real_faces):
    from emotion.inference.recognizer import FaceTracker, Recognizer

    clf = EmotionClassifier.from_checkpoint(
        _checkpoint(tmp_path / "t.pt", temperature=0.5), device="cpu", engine="torch"
    )
    face = np.stack([real_faces["sad"][0]] * 3, axis=-1)
    plain = Recognizer(clf, None).analyze(face, whole_image=True)[0]["probabilities"]
    tracked = Recognizer(clf, None).analyze(face, whole_image=True, tracker=FaceTracker(alpha=1.0))[0]["probabilities"]
    assert tracked == pytest.approx(plain, abs=1e-6)


def test_calibrate_then_evaluate_end_to_end(tmp_path, tiny_cnn_checkpoint, capsys):
    data = make_folder_dataset(tmp_path / "fer", per_class=10)
    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_cnn_checkpoint, ckpt)
    before = ckpt.read_bytes()
    assert (
        train_cli.main(["calibrate", "--checkpoint", str(ckpt), "--data", str(data), "--holdout", "0.3", "--dry-run"])
        == 0
    )
    assert "dry run" in capsys.readouterr().out and ckpt.read_bytes() == before
    assert train_cli.main(["calibrate", "--checkpoint", str(ckpt), "--data", str(data), "--holdout", "0.3"]) == 0
    assert "not written" in capsys.readouterr().out and ckpt.read_bytes() == before  # faces it may have trained on
    assert (
        train_cli.main(
            [
                "calibrate",
                "--checkpoint",
                str(ckpt),
                "--data",
                str(data),
                "--holdout",
                "0.3",
                "--seed",
                "4",
                "--allow-seen",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "possibly SEEN" in out and "wrote temperature" in out
    inference = read_checkpoint(ckpt)["inference"]
    record = inference["calibration"]
    assert 0.05 <= inference["temperature"] <= 20 and record["faces"] == 21 and record["seed"] == 4
    assert (
        record["split"] == "train"
        and record["unseen_in_training"] is False
        and record["nll_after"] <= record["nll_before"]
    )
    assert (
        train_cli.main(
            [
                "evaluate",
                "--checkpoint",
                str(ckpt),
                "--data",
                str(data),
                "--split",
                "test",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    assert "ECE (15 bins)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert math.isfinite(metrics["ece"]) and metrics["calibration"]["temperature"] == inference["temperature"]
    assert (tmp_path / "ev" / "reliability.png").stat().st_size > 1000


def test_calibrate_defaults_to_the_checkpoints_own_held_out_faces(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "fer", per_class=10, splits=("train",))
    torch.manual_seed(0)
    cfg = ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model(cfg)[0], cfg, train_config={"val_split": 0.2, "seed": 3})
    assert train_cli.main(["calibrate", "--checkpoint", str(ckpt), "--data", str(data)]) == 0
    assert "unseen in training" in capsys.readouterr().out
    record = read_checkpoint(ckpt)["inference"]["calibration"]
    assert (record["holdout"], record["seed"], record["faces"], record["unseen_in_training"]) == (0.2, 3, 14, True)


def test_an_ensemble_sharing_a_split_seed_calibrates_on_its_unseen_faces():
    members = [{"val_split": 0.05, "seed": s, "split_seed": 0} for s in (30, 31, 36)]
    held = default_held_out({"members": members}, None, None)
    assert (held.fraction, held.seed, held.unseen) == (0.05, 0, True)
    # Without a shared split seed each network held out other faces: none is unseen by all of them.
    apart = [{"val_split": 0.05, "seed": s} for s in (30, 31)]
    assert default_held_out({"members": apart}, None, None).unseen is False
    assert default_held_out({"members": [*members[:2], {"val_split": 0.05, "seed": 0}]}, None, None).unseen
    # A network fine-tuned from, or distilled from, one that trained on every face may know the carve-out.
    for parent in ({"init_from": "assets/emotion_cnn.pt"}, {"teacher": "runs/clip/best.pt"}):
        inherited = [*members[:2], {**members[2], **parent}]
        assert default_held_out({"members": inherited}, None, None).unseen is False


def test_the_held_out_split_evaluates_the_faces_the_networks_never_saw(
    tmp_path: Path, tiny_cnn_checkpoint: Path, face_model_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = real_face_split(tmp_path / "fer", "train", per_class=10)  # 0.2 of each class is held out
    torch.manual_seed(0)
    cfg = ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model(cfg)[0], cfg, train_config={"val_split": 0.2, "seed": 3})

    assert train_cli.main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--split", "heldout"]) == 0
    assert "on 14 faces" in capsys.readouterr().out  # the same 2 per class that calibrate fits on
    frames = [*("evaluate", "--frames", "--checkpoint", str(ckpt), "--data", str(data), "--split", "heldout")]
    frames += [*("--limit", "3", "--face-model", str(face_model_path), "--out", str(tmp_path / "fr"))]
    assert train_cli.main(frames) == 0
    assert json.loads((tmp_path / "fr" / "frames.json").read_text())["overall"]["faces"] == 3

    # A checkpoint trained on every face has no held-out faces: a clear error, not a flattering figure.
    for command in (["evaluate"], ["evaluate", "--frames", "--face-model", str(face_model_path)]):
        argv = [*command, "--checkpoint", str(tiny_cnn_checkpoint), "--data", str(data), "--split", "heldout"]
        assert train_cli.main(argv) == 2
        assert "--val-split" in capsys.readouterr().err


def test_calibrate_bad_inputs_give_clear_errors(tmp_path, tiny_cnn_checkpoint, capsys):
    data = make_folder_dataset(tmp_path / "fer", per_class=4, splits=("train",))
    assert (
        train_cli.main(["calibrate", "--checkpoint", str(tiny_cnn_checkpoint), "--data", str(data), "--holdout", "1.5"])
        == 2
    )
    assert "--holdout must be a fraction" in capsys.readouterr().err
    assert train_cli.main(["calibrate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(data)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_sibling_temperature_is_transferred_only_from_unseen_faces(tmp_path, capsys):
    unseen = {"unseen_in_training": True, "faces": 1437, "ece_before": 0.1, "ece_after": 0.03}
    sibling = _checkpoint(tmp_path / "sibling.pt", temperature=0.7, calibration=unseen)
    release = _checkpoint(tmp_path / "release.pt")
    before = release.read_bytes()
    args = ["calibrate", "--checkpoint", str(release), "--temperature-from", str(sibling)]
    assert train_cli.main([*args, "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out and release.read_bytes() == before
    assert train_cli.main(args) == 0
    assert "wrote temperature 0.7000" in capsys.readouterr().out
    inference = read_checkpoint(release)["inference"]
    record = inference["calibration"]
    assert inference["temperature"] == 0.7 and record["source"] == "sibling.pt"
    assert record["unseen_in_training"] is False and record["source_calibration"]["faces"] == 1437
    assert EmotionClassifier.from_checkpoint(release, device="cpu", engine="torch").temperature == pytest.approx(0.7)
    # A sibling fitted on faces it may have seen, one without a temperature, another TTA, or mixed flags: refused.
    seen = _checkpoint(tmp_path / "seen.pt", temperature=0.5, calibration={**unseen, "unseen_in_training": False})
    flipped = _checkpoint(tmp_path / "flip.pt", tta="flip", temperature=0.7, calibration=unseen)
    for bad, why in [
        ([str(seen)], "no temperature fitted on faces its networks never saw"),
        ([str(_checkpoint(tmp_path / "plain.pt"))], "no temperature fitted"),
        ([str(flipped)], "holds only for the setting it was fitted with"),
        ([str(sibling), "--holdout", "0.1"], "fits nothing"),
        ([str(tmp_path / "missing.pt")], "does not exist"),
    ]:
        assert train_cli.main(["calibrate", "--checkpoint", str(release), "--temperature-from", *bad]) == 2
        assert why in capsys.readouterr().err
    assert read_checkpoint(release)["inference"]["temperature"] == 0.7
