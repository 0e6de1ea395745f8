"""The framing refiner: its geometry, training, file checks, and the detector's use of it."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT

import train_cli
from emotion.evaluation.frames import FrameBenchConfig, draw_frame, face_to_crop, place_face
from emotion.inference import framer as framer_mod
from emotion.inference.align import EYE_CX, EYE_CY, EYE_DIST, aligned_crop, fer_transform
from emotion.inference.faces import FaceDetector
from emotion.inference.framer import FramerError, FramingRefiner, load_framer
from emotion.models.framer import FramerNet, crop_to_face, disk_input, from_units, to_units
from emotion.training.framer import FramerTrainConfig, jittered_crops, save_framer

SHIPPED = ROOT / "assets" / "framer" / "framer.pt"


def eyes_of(frame_to_crop: np.ndarray) -> tuple[float, ...]:
    """The eyes whose aligned crop has this frame -> crop similarity."""
    back = np.linalg.inv(np.vstack([frame_to_crop, [0, 0, 1]]))
    canon = np.array([[EYE_CX - EYE_DIST / 2, EYE_CY], [EYE_CX + EYE_DIST / 2, EYE_CY]])
    return tuple((canon @ back[:2, :2].T + back[:2, 2]).ravel())


def textured_face(seed: int = 0) -> np.ndarray:
    """A 48x48 face-sized pattern with no symmetry, so any misframing shows."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, size=(6, 6)).astype(np.float32)
    return cv2.resize(small, (48, 48), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


class FixedNet(FramerNet):
    """Always predicts one framing, to test what the refiner does with a prediction."""

    def __init__(self, framing: tuple[float, float, float, float]):
        super().__init__(width=1)
        self.out = torch.tensor(to_units(*framing), dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out.expand(x.shape[0], 4)


FRAMING = (math.log(1.2), 12.0, 0.15, -0.1)  # log scale, tilt, shift x, shift y: a crop that misses the face


def test_units_round_trip():
    assert np.allclose(from_units(np.array(to_units(*FRAMING))), FRAMING)


def test_training_crops_and_refiner_agree_on_the_framing():
    """A face placed in a frame and cropped with a known miss looks like the training crop drawn with that miss,
    and the refiner told that miss moves the eyes back to the face's own framing."""
    face = textured_face()
    frame = np.full((480, 640, 3), 128, np.uint8)
    how = {"cx": 320.0, "cy": 240.0, "side": 192.0, "angle": 0.0}
    place_face(frame, face, (how["cx"], how["cy"]), how["side"])
    exact = eyes_of_face(how)
    assert np.allclose(face_to_crop(how, exact), np.hstack([np.eye(2), np.zeros((2, 1))]), atol=1e-6)
    # The crop whose pixel p shows the face's point crop_to_face(p): frame -> crop is its inverse after the exact one.
    cf = np.vstack([crop_to_face(*FRAMING), [0, 0, 1]])
    missed = eyes_of((np.linalg.inv(cf) @ np.vstack([fer_transform(exact), [0, 0, 1]]))[:2])
    m = crop_to_face(*FRAMING)
    m[:, 2] += m[:, :2] @ np.array([0.5, 0.5]) - 0.5
    trained = cv2.warpAffine(face, m, (48, 48), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    from_frame = aligned_crop(frame, missed)
    inner = slice(10, 38)  # away from the borders, which training reflects and the frame fills with grey
    diff = np.abs(trained[inner, inner].astype(float) - from_frame[inner, inner]).mean()
    unrelated = np.abs(face[inner, inner].astype(float) - from_frame[inner, inner]).mean()
    assert diff < 6 and diff < unrelated / 3
    moved = FramingRefiner(FixedNet(FRAMING)).refine(frame, [missed])[0]
    assert np.allclose(moved, exact, atol=1e-6)


def eyes_of_face(how: dict) -> tuple[float, ...]:
    """Where a placed face's FER2013 framing puts the eyes in the frame."""
    scale = how["side"] / 48
    x0, y0 = how["cx"] - how["side"] / 2, how["cy"] - how["side"] / 2
    return (
        x0 + (EYE_CX - EYE_DIST / 2) * scale,
        y0 + EYE_CY * scale,
        x0 + (EYE_CX + EYE_DIST / 2) * scale,
        y0 + EYE_CY * scale,
    )


def test_jittered_crops_targets_and_disk():
    faces = np.stack([textured_face(s) for s in range(3)])
    crops, targets = jittered_crops(faces, 4, np.random.default_rng(0))
    assert crops.shape == (12, 48, 48) and crops.dtype == np.uint8 and targets.shape == (12, 4)
    assert np.all(np.abs(targets[:, 1:]) <= 1.0 + 1e-6)  # tilt and shifts within the jitter ranges, in units
    x = disk_input(crops)
    assert x.shape == (12, 1, 32, 32) and float(x[:, :, 0, 0].abs().max()) == 0.0  # corners masked out


def test_wild_predictions_are_clipped_and_bad_eyes_kept():
    frame = np.zeros((480, 640, 3), np.uint8)  # all black: a crop is still cut, and nothing blows up
    eyes = (300.0, 200.0, 340.0, 200.0)
    moved = FramingRefiner(FixedNet((50.0, 900.0, 40.0, -40.0))).refine(frame, [eyes, (1.0, 1.0, 1.0, 1.0)])
    dist = math.hypot(moved[0][2] - moved[0][0], moved[0][3] - moved[0][1])
    assert 40 / 2.01 <= dist <= 40 * 2.01 and all(math.isfinite(v) for v in moved[0])
    assert moved[1] == (1.0, 1.0, 1.0, 1.0)


def test_train_framer_cli_writes_a_loadable_file(tiny_fer, tmp_path):
    out = tmp_path / "f" / "framer.pt"
    args = ["train-framer", "--data", str(tiny_fer), "--out", str(out), "--epochs", "1", "--width", "4"]
    assert train_cli.main([*args, "--val-split", "0.2"]) == 0
    net, blob = load_framer(out)
    assert blob["config"]["width"] == 4 and blob["metrics"]["faces"] > 0 and "log_scale_rms" in blob["metrics"]
    assert net(disk_input(np.zeros((2, 48, 48), np.uint8))).shape == (2, 4)
    assert train_cli.main([*args, "--epochs", "0"]) == 2


def test_bad_framer_files_are_refused(tmp_path):
    with pytest.raises(FramerError, match="does not exist"):
        load_framer(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(FramerError, match="not a readable"):
        load_framer(junk)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(FramerError, match="not a framer file"):
        load_framer(other)
    wrong = tmp_path / "wrong.pt"
    save_framer(wrong, FramerNet(4), FramerTrainConfig(width=4), {})
    blob = torch.load(wrong, weights_only=True)
    blob["config"]["width"] = 8
    torch.save(blob, wrong)
    with pytest.raises(FramerError, match="do not fit"):
        load_framer(wrong)
    with pytest.raises(FramerError):
        FaceDetector(backend="haar", framer=str(junk))  # asked for by name: an error


def test_detector_without_a_shipped_framer_crops_as_before(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(framer_mod, "DEFAULT_FRAMER", tmp_path / "absent.pt")
    assert FaceDetector(backend="haar").framer is None
    assert "cropped on the detector's eyes" in caplog.text


@pytest.mark.skipif(not SHIPPED.is_file(), reason="assets/framer/framer.pt is not there")
def test_shipped_framer_brings_real_faces_closer_to_their_framing(real_faces, face_model_path):
    """Real FER2013 test faces in frames: the refined crops miss the faces' own framing by less."""
    plain = FaceDetector(str(face_model_path), framer=None)
    refined = FaceDetector(str(face_model_path))
    assert refined.framer is not None
    rng, cfg = np.random.default_rng(7), FrameBenchConfig(min_scale=1 / 4)
    misses = {"plain": [], "refined": []}
    for face in [f for faces in real_faces.values() for f in faces]:
        frame, how = draw_frame(face, rng, cfg)
        for name, det in (("plain", plain), ("refined", refined)):
            boxes = [b for b in det.detect(frame) if b.x <= how["cx"] <= b.x + b.w and b.y <= how["cy"] <= b.y + b.h]
            if boxes:
                a = face_to_crop(how, boxes[0].eyes)
                misses[name].append(
                    abs(math.log(math.hypot(*a[:, 0]))) + np.hypot(*(a[:, :2] @ [24, 24] + a[:, 2] - 24)) / 24
                )
    assert len(misses["refined"]) >= 20
    assert np.mean(misses["refined"]) < np.mean(misses["plain"])
