"""Live rotation: a tracked stream runs one network of an ensemble on one test-time view per frame and keeps
every (network, view) slot's latest output per face, so each frame costs one network on one view and a still
face gets the whole model's prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import trained_like_batchnorm

from emotion.inference.classifier import EmotionClassifier
from emotion.inference.faces import Box
from emotion.inference.recognizer import FaceTracker, Recognizer
from emotion.models.checkpoint import save_checkpoint
from emotion.models.networks import ModelConfig, build_model
from emotion.video.analysis import VideoAnalyzer
from emotion.video.reader import VideoFrame

ENSEMBLE = ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1, members=3)


@pytest.fixture(scope="module")
def ensemble_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 3-network ensemble whose networks disagree (random weights and BatchNorm statistics)."""
    torch.manual_seed(0)
    model, _ = build_model(ENSEMBLE)
    trained_like_batchnorm(model)
    path = tmp_path_factory.mktemp("rotation") / "ensemble.pt"
    save_checkpoint(path, model, ENSEMBLE)
    return path


class _OneFace:
    """A stand-in face detector that finds the whole 48x48 frame."""

    def detect(self, rgb: np.ndarray, small_faces: bool = False, tiles: tuple = ()) -> list[Box]:
        return [Box(0, 0, 48, 48)]


def _faces(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8))


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_each_network_alone_and_their_mean_is_the_ensemble(ensemble_checkpoint, engine):
    clf = EmotionClassifier.from_checkpoint(ensemble_checkpoint, device="cpu", amp="off", engine=engine)
    reference = EmotionClassifier.from_checkpoint(ensemble_checkpoint, device="cpu", amp="off", engine="torch")
    faces = _faces(4)
    assert clf.members == 3
    each = [clf.predict_tensor(faces, member=i) for i in range(3)]
    for i, probs in enumerate(each):
        net = reference.loaded.model.members[i]
        x = reference.loaded.preprocess(faces.unsqueeze(1).float() / 255.0)
        assert torch.allclose(probs, net(x).softmax(-1), atol=1e-5)
        assert torch.allclose(probs.sum(-1), torch.ones(4), atol=1e-5)
    assert not torch.allclose(each[0], each[1], atol=1e-3)  # the networks disagree, so the test can tell them apart
    assert torch.allclose(torch.stack(each).mean(0), clf.predict_tensor(faces), atol=1e-5)
    assert torch.allclose(clf.predict_tensor(faces), reference.predict_tensor(faces), atol=1e-5)
    for bad in (3, -1):
        with pytest.raises(ValueError, match="member must be 0-2"):
            clf.predict_tensor(faces, member=bad)


def test_a_single_network_is_its_own_only_member(tiny_cnn_checkpoint):
    clf = EmotionClassifier.from_checkpoint(tiny_cnn_checkpoint, device="cpu", amp="off")
    faces = _faces(2)
    assert clf.members == 1
    assert torch.allclose(clf.predict_tensor(faces, member=0), clf.predict_tensor(faces))
    assert FaceTracker().next_slot(1) is None  # nothing to rotate: every frame runs the whole model


def test_the_tracker_hands_out_slots_in_turn_and_averages_their_latest_outputs():
    tracker = FaceTracker(alpha=1.0)
    box = Box(10, 10, 50, 50)
    outputs = np.eye(7, dtype=np.float32)[:3]  # network i is sure of class i
    picked, seen = [], []
    for _ in range(4):
        slot = tracker.next_slot(3)
        picked.append(slot)
        seen.append(tracker.update([box], outputs[slot][None], slot, 3)[0])
    assert picked == [0, 1, 2, 0]
    assert np.allclose(seen[0], outputs[0])  # a new face: its first network stands in for the others
    assert np.allclose(seen[1], (2 * outputs[0] + outputs[1]) / 3)
    assert np.allclose(seen[2], outputs.mean(0)) and np.allclose(seen[3], outputs.mean(0))  # the ensemble's mean
    assert tracker.ids == [1]
    tracker.reset()
    assert tracker.next_slot(3) == 0
    assert FaceTracker(rotate=False).next_slot(3) is None
    with pytest.raises(ValueError, match="slot must be 0-2"):
        FaceTracker().update([box], outputs[:1], 3, 3)


