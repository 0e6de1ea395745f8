"""The training loop's named steps, each on its own: set-up, one epoch, validation and checkpoint, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from emotion.models.checkpoint import read_checkpoint
from emotion.models.networks import ModelConfig
from emotion.training.config import TrainConfig
from emotion.training.distributed import Dist
from emotion.training.loop import train_epoch, validate_and_save
from emotion.training.optim import set_phase
from emotion.training.setup import resume_run, setup_run

CPU = torch.device("cpu")


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    tiny = ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1)
    return TrainConfig(data=str(data), out=str(out), model=tiny, batch_size=16, epochs=2, device="cpu", amp="off", **kw)


def test_setup_builds_data_model_and_optimizer(tiny_fer: Path, tmp_path: Path) -> None:
    run = setup_run(_config(tiny_fer, tmp_path / "run"), Dist(), CPU, tmp_path / "run")
    assert len(run.train_ds) == 7 * 12 and len(run.val_ds) == 7 * 12
    assert run.steps_per_epoch == (7 * 12) // 16 and run.dtype is None
    assert all(g["base_lr"] == g["lr"] for g in run.optimizer.param_groups)
    assert run.start_epoch == 1 and run.history == [] and run.best["epoch"] == 0


def test_one_epoch_then_validation_writes_checkpoints_and_a_metrics_row(tiny_fer: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    run = setup_run(_config(tiny_fer, out), Dist(), CPU, out)
    resume_run(run)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    phase = set_phase(run.model, run.cfg, 1)
    published = []
    stats = train_epoch(run, 1, phase, run.model, use_cache=False, publish=lambda **kw: published.append(kw))
    assert stats.seen == run.steps_per_epoch * 16 and math.isfinite(stats.loss_sum) and stats.seconds > 0
    assert any(not torch.equal(before[k], v) for k, v in run.model.state_dict().items()), "the weights did not move"

    row = validate_and_save(run, 1, phase, stats, use_cache=False, embed_seconds=0.0)
    assert row["epoch"] == 1 and 0.0 <= row["val_acc"] <= 1.0 and row["precision"] == "fp32"
    assert run.best["epoch"] == 1 and run.history == [row]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert read_checkpoint(out / "last.pt")["training_state"]["epoch"] == 1 and (out / "best.pt").is_file()


def test_resume_restores_the_epoch_best_and_history(tiny_fer: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    first = setup_run(_config(tiny_fer, out), Dist(), CPU, out)
    resume_run(first)
    phase = set_phase(first.model, first.cfg, 1)
    validate_and_save(first, 1, phase, train_epoch(first, 1, phase, first.model, False, lambda **kw: None), False, 0.0)

    again = setup_run(_config(tiny_fer, out, resume=True), Dist(), CPU, out)
    resume_run(again)
    assert again.start_epoch == 2 and again.best == first.best and len(again.history) == 1
    assert all(torch.equal(v, first.model.state_dict()[k]) for k, v in again.model.state_dict().items())
