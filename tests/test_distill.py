"""Distillation: the loss, and training a network with a teacher checkpoint through the CLI."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion.checkpoint import read_checkpoint  # noqa: E402
from emotion.distill import distill_loss, load_teacher, teacher_logits  # noqa: E402
from emotion.models import build_model  # noqa: E402
import train_cli  # noqa: E402

SMALL = ["--model", "cnn", "--epochs", "1", "--batch-size", "16", "--cnn-widths", "8,16", "--no-report"]


def test_distill_loss_is_zero_only_when_the_student_agrees():
    teacher = torch.randn(32, 7)
    assert distill_loss(teacher.clone(), teacher, 2.0).abs() < 1e-6
    assert distill_loss(teacher + 3.0, teacher, 2.0).abs() < 1e-6  # a shift of every logit changes no probability
    assert distill_loss(torch.randn(32, 7), teacher, 2.0) > 0.01


def test_following_the_distill_loss_makes_the_student_match_the_teacher():
    torch.manual_seed(0)
    teacher = torch.randn(64, 7) * 3
    student = torch.zeros(64, 7, requires_grad=True)
    opt = torch.optim.SGD([student], lr=50.0)  # batchmean divides each gradient by the batch size
    start = distill_loss(student, teacher, 2.0).item()
    for _ in range(200):
        opt.zero_grad()
        distill_loss(student, teacher, 2.0).backward()
        opt.step()
    assert distill_loss(student, teacher, 2.0).item() < start / 50
    assert torch.equal(student.argmax(1), teacher.argmax(1))


def test_teacher_logits_match_the_teachers_own_prediction(tiny_cnn_checkpoint):
    teacher = load_teacher(str(tiny_cnn_checkpoint), torch.device("cpu"))
    model, preprocess = build_model(teacher.config)
    model.load_state_dict(read_checkpoint(tiny_cnn_checkpoint)["model"])
    faces = torch.rand(5, 1, 48, 48)
    assert torch.allclose(teacher_logits(teacher, faces), model.eval()(preprocess(faces)), atol=1e-5)
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_a_network_trains_with_a_teacher_and_records_it(tiny_fer, tiny_cnn_checkpoint, tmp_path):
    run = tmp_path / "student"
    assert train_cli.main(["train", "--data", str(tiny_fer), "--out", str(run), *SMALL, "--teacher", str(tiny_cnn_checkpoint),
                           "--distill-weight", "0.7", "--distill-temperature", "3", "--cutmix", "1", "--mix-prob", "1"]) == 0
    cfg = read_checkpoint(run / "best.pt")["train_config"]
    assert (cfg["teacher"], cfg["distill_weight"], cfg["distill_temperature"]) == (str(tiny_cnn_checkpoint), 0.7, 3.0)


@pytest.mark.parametrize("teacher", ["missing.pt", "junk.pt"])
def test_a_missing_or_junk_teacher_is_a_one_line_error(tiny_fer, tmp_path, capsys, teacher):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert train_cli.main(["train", "--data", str(tiny_fer), "--out", str(tmp_path / "run"), *SMALL,
                           "--teacher", str(tmp_path / teacher)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and teacher in err[-1] and "Traceback" not in "\n".join(err)


def test_a_clip_student_with_the_embedding_cache_is_told_how_to_use_a_teacher(tiny_cnn_checkpoint):
    from emotion.models import ModelConfig
    from emotion.train_config import ConfigError, TrainConfig

    cfg = TrainConfig(model=ModelConfig(kind="clip"), teacher=str(tiny_cnn_checkpoint))
    with pytest.raises(ConfigError, match="--no-embedding-cache"):
        cfg.check()
    cfg.embedding_cache = False
    cfg.check()  # every step sees faces, so the teacher can see them too
