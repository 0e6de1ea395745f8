"""The Training tab follows run folders it did not start: command-line runs and earlier sessions."""

from __future__ import annotations

import json
import os
import time

import pytest

from emotion.app.training_runner import PastRun, TrainingRunner
from emotion.app.training_tab import poll_training, progress_text, show_run, stop_training


def _run_folder(root, name, epochs, state, pid=None):
    run = root / name
    run.mkdir(parents=True)
    t0 = time.time() - 1000
    rows = [
        {
            "epoch": e,
            "train_loss": 1.5 - 0.1 * e,
            "train_acc": 0.4 + 0.02 * e,
            "val_loss": 1.2 - 0.05 * e,
            "val_acc": 0.5 + 0.01 * e,
            "seconds": 100.0,
            "time": t0 + 110 * e,
        }
        for e in range(1, epochs + 1)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "status.json").write_text(
        json.dumps(
            {"state": state, "epoch": epochs, "epochs": 26, "step": 3, "steps_per_epoch": 448, "pid": pid or 2**22 + 7}
        )
    )
    (run / "train.log").write_text("epoch 1 ...\nepoch 2 ...\n")
    return run


def test_a_finished_command_line_run_is_shown_with_its_curves(tmp_path):
    _run_folder(tmp_path, "cnn_cli", epochs=26, state="done")
    runner = TrainingRunner(tmp_path)
    assert runner.past_runs() == ["cnn_cli"]
    message, timer = show_run(runner, "cnn_cli")
    assert "cnn_cli" in message and timer.active
    run = runner.current
    assert isinstance(run, PastRun) and not run.running and run.state() == "done"
    text = progress_text(run)
    assert "Done" in text and "26 epochs" in text and "47m" in text  # 26 epochs of 110 s, from the metrics' own times
    progress, figure, log_text, *_, timer, seen = poll_training(runner, None)
    assert figure is not None and "epoch 2" in log_text and not timer.active
    assert stop_training(runner) == "No training run is in progress."


def test_a_command_line_run_in_progress_is_followed_but_not_stopped(tmp_path):
    _run_folder(
        tmp_path, "cnn_live", epochs=3, state="training", pid=os.getpid()
    )  # a live process stands in for the trainer
    _run_folder(tmp_path, "crashed", epochs=2, state="training")  # its trainer is gone: an interrupted run
    runner = TrainingRunner(tmp_path)
    assert set(runner.past_runs()) == {"cnn_live", "crashed"}
    runner.open_run("cnn_live")
    assert runner.current.running and runner.current.state() == "training"
    assert "epoch 3/26" in progress_text(runner.current)
    assert "not started from this tab" in stop_training(runner)
    assert os.path.exists(f"/proc/{os.getpid()}")  # and nothing was signalled
    assert runner.open_run("crashed").state() == "stopped"


@pytest.mark.parametrize("name", ["", "../cnn_cli", "/etc", "missing", "cnn_cli/../cnn_cli"])
def test_only_listed_run_folders_open(tmp_path, name):
    _run_folder(tmp_path / "runs", "cnn_cli", epochs=1, state="done")
    (tmp_path / "runs" / "empty").mkdir()  # no metrics or status: not a run
    runner = TrainingRunner(tmp_path / "runs")
    assert runner.past_runs() == ["cnn_cli"]
    message, timer = show_run(runner, name)
    assert message.startswith("⚠️") and not timer.active and runner.current is None
