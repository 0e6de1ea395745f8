"""``--vignette``: a CNN that fades each face to its mean past a radius, so a loose crop's surroundings barely count."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import train_tiny_cnn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion.models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint  # noqa: E402
from emotion.models.export import PARITY_TOLERANCE, export_onnx  # noqa: E402
from emotion.models.networks import VIGNETTE_FADE, ModelConfig, build_model, vignette_mask  # noqa: E402

TINY = ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1, cnn_vignette=0.65)


def test_the_mask_keeps_the_centre_and_drops_the_corners():
    mask = vignette_mask(48, 0.65)[0, 0]
    assert mask.shape == (48, 48) and mask[23, 23] == 1.0 and mask[0, 0] == 0.0 and mask[0, 47] == 0.0
    assert mask[23, 0] == 0.0 and 0.0 < mask[23, 6] < 1.0  # an edge's middle (radius 0.98) is out; 0.73 fades
    row = mask[23, 24:]  # centre to edge: never rises
    assert torch.all(row[1:] <= row[:-1])
    assert vignette_mask(48, 1.0 - VIGNETTE_FADE)[0, 0, 23, 0] > 0  # the fade reaches the edge's middle


def test_what_lies_past_the_fade_changes_nothing():
    torch.manual_seed(0)
    model, preprocess = build_model(TINY)
    model.eval()
    faces = torch.rand(3, 1, 48, 48)
    busy = faces.clone()
    outside = vignette_mask(48, TINY.cnn_vignette) == 0
    busy[outside.expand_as(busy)] = torch.rand(int(outside.sum()) * 3)  # another background where the mask is 0
    with torch.no_grad():
        assert torch.allclose(model(preprocess(faces)), model(preprocess(busy)), atol=1e-5)
        plain_model, plain = build_model(ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1))
        assert not torch.allclose(plain(faces), plain(busy))  # without it, the background reaches the network


def test_without_a_vignette_preprocessing_is_unchanged():
    _, preprocess = build_model(ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1))
    x = torch.rand(2, 1, 48, 48)
    expected = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-3)
    assert torch.equal(preprocess(x), expected)


def test_a_vignetted_checkpoint_round_trips_and_exports(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "v.pt"
    save_checkpoint(path, build_model(TINY)[0], TINY)
    loaded = load_checkpoint(path)
    assert loaded.config.cnn_vignette == 0.65 and loaded.preprocess.vignette == 0.65
    info = export_onnx(str(path), str(tmp_path / "v.onnx"))
    assert info["parity_ok"] and info["max_abs_diff"] < PARITY_TOLERANCE


@pytest.mark.parametrize("value", [-0.1, 1.5, True, "0.5", float("nan")])
def test_a_hostile_vignette_is_a_checkpoint_error(tmp_path, value):
    path = tmp_path / "v.pt"
    save_checkpoint(path, build_model(TINY)[0], TINY)
    blob = torch.load(path, weights_only=True)
    blob["model_config"]["cnn_vignette"] = value
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="cnn_vignette"):
        load_checkpoint(path)


def test_train_takes_vignette_for_a_cnn_only(tiny_fer, tmp_path, capsys):
    assert train_tiny_cnn(tiny_fer, tmp_path / "run", "--vignette", "0.65") == 0
    assert read_checkpoint(tmp_path / "run" / "best.pt")["model_config"]["cnn_vignette"] == 0.65
    assert train_tiny_cnn(tiny_fer, tmp_path / "bad", "--vignette", "2") == 2
    assert "cnn_vignette must be a number in [0, 1]" in capsys.readouterr().err