def test_a_tracker_switched_to_another_model_starts_each_face_afresh():
    tracker = FaceTracker(alpha=1.0)
    box = Box(0, 0, 40, 40)
    probs = np.full((1, 7), 1 / 7, np.float32)
    tracker.update([box], probs, tracker.next_slot(3), 3)
    single = np.eye(7, dtype=np.float32)[4:5]
    assert np.allclose(tracker.update([box], single), single)  # a one-network model: its output alone
    assert np.allclose(tracker.update([box], single, 1, 2), single)  # a 2-network model: its latest fills both
    assert tracker.ids == [1]  # the same face throughout


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_a_still_face_in_a_stream_gets_the_ensembles_prediction(ensemble_checkpoint, engine, monkeypatch):
    clf = EmotionClassifier.from_checkpoint(ensemble_checkpoint, device="cpu", amp="off", engine=engine)
    face = np.random.default_rng(3).integers(0, 256, (48, 48), dtype=np.uint8)
    whole = clf.predict_faces([face])[0]
    calls = []
    original = clf.predict_faces
    monkeypatch.setattr(
        clf, "predict_faces", lambda crops, member=None, **kw: calls.append(member) or original(crops, member, **kw)
    )
    recognizer, tracker = Recognizer(clf, None), FaceTracker(alpha=1.0)
    results = [recognizer.analyze(face, whole_image=True, tracker=tracker)[0] for _ in range(4)]
    assert calls == [0, 1, 2, 0]  # one network per frame (no TTA: one view)
    for result in results[2:]:
        assert np.allclose(list(result["probabilities"].values()), whole, atol=1e-5)
    calls.clear()
    recognizer.analyze(face, whole_image=True)  # a single image: the whole ensemble at once
    assert calls == [None]


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_with_flip_tta_each_frame_runs_one_network_on_one_view(ensemble_checkpoint, engine, monkeypatch):
    clf = EmotionClassifier.from_checkpoint(ensemble_checkpoint, device="cpu", amp="off", tta="flip", engine=engine)
    face = np.random.default_rng(4).integers(0, 256, (48, 48), dtype=np.uint8)
    whole = clf.predict_faces([face])[0]
    mirrored = clf.predict_faces([face[:, ::-1].copy()], view=0)[0]
    assert np.allclose(clf.predict_faces([face], view=1)[0], mirrored, atol=1e-5)  # view 1 is the mirror image
    calls = []
    original = clf.predict_faces
    monkeypatch.setattr(
        clf,
        "predict_faces",
        lambda crops, member=None, **kw: calls.append((member, kw.get("view"))) or original(crops, member, **kw),
    )
    recognizer, tracker = Recognizer(clf, None), FaceTracker(alpha=1.0)
    results = [recognizer.analyze(face, whole_image=True, tracker=tracker)[0] for _ in range(7)]
    assert calls == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 0)]  # networks first, then views
    for result in results[5:]:  # every slot seen: the whole model's flip-TTA prediction
        assert np.allclose(list(result["probabilities"].values()), whole, atol=1e-5)
    with pytest.raises(ValueError, match="view must be 0-1"):
        clf.predict_faces([face], view=2)


def test_video_rotates_only_when_it_smooths(ensemble_checkpoint, monkeypatch):
    clf = EmotionClassifier.from_checkpoint(ensemble_checkpoint, device="cpu", amp="off")
    calls = []
    original = clf.predict_faces
    monkeypatch.setattr(
        clf, "predict_faces", lambda crops, member=None, **kw: calls.append(member) or original(crops, member, **kw)
    )
    recognizer = Recognizer(clf, _OneFace())
    frame = VideoFrame(index=0, time_s=0.0, rgb=np.zeros((48, 48, 3), np.uint8))
    for smoothing, expected in ((0.5, [0, 1, 2]), (1.0, [None, None, None])):
        calls.clear()
        analyzer = VideoAnalyzer(recognizer, smoothing=smoothing)
        for _ in range(3):
            analyzer.analyze(frame)
        assert calls == expected
