"""Distillation: the loss, and training a network with a teacher checkpoint through the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import train_tiny_cnn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion.models.checkpoint import read_checkpoint  # noqa: E402
from emotion.models.networks import build_model  # noqa: E402
from emotion.training.distill import (  # noqa: E402
    cached_teacher_targets,
    distill_loss,
    load_teacher,
    mix_targets,
    teacher_logits,
    teacher_targets,
)


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
    assert (
        train_tiny_cnn(
            tiny_fer,
            run,
            "--teacher",
            str(tiny_cnn_checkpoint),
            "--distill-weight",
            "0.7",
            "--distill-temperature",
            "3",
            "--cutmix",
            "1",
            "--mix-prob",
            "1",
        )
        == 0
    )
    cfg = read_checkpoint(run / "best.pt")["train_config"]
    assert (cfg["teacher"], cfg["distill_weight"], cfg["distill_temperature"]) == (str(tiny_cnn_checkpoint), 0.7, 3.0)


@pytest.mark.parametrize("teacher", ["missing.pt", "junk.pt"])
def test_a_missing_or_junk_teacher_is_a_one_line_error(tiny_fer, tmp_path, capsys, teacher):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert train_tiny_cnn(tiny_fer, tmp_path / "run", "--teacher", str(tmp_path / teacher)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and teacher in err[-1] and "Traceback" not in "\n".join(err)


def test_a_clip_student_with_the_embedding_cache_is_told_how_to_use_a_teacher(tiny_cnn_checkpoint):
    from emotion.models.networks import ModelConfig
    from emotion.training.config import ConfigError, TrainConfig

    cfg = TrainConfig(model=ModelConfig(kind="clip"), teacher=str(tiny_cnn_checkpoint))
    with pytest.raises(ConfigError, match="--no-embedding-cache"):
        cfg.check()
    cfg.embedding_cache = False
    cfg.check()  # every step sees faces, so the teacher can see them too


def test_cached_targets_are_the_mean_of_a_face_and_its_mirror(tiny_cnn_checkpoint):
    teacher = load_teacher(str(tiny_cnn_checkpoint), torch.device("cpu"))
    images = torch.randint(0, 256, (5, 48, 48), dtype=torch.uint8)
    faces = images.unsqueeze(1).float() / 255
    expected = (teacher_logits(teacher, faces).softmax(-1) + teacher_logits(teacher, faces.flip(-1)).softmax(-1)) / 2
    got = teacher_targets(teacher, images, torch.device("cpu"), None, batch_size=2)  # batches of 2, 2 and 1
    assert got.shape == (5, 7) and torch.allclose(got.exp(), expected, atol=1e-5)


def test_mixed_targets_blend_the_partners_predictions_as_the_faces_were_blended():
    log_probs = torch.randn(4, 7).log_softmax(-1)
    assert mix_targets(log_probs, torch.arange(4), 1.0) is log_probs  # an unmixed batch keeps its targets
    partner = torch.tensor([2, 3, 0, 1])
    mixed = mix_targets(log_probs, partner, 0.7)
    assert torch.allclose(mixed.exp(), 0.7 * log_probs.exp() + 0.3 * log_probs[partner].exp(), atol=1e-6)
    assert torch.isfinite(
        mix_targets(torch.full((2, 7), -torch.inf).index_fill(1, torch.tensor([0]), 0.0), torch.tensor([1, 0]), 0.0)
    ).all()


def test_the_target_cache_is_reused_only_for_the_same_teacher_and_faces(tiny_cnn_checkpoint, tmp_path):
    teacher = load_teacher(str(tiny_cnn_checkpoint), torch.device("cpu"))
    images = torch.randint(0, 256, (6, 48, 48), dtype=torch.uint8)
    cache = tmp_path / "teacher_targets.pt"
    first = cached_teacher_targets(teacher, tiny_cnn_checkpoint, images, cache, torch.device("cpu"), None)
    blob = torch.load(cache, weights_only=True)
    torch.save({**blob, "log_probs": first.flip(0)}, cache)  # marked, to see whether the file is read
    assert torch.equal(
        cached_teacher_targets(teacher, tiny_cnn_checkpoint, images, cache, torch.device("cpu"), None), first.flip(0)
    )
    # Rows that are no distributions, another dataset's size, another teacher file, junk and a pickled object:
    # each is predicted again.
    for broken in (first + 5.0, first * float("nan")):
        torch.save({**blob, "log_probs": broken}, cache)
        assert torch.equal(
            cached_teacher_targets(teacher, tiny_cnn_checkpoint, images, cache, torch.device("cpu"), None), first
        )
    assert torch.equal(
        cached_teacher_targets(teacher, tiny_cnn_checkpoint, images[:4], cache, torch.device("cpu"), None), first[:4]
    )
    other = tmp_path / "other.pt"
    other.write_bytes(tiny_cnn_checkpoint.read_bytes() + b"\0")
    assert torch.equal(cached_teacher_targets(teacher, other, images, cache, torch.device("cpu"), None), first)
    for hostile in (b"junk", None):
        if hostile is None:
            torch.save({"teacher_sha256": "x", "log_probs": object()}, cache)
        else:
            cache.write_bytes(hostile)
        assert torch.equal(
            cached_teacher_targets(teacher, tiny_cnn_checkpoint, images, cache, torch.device("cpu"), None), first
        )


def test_a_student_trains_with_cached_targets_and_a_resume_reads_them_back(tiny_fer, tiny_cnn_checkpoint, tmp_path):
    run = tmp_path / "student"
    flags = [
        "--teacher",
        str(tiny_cnn_checkpoint),
        "--teacher-cache",
        "--mixup",
        "0.4",
        "--mix-prob",
        "1",
        "--amp",
        "off",
    ]
    assert train_tiny_cnn(tiny_fer, run, *flags) == 0
    assert read_checkpoint(run / "best.pt")["train_config"]["teacher_cache"] is True
    assert torch.load(run / "teacher_targets.pt", weights_only=True)["log_probs"].shape == (7 * 12, 7)
    assert train_tiny_cnn(tiny_fer, run, *flags, "--epochs", "2", "--resume") == 0  # the later --epochs wins
    log = (run / "train.log").read_text()
    assert log.count("predicting 84 training faces") == 1 and "teacher targets: 84 faces from" in log


def test_a_target_cache_without_a_teacher_is_a_one_line_error(tiny_fer, tmp_path, capsys):
    assert train_tiny_cnn(tiny_fer, tmp_path / "run", "--teacher-cache") == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "error: --teacher-cache caches a teacher's predictions: add --teacher CHECKPOINT"
    )
