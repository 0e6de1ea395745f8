"""Recorded detector framings: the file format, the augmentation that uses them, and their training flags."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from emotion.data.augment import AugmentConfig, augment
from emotion.data.dataset import DataError
from emotion.data.framings import face_keys, framing_to_theta, load_framings
from emotion.data.splits import load_split
from emotion.training.config import ConfigError, TrainConfig
from tests.conftest import make_folder_dataset, train_tiny_cnn
from tests.test_alignment import load_script, tiny_train_split

STILL = AugmentConfig(scale=(1, 1), ratio=(1, 1), flip=0, rotation=0, brightness=0, contrast=0, erase=0)


def similarity(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    """A 2x3 face-to-crop similarity in 48-px corner-origin coordinates, about the crop's centre."""
    m = cv2.getRotationMatrix2D((24.0, 24.0), degrees, scale)
    m[:, 2] += shift
    return m


def cv2_crop(face: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The crop ``m`` cuts from ``face`` by OpenCV (pixel centres at integers, hence the half-pixel shift)."""
    a, t = m[:, :2], m[:, 2] + m[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return cv2.warpAffine(
        face, np.hstack([a, t[:, None]]), (48, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )


def test_recorded_framing_cuts_the_face_as_the_app_crop_did() -> None:
    rng = np.random.default_rng(0)
    faces = cv2.GaussianBlur(rng.integers(0, 256, (3, 48, 48), dtype=np.uint8), (0, 0), 2).reshape(3, 48, 48)
    ms = np.stack([similarity(1.0, 0.0, (0, 0)), similarity(0.85, 12.0, (2.0, -1.5)), similarity(1.2, -8.0, (0, 3))])
    theta = torch.from_numpy(framing_to_theta(ms))
    assert torch.allclose(theta[0], torch.tensor([[1.0, 0, 0], [0, 1, 0]]), atol=1e-6)  # identity stays identity
    x = torch.from_numpy(faces).float().div(255).unsqueeze(1)
    out = augment(x, replace(STILL, detector_framing=1.0), framings=theta[:, None]).squeeze(1).numpy() * 255
    expected = np.stack([cv2_crop(f, m) for f, m in zip(faces, ms, strict=True)]).astype(np.float64)
    assert np.abs(out - expected).mean() < 1.0  # the same crop, up to rounding
    # Mirrored faces get the mirrored crop of the same framing.
    mirrored = augment(x, replace(STILL, flip=1.0, detector_framing=1.0), framings=theta[:, None]).squeeze(1).numpy()
    assert np.abs(mirrored * 255 - expected[:, :, ::-1]).mean() < 1.0


def test_only_the_share_with_a_framing_is_recut() -> None:
    x = torch.zeros(400, 1, 48, 48)
    x[:, :, 12:36, 12:36] = 1.0
    zoom = torch.from_numpy(framing_to_theta(similarity(1.5, 0.0, (0, 0))[None]))  # a tighter crop: bigger square
    framings = zoom.expand(400, 2, 2, 3).clone()
    framings[200:] = math.nan  # the second half was never found by the detector
    out = augment(x, replace(STILL, detector_framing=0.5), torch.Generator().manual_seed(0), framings=framings)
    recut = (out - x).abs().flatten(1).amax(1) > 0.05
    assert not recut[200:].any()  # no framing, no change
    assert 0.35 < recut[:200].float().mean() < 0.65  # about half of the others
    assert torch.allclose(augment(x, STILL, framings=framings), x, atol=1e-5)  # share 0: framings unused


def test_a_face_framed_in_one_file_of_two_is_always_cut_by_that_framing() -> None:
    x = torch.zeros(300, 1, 48, 48)
    x[:, :, 12:36, 12:36] = 1.0
    framings = torch.from_numpy(framing_to_theta(similarity(1.5, 0.0, (0, 0))[None])).expand(300, 2, 2, 3).clone()
    framings[:, 0] = math.nan  # the first file never found these faces; the second did
    out = augment(x, replace(STILL, detector_framing=1.0), torch.Generator().manual_seed(0), framings=framings)
    assert ((out - x).abs().flatten(1).amax(1) > 0.05).all()


def test_framings_file_is_matched_by_face_not_by_position(tmp_path: Path) -> None:
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (6, 48, 48), dtype=np.uint8))
    keys = face_keys(images)
    assert len(set(keys.tolist())) == 6 and np.array_equal(keys, face_keys(images.numpy()))
    ms = np.stack([similarity(1.0 + 0.1 * i, 0.0, (0, 0)) for i in range(6)]).astype(np.float32)
    ms[2] = np.nan
    np.savez(tmp_path / "f.npz", keys=keys, framings=ms)
    order = torch.tensor([5, 2, 0])
    got = load_framings([tmp_path / "f.npz", tmp_path / "f.npz"], images[order])
    assert got.shape == (3, 2, 2, 3) and torch.isnan(got[1]).all()
    assert torch.allclose(got[0, 1], torch.from_numpy(framing_to_theta(ms[5:6]))[0])
    np.savez(tmp_path / "bad.npz", keys=keys, framings=np.zeros((6, 3, 3)))
    for bad in (tmp_path / "bad.npz", tmp_path / "missing.npz"):
        with pytest.raises(DataError, match="--detector-framings"):
            load_framings([bad], images)


def test_detector_framing_flags_are_checked_and_train(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--detector-framings FILE"):
        TrainConfig(augment=replace(STILL, detector_framing=0.5)).check()
    with pytest.raises(ConfigError, match="no file at"):
        TrainConfig(augment=replace(STILL, detector_framing=0.5), detector_framings=[str(tmp_path / "no.npz")]).check()
    with pytest.raises(ConfigError, match="detector framing share"):
        TrainConfig(augment=replace(STILL, detector_framing=2.0)).check()
    data = make_folder_dataset(tmp_path / "fer")
    images = load_split(data, "train").images
    framings = np.repeat(similarity(0.9, 10.0, (1, 1))[None], len(images), 0).astype(np.float32)
    np.savez(tmp_path / "f.npz", keys=face_keys(images), framings=framings)
    out = tmp_path / "run"
    flags = ("--detector-framing", "0.5", "--detector-framings", str(tmp_path / "f.npz"))
    assert train_tiny_cnn(data, out, *flags) == 0
    assert "100.0% of the training faces framed" in (out / "train.log").read_text()


def test_measure_detector_framings_script(tmp_path: Path, face_model_path: Path, capsys) -> None:
    script, data = load_script("measure_detector_framings"), tiny_train_split(tmp_path)
    out = tmp_path / "framings.npz"
    args = ["--data", str(data), "--val-split", "0.5", "--seed", "3", "--out", str(out)]
    assert script.main([*args, "--face-model", str(face_model_path)]) == 0
    assert "of 7 faces found" in capsys.readouterr().out
    with np.load(out) as f:
        assert f["framings"].shape == (7, 2, 3) and f["keys"].shape == (7,)
        found = np.isfinite(f["framings"][:, 0, 0])
        assert found.any()
        scale = np.hypot(f["framings"][found, 0, 0], f["framings"][found, 1, 0])
        assert ((scale > 0.6) & (scale < 1.6)).all()  # the app's crop frames each found face roughly as FER2013 does
