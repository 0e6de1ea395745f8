"""scripts/gpu_train.sh end to end on the CPU: probe, planned epochs, shared held-out faces, returned files."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import make_folder_dataset

from emotion.evaluation.calibration import default_held_out
from emotion.models.checkpoint import read_checkpoint, ship_checkpoint

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # five trainer processes start one after another: about a minute on 2 cores


def test_gpu_script_trains_every_network_on_one_held_out_split_and_hands_back_int8_networks(tmp_path):
    data = make_folder_dataset(tmp_path / "fer", per_class=10, splits=("train",))
    out, runs = tmp_path / "out", tmp_path / "runs"
    env = {
        **os.environ,
        "OUT": str(out),
        "RUNS": str(runs),
        "DEVICE": "cpu",
        "EPOCHS": "auto",
        "EPOCHS_MAX": "2",
        "PROBE_IMAGES": "32",
        "BUDGET_S": "300",
        "VAL_SPLIT": "0.2",
        "SPLIT_SEED": "3",
        "RESIDUAL": "2",
        "TRAIN_ARGS": "--cnn-widths 8,16 --batch-size 16 --frame-jitter 0.5",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",  # python3 is this interpreter
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_train.sh"), str(data), "1 2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "probe 1:" in done.stdout and "epochs in" in done.stdout  # the probe planned each network's epochs
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "nets-1.tar"]
    with tarfile.open(out / "nets-1.tar") as tar:
        tar.extractall(tmp_path / "nets", filter="data")
    nets = sorted((tmp_path / "nets").glob("cnn-s*.pt"))
    assert [p.name for p in nets] == ["cnn-s1.pt", "cnn-s2.pt"]
    blobs = [read_checkpoint(p, dequantize=False) for p in nets]
    assert [b["model_config"]["cnn_block"] for b in blobs] == ["plain", "residual"]
    assert all(b["train_config"]["split_seed"] == 3 and b["train_config"]["val_split"] == 0.2 for b in blobs)
    assert all(b["train_config"]["augment"]["frame_jitter"] == 0.5 for b in blobs)
    assert any(v.dtype == torch.int8 for v in blobs[0]["model"].values())  # int8 weight matrices
    # Shipped together, the two networks are calibrated on the faces both held out.
    ship_checkpoint(nets, tmp_path / "ensemble.pt", tta="flip", weights="int8")
    held = default_held_out(read_checkpoint(tmp_path / "ensemble.pt")["train_config"], None, None)
    assert (held.fraction, held.seed, held.unseen) == (0.2, 3, True)


def test_heldout_member_script_trains_one_network_on_the_shared_split_and_resumes(tmp_path):
    """scripts/heldout_member.sh: one network on the held-out split every member shares, kept as an int8 file
    whose PublicTest evaluation `ship` recorded; run again, it resumes the finished run instead of retraining."""
    data = make_folder_dataset(tmp_path / "fer", per_class=40)  # 5% of 280 faces: 14 held out
    out_dir = tmp_path / "heldout"
    env = {
        **os.environ,
        "OUT_DIR": str(out_dir),
        "RUNS": str(tmp_path / "runs"),
        "TRAIN_ARGS": "--cnn-widths 8,16 --batch-size 16 --epochs 1 --device cpu",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    script = ["bash", str(ROOT / "scripts" / "heldout_member.sh"), "7", str(data)]
    for _ in range(2):
        done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "resumed from" in done.stdout + done.stderr  # the second run trained nothing again
    blob = read_checkpoint(out_dir / "cnn-s7.pt", dequantize=False)
    train = blob["train_config"]
    assert (train["val_split"], train["split_seed"], train["seed"]) == (0.05, 0, 7)
    assert (train["augment"]["frame_jitter"], train["augment"]["mixup"]) == (0.5, 0.4)
    assert blob["inference"]["tta"] == "flip" and any(v.dtype == torch.int8 for v in blob["model"].values())
    assert "evaluation" in blob["metrics"]  # ship scored the written file
    held = default_held_out(read_checkpoint(out_dir / "cnn-s7.pt")["train_config"], None, None)
    assert (held.fraction, held.seed, held.unseen) == (0.05, 0, True)
    # A dataset path that does not exist is an error, not a silent fall-back to another dataset.
    missing = subprocess.run(script[:2] + ["8", str(tmp_path / "nowhere")], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "no dataset at" in missing.stderr and not (out_dir / "cnn-s8.pt").exists()
