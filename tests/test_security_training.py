"""Hostile inputs and faults (issue 9), training's side: bad CSV rows, NaN hyperparameters, overwritten runs,
malformed and unsafe checkpoints, and a full or read-only disk during training. The app's side is in
test_security.py.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, make_csv_dataset, train_tiny_cnn
from PIL import Image

import train_cli
from emotion.app import AppConfig, EmotionApp
from emotion.app.model_panel import ModelManager
from emotion.app.training_runner import TrainingRunner
from emotion.app.training_tab import start_training
from emotion.data.splits import load_split
from emotion.models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from emotion.models.networks import ModelConfig, build_model

ONE_THREAD = ("--threads", "1")  # with TINY_CNN_FLAGS
UNSAFE_HINT = "weights_only=False"


def _rewrite_first_training_row(csv_path: Path, emotion: str | None = None, pixel: str | None = None) -> None:
    lines = csv_path.read_text().splitlines()
    code, pixels, usage = lines[1].split(",")
    values = pixels.split()
    if pixel is not None:
        values[0] = pixel
    lines[1] = ",".join([emotion if emotion is not None else code, " ".join(values), usage])
    csv_path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "bad",
    [{"pixel": "300"}, {"pixel": "-4"}, {"pixel": "1e9"}, {"emotion": "-1"}, {"emotion": "7"}],
    ids=["pixel-300", "pixel-negative", "pixel-junk", "emotion-minus-1", "emotion-7"],
)
def test_bad_csv_rows_are_skipped_counted_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: dict
) -> None:
    csv_path = make_csv_dataset(tmp_path / "fer2013.csv", per_class=2)
    _rewrite_first_training_row(csv_path, **bad)
    ds = load_split(csv_path, "train")
    assert ds.skipped == 1 and len(ds) == 13
    assert "skipped 1 unreadable row" in caplog.text


# --- configuration --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--lr", "nan"],
        ["--lr", "inf"],
        ["--lr=-1e-3"],
        ["--lr", "50"],
        ["--clip-lr", "nan"],
        ["--batch-size", "0"],
        ["--epochs=-3"],
        ["--weight-decay", "inf"],
        ["--label-smoothing", "1.5"],
        ["--ema-decay", "1"],
        ["--val-split", "nan"],
        ["--cnn-widths", "8,0"],
        ["--dropout", "2"],
        ["--mixup", "nan"],
        ["--cutmix=-1"],
        ["--cutmix", "inf"],
        ["--mix-prob", "1.5"],
        ["--distill-weight", "2"],
        ["--distill-temperature", "0"],
    ],
)
def test_bad_hyperparameters_stop_the_cli_with_exit_code_2(
    tiny_fer: Path, tmp_path: Path, capsys, flags: list[str]
) -> None:
    out = tmp_path / "run"
    assert train_tiny_cnn(tiny_fer, out, *ONE_THREAD, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "must be" in err[-1] and "Traceback" not in "\n".join(err)
    assert not out.exists(), "nothing is created for a refused run"


@pytest.mark.parametrize("lr", [math.nan, math.inf, -1.0, 5.0])
def test_bad_hyperparameters_are_refused_in_the_training_tab(tmp_path: Path, lr: float) -> None:
    from conftest import make_folder_dataset

    root = make_folder_dataset(tmp_path / "data" / "tiny", per_class=1, splits=("train",)).parent
    runner = TrainingRunner(tmp_path / "runs")
    with pytest.warns(UserWarning, match="learning rate"):
        message, timer = start_training(runner, root, "tiny", "cnn", 1, 8, lr, 1e-5, 0, "", 0)
    assert message.startswith("⚠️") and not timer.active and runner.current is None
    with pytest.warns(UserWarning, match="(?i)epochs"):
        start_training(runner, root, "tiny", "cnn", math.nan, 8, 1e-3, 1e-5, 0, "", 0)
    assert runner.current is None


def test_a_non_finite_loss_stops_at_once_and_keeps_the_last_good_checkpoint(
    tiny_fer: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import emotion.training.loop as train_module

    real = train_module.F.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, y, **kwargs):  # the first training step of epoch 2 diverges (5 steps per epoch)
        loss = real(logits, y, **kwargs)
        if kwargs.get("label_smoothing") is not None:
            calls["n"] += 1
            if calls["n"] == 6:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(train_module.F, "cross_entropy", poisoned)
    out = tmp_path / "run"
    assert train_tiny_cnn(tiny_fer, out, *ONE_THREAD, "--epochs", "3") == 1
    err = capsys.readouterr().err
    assert "NaN or infinite in epoch 2" in err and "last good checkpoint" in err
    assert calls["n"] == 6, "training went on after the loss became NaN"
    blob = read_checkpoint(out / "last.pt")
    assert blob["training_state"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in blob["model"].values() if t.is_floating_point())
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "NaN" in status["error"]


def test_a_nan_checkpoint_is_refused_so_predict_never_prints_nan(tmp_path: Path, capsys) -> None:
    cfg = ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1)
    model, _ = build_model(cfg)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_checkpoint(tmp_path / "nan.pt", model, cfg)
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "face.png")
    assert (
        train_cli.main(
            ["predict", str(tmp_path / "face.png"), "--whole-image", "--json", "--checkpoint", str(tmp_path / "nan.pt")]
        )
        == 2
    )
    captured = capsys.readouterr()
    assert "NaN or infinite weights" in captured.err and "NaN" not in captured.out


# --- runs are never overwritten silently ----------------------------------------------------------------------------


def test_training_into_a_finished_run_needs_resume_or_overwrite(tiny_fer: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert train_tiny_cnn(tiny_fer, out, *ONE_THREAD) == 0
    before = {name: (out / name).read_bytes() for name in ("best.pt", "last.pt", "metrics.jsonl", "status.json")}
    capsys.readouterr()
    assert train_tiny_cnn(tiny_fer, out, *ONE_THREAD) == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "--resume" in err and "--overwrite" in err
    assert {name: (out / name).read_bytes() for name in before} == before, "a refused run must not touch the old one"
    assert train_tiny_cnn(tiny_fer, out, *ONE_THREAD, "--overwrite") == 0
    assert (out / "last.pt").read_bytes() != before["last.pt"]
    assert train_tiny_cnn(tiny_fer, out, *ONE_THREAD, "--resume", "--overwrite") == 2


# --- checkpoints ----------------------------------------------------------------------------------------------------


def _broken_checkpoints(tiny: Path, folder: Path) -> dict[str, Path]:
    blob = torch.load(tiny, weights_only=True)
    variants = {
        "no-model": {k: v for k, v in blob.items() if k != "model"},
        "model-not-dict": {**blob, "model": [1, 2, 3]},
        "no-config": {k: v for k, v in blob.items() if k != "model_config"},
        "config-not-dict": {**blob, "model_config": "cnn"},
        "config-bad-kind": {**blob, "model_config": {**blob["model_config"], "kind": "rnn"}},
        "config-huge-widths": {**blob, "model_config": {**blob["model_config"], "cnn_widths": [10**9]}},
        "config-bad-types": {**blob, "model_config": {**blob["model_config"], "cnn_widths": "wide", "dropout": "x"}},
        "class-names-not-list": {**blob, "class_names": 7},
    }
    paths = {}
    for name, variant in variants.items():
        paths[name] = folder / f"{name}.pt"
        torch.save(variant, paths[name])
    return paths


def test_malformed_checkpoints_give_a_one_line_error(tiny_cnn_checkpoint: Path, tmp_path: Path, capsys) -> None:
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "face.png")
    for name, path in _broken_checkpoints(tiny_cnn_checkpoint, tmp_path).items():
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(path)
        assert "\n" not in str(exc.value) and UNSAFE_HINT not in str(exc.value), name
        assert (
            train_cli.main(["predict", str(tmp_path / "face.png"), "--whole-image", "--checkpoint", str(path)]) == 2
        ), name
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and UNSAFE_HINT not in err[-1], name


class _Payload:
    """Something a malicious pickle would carry; loading must refuse it without suggesting an unsafe load."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_with_code_is_refused_without_suggesting_an_unsafe_load(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": "emotion-checkpoint", "x": _Payload()}, fh, protocol=2)
    with pytest.raises(CheckpointError) as exc:
        read_checkpoint(path)
    assert UNSAFE_HINT not in str(exc.value) and "weights_only" not in str(exc.value)
    assert "never loaded" in str(exc.value)


