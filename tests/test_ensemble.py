"""Ensembles: several trained networks released as one checkpoint whose probabilities are averaged."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import trained_like_batchnorm

import train_cli
from emotion.data.splits import load_split
from emotion.evaluation.evaluate import evaluate_dataset, plot_curves, training_history
from emotion.inference.classifier import EmotionClassifier
from emotion.models.checkpoint import (
    MAX_MEMBERS,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    ship_checkpoint,
)
from emotion.models.networks import ModelConfig, build_model
from emotion.training.config import ConfigError, TrainConfig

TINY = ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1)


def _trained_like(path: Path, seed: int, cfg: ModelConfig = TINY) -> Path:
    """A checkpoint with random weights and BatchNorm statistics (as a trained one has) and an epoch history."""
    torch.manual_seed(seed)
    model, _ = build_model(cfg)
    trained_like_batchnorm(model)
    history = [
        {
            "epoch": e,
            "train_loss": 1.5 - e / 10,
            "val_loss": 1.6 - e / 10,
            "train_acc": 0.3 + e / 20,
            "val_acc": 0.25 + e / 20,
        }
        for e in (1, 2, 3)
    ]
    save_checkpoint(
        path, model, cfg, train_config={"seed": seed, "batch_size": 64}, metrics={"val_acc": 0.4, "history": history}
    )
    return path


@pytest.fixture
def members(tmp_path: Path) -> list[Path]:
    return [_trained_like(tmp_path / f"run{seed}" / "best.pt", seed) for seed in (1, 2, 3)]


def test_ensemble_output_is_the_log_of_the_mean_member_probability():
    model, _ = build_model(ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1, members=3))
    model.eval()
    x = torch.randn(5, 1, 48, 48)
    expected = torch.stack([m(x).softmax(-1) for m in model.members]).mean(0)
    assert torch.allclose(model(x).softmax(-1), expected, atol=1e-6)
    assert torch.allclose(model(x).exp().sum(-1), torch.ones(5), atol=1e-5)  # already normalised


def test_shipped_ensemble_predicts_the_mean_of_its_members(members, tmp_path):
    shipped = tmp_path / "assets" / "ensemble.pt"
    ship_checkpoint(members, shipped, tta="flip")
    loaded = load_checkpoint(shipped)
    assert loaded.config.members == 3 and "ensemble of 3" in loaded.name
    faces = torch.randint(0, 256, (6, 48, 48), dtype=torch.uint8)
    probs = EmotionClassifier.from_checkpoint(shipped, device="cpu", amp="off").predict_tensor(faces)
    singles = [
        EmotionClassifier.from_checkpoint(p, device="cpu", amp="off", tta="flip").predict_tensor(faces) for p in members
    ]
    # Weight matrices are stored as float16, so the ensemble matches its members to float16 precision.
    assert torch.allclose(probs, torch.stack(singles).mean(0), atol=2e-3)
    blob = read_checkpoint(shipped)
    assert {v.dtype for k, v in blob["model"].items() if v.dim() > 1} == {torch.float16}
    assert {v.dtype for k, v in blob["model"].items() if v.is_floating_point() and v.dim() == 1} == {torch.float32}
    assert [m["seed"] for m in blob["train_config"]["members"]] == [1, 2, 3]
    assert [m["checkpoint"] for m in blob["metrics"]["members"]] == [str(p) for p in members]


def test_ensemble_report_draws_every_members_curves(members, tmp_path):
    shipped = tmp_path / "assets" / "ensemble.pt"
    ship_checkpoint(members[:2], shipped, tta="none")
    rows = training_history(shipped, load_checkpoint(shipped).metrics)
    assert [(r["member"], r["epoch"]) for r in rows] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert plot_curves(rows, tmp_path / "curves.png") and (tmp_path / "curves.png").stat().st_size > 0


def test_ship_cli_makes_an_evaluated_ensemble(members, tiny_fer, tmp_path, capsys):
    out = tmp_path / "assets" / "model.pt"
    argv = ["ship", *map(str, members), "--out", str(out), "--tta", "none", "--data", str(tiny_fer)]
    assert train_cli.main(argv) == 0
    assert "3 networks" in capsys.readouterr().out
    blob = read_checkpoint(out)
    # The evaluation recorded is that of the released file, which evaluate then reproduces.
    recorded = blob["metrics"]["evaluation"]["none"]["accuracy"]
    assert train_cli.main(["evaluate", "--checkpoint", str(out), "--data", str(tiny_fer)]) == 0
    assert f"{recorded * 100:.2f}" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.pt"]  # no staging file left behind


def test_ship_refuses_networks_of_different_shapes_and_keeps_the_old_release(members, tiny_fer, tmp_path, capsys):
    other = _trained_like(tmp_path / "wide" / "best.pt", 9, ModelConfig(kind="cnn", cnn_widths=(8, 32), cnn_convs=1))
    out = tmp_path / "assets" / "model.pt"
    out.parent.mkdir()
    out.write_bytes(b"previous release")
    assert (
        train_cli.main(
            ["ship", str(members[0]), str(other), "--out", str(out), "--tta", "none", "--data", str(tiny_fer)]
        )
        == 2
    )
    assert "one architecture" in capsys.readouterr().err
    assert out.read_bytes() == b"previous release"
    ship_checkpoint(members[:2], tmp_path / "e2.pt", tta="none")
    with pytest.raises(CheckpointError, match="already an ensemble"):
        ship_checkpoint([tmp_path / "e2.pt", members[2]], tmp_path / "e3.pt", tta="none")


def test_a_missing_data_folder_leaves_no_release(members, tmp_path, capsys):
    out = tmp_path / "assets" / "model.pt"
    assert (
        train_cli.main(
            ["ship", *map(str, members), "--out", str(out), "--tta", "none", "--data", str(tmp_path / "nope")]
        )
        == 2
    )
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


@pytest.mark.parametrize("members_value", [0, MAX_MEMBERS + 1, 1000, "3", True, 2.0, None])
def test_a_hostile_member_count_is_a_checkpoint_error(tmp_path, members_value):
    path = _trained_like(tmp_path / "m.pt", 1)
    blob = torch.load(path, weights_only=True)
    blob["model_config"]["members"] = members_value
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="members"):
        load_checkpoint(path)


def test_ship_takes_up_to_max_members_networks(tmp_path):
    net = _trained_like(tmp_path / "net.pt", 1)
    ship_checkpoint([net] * 9, tmp_path / "nine.pt", tta="none", weights="int8")  # more than the 8 of old
    assert load_checkpoint(tmp_path / "nine.pt").config.members == 9
    with pytest.raises(CheckpointError, match=f"1-{MAX_MEMBERS} checkpoints"):
        ship_checkpoint([net] * (MAX_MEMBERS + 1), tmp_path / "too_many.pt", tta="none")
    assert not (tmp_path / "too_many.pt").exists()


def test_the_trainer_trains_one_network_at_a_time():
    with pytest.raises(ConfigError, match="one network at a time"):
        TrainConfig(model=ModelConfig(kind="cnn", members=2)).check()


@pytest.mark.slow
def test_release_script_trains_one_network_per_seed_and_ships_their_ensemble(tiny_fer, tmp_path):
    out = tmp_path / "release" / "model.pt"
    env = {**os.environ, "OUT": str(out), "TRAIN_ARGS": "--epochs 1 --batch-size 16"}
    script = Path(train_cli.__file__).resolve().parent / "scripts" / "train_default_model.sh"
    done = subprocess.run(
        ["bash", str(script), str(tiny_fer), str(tmp_path / "runs" / "net"), "0 1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = load_checkpoint(out)
    assert loaded.config.members == 2 and loaded.inference == {"tta": "none"}
    assert [m["seed"] for m in loaded.train_config["members"]] == [0, 1]
    assert (out.parent / "report" / "metrics.json").is_file() and (out.parent / "report" / "curves.png").is_file()


def _compare_script():
    """scripts/compare_ensembles.py as a module (scripts/ is not a package)."""
    path = Path(train_cli.__file__).resolve().parent / "scripts" / "compare_ensembles.py"
    spec = importlib.util.spec_from_file_location("compare_ensembles", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_script_scores_every_subset_and_tta_mode(members, tiny_fer, capsys):
    module = _compare_script()
    assert module.main([*map(str, members[:2]), "--data", str(tiny_fer), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(len(r["networks"]), r["tta"]) for r in rows] == [
        (n, t) for n in (1, 1, 2) for t in ("none", "flip", "shift")
    ]
    # A single network scored here matches evaluate's figure for it.
    single = EmotionClassifier.from_checkpoint(members[0], device="cpu", tta="flip")
    expected = evaluate_dataset(single, load_split(tiny_fer, "test"), "test")["accuracy"]
    assert rows[1]["networks"] == [str(members[0])] and rows[1]["accuracy"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "members_entry", ["x", [1, {"history": "x"}], [{"history": [1, {"epoch": 1}, {"epoch": 2, "train_loss": "a"}]}]]
)
def test_malformed_member_histories_draw_nothing_instead_of_failing(tmp_path, members_entry):
    rows = training_history(tmp_path / "model.pt", {"members": members_entry})
    assert plot_curves(rows, tmp_path / "curves.png") is False and not (tmp_path / "curves.png").exists()


def test_int8_ship_quarters_the_weights_and_predicts_like_the_members(members, tmp_path, tiny_fer, capsys):
    half, quarter = tmp_path / "fp16.pt", tmp_path / "int8.pt"
    ship_checkpoint(members, half, tta="none")
    assert (
        train_cli.main(
            [
                "ship",
                *map(str, members),
                "--out",
                str(quarter),
                "--tta",
                "none",
                "--weights",
                "int8",
                "--data",
                str(tiny_fer),
            ]
        )
        == 0
    )
    assert "int8 weights" in capsys.readouterr().out
    stored = read_checkpoint(quarter, dequantize=False)["model"]
    matrices = [k for k, v in stored.items() if v.dim() > 1]
    assert matrices and {stored[k].dtype for k in matrices} == {torch.int8}
    assert all(stored[k + "::scale"].shape == (stored[k].shape[0],) for k in matrices)
    assert read_checkpoint(quarter)["model"][matrices[0]].dtype == torch.float32  # loaders get float weights
    faces = torch.randint(0, 256, (6, 48, 48), dtype=torch.uint8)
    probs = EmotionClassifier.from_checkpoint(quarter, device="cpu", amp="off").predict_tensor(faces)
    singles = [
        EmotionClassifier.from_checkpoint(p, device="cpu", amp="off", tta="none").predict_tensor(faces) for p in members
    ]
    assert torch.allclose(
        probs, torch.stack(singles).mean(0), atol=2e-2
    )  # int8 steps are 1/254 of each channel's range
    # The recorded evaluation rewrote the file in its stored form, not as float32.
    assert "evaluation" in read_checkpoint(quarter)["metrics"] and quarter.stat().st_size < half.stat().st_size


@pytest.mark.parametrize("damage", ["drop scale", "short scale", "orphan scale", "int8 without scale"])
def test_damaged_int8_weights_are_a_checkpoint_error(members, tmp_path, damage):
    path = tmp_path / "int8.pt"
    ship_checkpoint(members, path, tta="none", weights="int8")
    blob = torch.load(path, weights_only=True)
    weights = blob["model"]
    name = next(k for k, v in weights.items() if v.dtype == torch.int8)
    if damage == "drop scale":
        del weights[name + "::scale"]
    elif damage == "short scale":
        weights[name + "::scale"] = weights[name + "::scale"][:1]
    elif damage == "orphan scale":
        weights["members.0.head.3.bias::scale"] = torch.ones(7)
    else:
        weights["members.0.head.3.bias"] = torch.zeros(7, dtype=torch.int8)
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="int8|scale"):
        load_checkpoint(path)


def test_ship_refuses_an_unknown_weight_format(members, tmp_path):
    with pytest.raises(CheckpointError, match="fp16, int8"):
        ship_checkpoint(members, tmp_path / "x.pt", tta="none", weights="int4")


def test_compare_script_holdout_check_measures_the_lead_of_picking_a_row_on_the_split():
    module = _compare_script()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(7), 60)
    # Row 0, the baseline, is right on 42 of each class's 60 faces; 50 rows of pure chance are each right on a random
    # 70% of the faces: picking the best of them on one half leads there, and the lead is gone on the other half.
    correct = rng.random((51, len(labels))) < 0.7
    correct[0] = np.arange(len(labels)) % 10 < 7
    noise = module.holdout_check(correct, 0, labels, rounds=40)
    assert noise["lead_where_picked"] > 0.03 and abs(noise["lead_elsewhere"]) < 0.02
    # A row that is truly better keeps its lead on the half it was not picked on.
    better = correct[0] | (rng.random(len(labels)) < 0.5)
    real = module.holdout_check(np.vstack([correct, better]), 0, labels, rounds=40)
    assert real["lead_elsewhere"] > 0.1 and real["ahead_elsewhere"] > 0.9


def test_compare_script_json_with_holdout_holds_the_rows_and_the_summary(members, tiny_fer, capsys):
    module = _compare_script()
    assert module.main([*map(str, members[:2]), "--data", str(tiny_fer), "--json", "--holdout", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["subsets"]) == 9 and out["holdout"]["rounds"] == 3
    # Narrowed to pairs without shift, against a given checkpoint.
    assert (
        module.main(
            [
                *map(str, members[:2]),
                "--data",
                str(tiny_fer),
                "--json",
                "--holdout",
                "2",
                "--sizes",
                "2",
                "--tta",
                "none",
                "flip",
                "--baseline",
                str(members[2]),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [(len(r["networks"]), r["tta"]) for r in out["subsets"]] == [(2, "none"), (2, "flip")]
    for bad in (["--holdout", "-1"], ["--sizes", "3"]):
        with pytest.raises(SystemExit):
            module.main([*map(str, members[:2]), *bad])
