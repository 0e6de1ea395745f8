"""Residual CNNs (``--cnn-block residual``) and ensembles that mix them with plain ones."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import train_tiny_cnn, trained_like_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from emotion.inference.classifier import EmotionClassifier  # noqa: E402
from emotion.models.checkpoint import (  # noqa: E402
    CheckpointError,
    load_checkpoint,
    member_weights,
    read_checkpoint,
    save_checkpoint,
    ship_checkpoint,
)
from emotion.models.networks import EmotionCNN, EmotionResNet, ModelConfig, SqueezeExcite, build_model, member_config  # noqa: E402

PLAIN = ModelConfig(kind="cnn", cnn_widths=(8, 16), dropout=0.2)  # what `train --model cnn --cnn-widths 8,16` builds
RESIDUAL = ModelConfig(kind="cnn", cnn_widths=(8, 16), dropout=0.2, cnn_block="residual")


def _saved(path: Path, cfg: ModelConfig, seed: int) -> Path:
    torch.manual_seed(seed)
    model, _ = build_model(cfg)
    trained_like_batchnorm(model)
    save_checkpoint(path, model, cfg, train_config={"seed": seed})
    return path


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[list[Path], Path]:
    """Two plain networks and a residual one, and their shipped int8 ensemble."""
    sources = [
        _saved(tmp_path / "plain1" / "best.pt", PLAIN, 1),
        _saved(tmp_path / "res" / "best.pt", RESIDUAL, 2),
        _saved(tmp_path / "plain3" / "best.pt", PLAIN, 3),
    ]
    ship_checkpoint(sources, tmp_path / "mixed.pt", tta="none", weights="int8")
    return sources, tmp_path / "mixed.pt"


def test_residual_network_has_the_plain_networks_widths_with_strided_residual_stages():
    model, _ = build_model(replace(RESIDUAL, cnn_widths=(8, 16, 32)))
    assert isinstance(model, EmotionResNet)
    assert sum(isinstance(m, SqueezeExcite) for m in model.modules()) == 3
    strides = [m.stride for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert strides == [(1, 1)] * 3 + [(2, 2), (1, 1)] * 2  # stem, stage 1 at 48 px, then 24 and 12 px
    assert model.eval()(torch.randn(3, 1, 48, 48)).shape == (3, 7)
    assert isinstance(build_model(PLAIN)[0], EmotionCNN)


def test_squeeze_excite_only_rescales_channels():
    x = torch.rand(2, 8, 5, 5)
    out = SqueezeExcite(8)(x)
    ratio = out / x
    # One gate in (0, 1) per image and channel, the same at every pixel.
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-5)
    assert ((ratio > 0) & (ratio < 1)).all()


def test_train_cli_trains_a_residual_network_and_init_from_needs_the_same_block(tiny_fer, tmp_path, capsys):
    run = tmp_path / "res"
    assert train_tiny_cnn(tiny_fer, run, "--cnn-block", "residual") == 0
    blob = read_checkpoint(run / "best.pt")
    assert blob["model_config"]["cnn_block"] == "residual" and blob["model_config"]["member_blocks"] == []
    assert isinstance(load_checkpoint(run / "best.pt").model, EmotionResNet)
    assert load_checkpoint(run / "best.pt").name == "cnn residual (best.pt)"
    refused = tmp_path / "refused"
    assert train_tiny_cnn(tiny_fer, refused, "--init-from", str(run / "best.pt")) == 2
    assert "cnn_block residual (this run: plain)" in capsys.readouterr().err
    assert (
        train_tiny_cnn(tiny_fer, tmp_path / "again", "--cnn-block", "residual", "--init-from", str(run / "best.pt"))
        == 0
    )


def test_an_unknown_block_is_refused_by_the_cli(tiny_fer, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_tiny_cnn(tiny_fer, tmp_path / "x", "--cnn-block", "dense")
    assert "invalid choice" in capsys.readouterr().err


def test_a_mixed_ensemble_records_each_networks_block_and_predicts_their_mean(mixed):
    sources, shipped = mixed
    loaded = load_checkpoint(shipped)
    assert loaded.config.members == 3 and loaded.config.member_blocks == ("plain", "residual", "plain")
    assert loaded.name == "cnn ensemble of 3 (2 plain, 1 residual) (mixed.pt)"
    assert [type(m) for m in loaded.model.members] == [EmotionCNN, EmotionResNet, EmotionCNN]
    faces = torch.randint(0, 256, (5, 48, 48), dtype=torch.uint8)
    singles = [
        EmotionClassifier.from_checkpoint(p, device="cpu", amp="off", engine="torch").predict_tensor(faces)
        for p in sources
    ]
    for engine in ("torch", "onnxruntime"):
        clf = EmotionClassifier.from_checkpoint(shipped, device="cpu", amp="off", engine=engine)
        assert torch.allclose(clf.predict_tensor(faces), torch.stack(singles).mean(0), atol=2e-2)  # int8 weights
        # The live view's rotation runs the residual member alone.
        assert torch.allclose(clf.predict_tensor(faces, member=1), singles[1], atol=2e-2)


def test_a_mixed_ensemble_unpacks_and_fine_tunes_per_network(mixed, tmp_path):
    from unpack_ensemble import unpack

    _, shipped = mixed
    paths = unpack(shipped, tmp_path / "unpacked")
    blocks = [read_checkpoint(p)["model_config"]["cnn_block"] for p in paths]
    assert blocks == ["plain", "residual", "plain"]
    assert all(read_checkpoint(p)["model_config"]["member_blocks"] == [] for p in paths)
    cfg, weights = member_weights(shipped, 2)
    assert cfg == member_config(load_checkpoint(shipped).config, 1) and cfg.cnn_block == "residual" and cfg.members == 1
    build_model(cfg)[0].load_state_dict(weights)
    # Shipped again, the unpacked networks are the same ensemble.
    ship_checkpoint(paths, tmp_path / "again.pt", tta="none")
    assert load_checkpoint(tmp_path / "again.pt").config.member_blocks == ("plain", "residual", "plain")


def test_an_ensemble_of_one_block_records_no_member_blocks(tmp_path):
    sources = [_saved(tmp_path / f"r{s}.pt", RESIDUAL, s) for s in (1, 2)]
    ship_checkpoint(sources, tmp_path / "res.pt", tta="none")
    cfg = load_checkpoint(tmp_path / "res.pt").config
    assert cfg.member_blocks == () and cfg.cnn_block == "residual"


def test_ship_still_refuses_networks_that_differ_in_more_than_their_block(tmp_path):
    wide = ModelConfig(kind="cnn", cnn_widths=(8, 32), dropout=0.2, cnn_block="residual")
    sources = [_saved(tmp_path / "a.pt", PLAIN, 1), _saved(tmp_path / "b.pt", wide, 2)]
    with pytest.raises(CheckpointError, match="one architecture"):
        ship_checkpoint(sources, tmp_path / "x.pt", tta="none")


@pytest.mark.parametrize(
    "field,value",
    [
        ("member_blocks", ["plain", "residual"]),  # two names for three networks
        ("member_blocks", ["plain", "dense", "plain"]),
        ("member_blocks", "residual"),
        ("member_blocks", [1, 2, 3]),
        ("cnn_block", "dense"),
        ("cnn_block", 7),
    ],
)
def test_hostile_block_fields_are_a_checkpoint_error(mixed, field, value):
    _, shipped = mixed
    blob = torch.load(shipped, weights_only=True)
    blob["model_config"][field] = value
    if field == "cnn_block":
        blob["model_config"]["member_blocks"] = []
    torch.save(blob, shipped)
    with pytest.raises(CheckpointError, match="cnn_block|member_blocks|weights do not match"):
        load_checkpoint(shipped)


def test_a_checkpoint_from_before_residual_networks_loads_as_plain(tmp_path):
    path = _saved(tmp_path / "old.pt", PLAIN, 1)
    blob = torch.load(path, weights_only=True)
    for key in ("cnn_block", "member_blocks"):
        del blob["model_config"][key]
    torch.save(blob, path)
    loaded = load_checkpoint(path)
    assert loaded.config.cnn_block == "plain" and isinstance(loaded.model, EmotionCNN)


def test_the_training_tab_launches_a_residual_network(tmp_path):
    from conftest import make_folder_dataset

    from emotion.app.training_runner import TrainingRunner
    from emotion.app.training_tab import MODEL_CHOICES, start_training

    assert "cnn-residual" in {value for _, value in MODEL_CHOICES}
    make_folder_dataset(tmp_path / "data" / "tiny", per_class=4)
    runner = TrainingRunner(tmp_path / "runs")
    try:
        message, _ = start_training(runner, tmp_path / "data", "tiny", "cnn-residual", 1, 8, 1e-3, 1e-5, 0, "", 0)
        assert message.startswith("Started")
        args = runner.current.process.args
        assert args[args.index("--model") + 1] == "cnn" and args[args.index("--cnn-block") + 1] == "residual"
    finally:
        runner.stop()