def test_the_app_starts_on_the_shipped_model_and_says_why(
    tiny_cnn_checkpoint: Path, face_model_path: Path, tmp_path: Path
) -> None:
    broken = _broken_checkpoints(tiny_cnn_checkpoint, tmp_path)["no-model"]
    models = ModelManager(broken, face_model_path, "cpu", tmp_path, tmp_path, ROOT, fallback=tiny_cnn_checkpoint)
    assert models.recognizer is not None and models.active_path == tiny_cnn_checkpoint.resolve()
    assert "could not be loaded" in models.describe() and "no model weights" in models.describe()
    # The real app, as `app.py --checkpoint broken.pt` builds it, falls back to the shipped model.
    from emotion.inference.classifier import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("the shipped model is not in this checkout")
    app = EmotionApp(AppConfig(checkpoint=broken, face_model=face_model_path, device="cpu", training=False))
    assert app.models.active_path == DEFAULT_CHECKPOINT.resolve() and "⚠️" in app.models.describe()


# --- faults while training ------------------------------------------------------------------------------------------


def test_a_failed_status_update_is_logged_and_training_goes_on(
    tiny_fer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import emotion.training.loop as train_module

    def full_disk(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_module, "write_json_atomic", full_disk)
    out = tmp_path / "run"
    assert train_tiny_cnn(tiny_fer, out, *ONE_THREAD, "--epochs", "2") == 0
    log = (out / "train.log").read_text()
    assert "could not update" in log and "training goes on" in log
    assert (out / "best.pt").is_file() and read_checkpoint(out / "last.pt")["training_state"]["epoch"] == 2


@pytest.mark.parametrize("fault", ["full-disk", "read-only"])
def test_a_failed_checkpoint_write_stops_cleanly_and_keeps_the_last_good_one(
    tiny_fer: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    import emotion.models.checkpoint as checkpoint_module
    import emotion.training.loop as train_module

    real_save = torch.save
    writes = {"n": 0}
    broken = {"on": False}

    def save(obj, f, *args, **kwargs):
        if Path(f).name.startswith((".last.pt", ".best.pt")):
            writes["n"] += 1
        if writes["n"] >= 3:  # epoch 1 writes last.pt and best.pt; epoch 2's first write fails
            broken["on"] = True
            if fault == "full-disk":
                Path(f).write_bytes(b"partial")  # what a full disk leaves: a truncated temp file
                raise RuntimeError(
                    "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: file write failed"
                )
            raise PermissionError(errno.EACCES, "Permission denied", str(f))
        return real_save(obj, f, *args, **kwargs)

    real_status = train_module.write_json_atomic

    def status(path, obj):  # a read-only folder refuses new files (the atomic temp file) from then on
        if broken["on"] and fault == "read-only":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_status(path, obj)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    monkeypatch.setattr(train_module, "write_json_atomic", status)
    out = tmp_path / "run"
    assert train_tiny_cnn(tiny_fer, out, *ONE_THREAD, "--epochs", "3") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: could not write checkpoint") and "--resume" in err[-1]
    assert not list(out.glob(".*tmp*")), "a partial temp file was left behind"
    assert read_checkpoint(out / "last.pt")["training_state"]["epoch"] == 1
    status_doc = json.loads((out / "status.json").read_text())
    assert status_doc["state"] == "failed" and "could not write checkpoint" in status_doc["error"]
