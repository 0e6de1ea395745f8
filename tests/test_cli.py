"""End to end through train_cli.main: train (folders and CSV), kill -9 and resume, evaluate, predict, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, make_csv_dataset

import train_cli
from emotion.models.checkpoint import read_checkpoint
from emotion.utils.runtime import read_jsonl

TINY = ["--model", "clip", "--clip-model", "emotion-tiny-vit", "--clip-weights", "random", "--batch-size", "16"]


def _train_args(data: Path, out: Path, epochs: int = 3, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        *TINY,
        "--epochs",
        str(epochs),
        "--unfreeze-epoch",
        "2",
        "--unfreeze-blocks",
        "1",
        "--lr",
        "3e-3",
        "--clip-lr",
        "1e-3",
        *extra,
    ]


def test_train_evaluate_predict_folders(tiny_fer, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main(_train_args(tiny_fer, out)) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["phase"] for r in rows] == ["frozen", "unfrozen", "unfrozen"]
    assert "embed_seconds" in rows[0] and set(rows[0]["lr"]) == {"adapter", "clip"}
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_s"):
        assert all(key in r for r in rows)
    assert (out / "embeddings.pt").exists() and (out / "train.log").read_text()
    assert json.loads((out / "status.json").read_text())["state"] == "done"
    blob = read_checkpoint(out / "best.pt")
    assert blob["model_config"]["clip_model"] == "emotion-tiny-vit" and blob["train_config"]["epochs"] == 3
    assert "training_state" not in blob and "training_state" in read_checkpoint(out / "last.pt")
    for f in ("metrics.json", "confusion_matrix.png", "curves.png"):
        assert (out / "report" / f).stat().st_size > 0

    report = tmp_path / "report"
    assert (
        train_cli.main(
            [
                "evaluate",
                "--checkpoint",
                str(out / "best.pt"),
                "--data",
                str(tiny_fer),
                "--split",
                "test",
                "--out",
                str(report),
                "--tta",
                "flip",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "macro avg" in printed
    m = json.loads((report / "metrics.json").read_text())
    assert 0 <= m["accuracy"] <= 1 and set(m["per_class"]["happy"]) == {"precision", "recall", "f1", "support"}
    assert (report / "curves.png").exists() and (report / "confusion_matrix.png").exists()

    images = sorted((tiny_fer / "test" / "happy").glob("*.png"))[:2]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    assert (
        train_cli.main(
            ["predict", *map(str, images), str(bad), "--checkpoint", str(out / "best.pt"), "--whole-image", "--json"]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert [d["image"] for d in doc] == [*map(str, images), str(bad)]
    assert "error" in doc[2] and len(doc[0]["faces"]) == 1
    face = doc[0]["faces"][0]
    assert face["box"] == [0, 0, 48, 48] and face["label"] in face["probabilities"]
    assert abs(sum(face["probabilities"].values()) - 1) < 1e-4


def test_csv_train_with_val_split_and_evaluate_private(tmp_path):
    csv_path = make_csv_dataset(tmp_path / "fer2013.csv", per_class=8)
    out = tmp_path / "run"
    assert train_cli.main([*_train_args(csv_path, out, 2), "--val-split", "0.25"]) == 0
    assert [r["phase"] for r in read_jsonl(out / "metrics.jsonl")] == ["frozen", "unfrozen"]
    assert json.loads((out / "report" / "metrics.json").read_text())["n"] == 14  # 2 of 8 per class carved out
    report = tmp_path / "private"
    assert (
        train_cli.main(
            [
                "evaluate",
                "--checkpoint",
                str(out / "best.pt"),
                "--data",
                str(csv_path),
                "--split",
                "private",
                "--out",
                str(report),
            ]
        )
        == 0
    )
    assert json.loads((report / "metrics.json").read_text())["n"] == 56


def test_kill9_then_resume_matches_uninterrupted_run(tiny_fer, tmp_path):
    epochs = 4
    # One thread and one precision in every process (amp auto would time bf16 against fp32 in each run):
    # the same float arithmetic, so the runs can be compared closely.
    one = ("--no-report", "--threads", "1", "--amp", "off")
    straight = tmp_path / "straight"
    assert train_cli.main(_train_args(tiny_fer, straight, epochs, *one)) == 0

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train_cli.py"), *_train_args(tiny_fer, out, epochs, *one)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "last.pt").exists():
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = read_checkpoint(out / "last.pt")["training_state"]["epoch"]
    assert 1 <= done < epochs, "the run should have been killed part-way"

    assert train_cli.main([*_train_args(tiny_fer, out, epochs, *one), "--resume"]) == 0
    assert "resumed from" in (out / "train.log").read_text()
    resumed, reference = read_jsonl(out / "metrics.jsonl"), read_jsonl(straight / "metrics.jsonl")
    assert [r["epoch"] for r in resumed] == list(range(1, epochs + 1))
    for a, b in zip(resumed, reference, strict=False):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4), (
            "resumed run diverged from the uninterrupted one"
        )


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    assert (
        train_cli.main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--model", "cnn"])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert train_cli.main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path)]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_help_for_every_command(capsys):
    for cmd in ("train", "evaluate", "predict", "export", "bench"):
        with pytest.raises(SystemExit) as exc:
            train_cli.main([cmd, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "--" in text
    parser = train_cli.build_parser()
    for action in parser._subparsers._group_actions[0].choices["train"]._actions:
        assert action.help, f"flag {action.option_strings} has no help"


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tiny_fer, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "train_cli.py"),
        *_train_args(tiny_fer, out, 2),
    ]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[
        -6000:
    ]  # torchrun names the failed rank and its exit code near the end
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]  # rank 0 alone writes metrics
    # 84 faces, 2 processes x 16 per step: 2 steps per epoch, each seeing 64 faces in all
    assert all(r["images_per_s"] > 0 for r in rows)
    assert (out / "best.pt").exists() and (out / "report" / "metrics.json").exists()
