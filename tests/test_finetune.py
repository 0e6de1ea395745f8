"""Fine-tuning: a run that starts from a trained or shipped network (``--init-from``, ``--init-member``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import train_tiny_cnn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion.models.checkpoint import CheckpointError, member_weights, read_checkpoint, save_checkpoint, ship_checkpoint  # noqa: E402
from emotion.models.networks import ModelConfig, build_model  # noqa: E402

TINY = ModelConfig(kind="cnn", cnn_widths=(8, 16), dropout=0.2)  # what `train --model cnn --cnn-widths 8,16` builds
# with TINY_CNN_FLAGS: lr this small leaves the convolutions where they started; BatchNorm's running statistics still follow the data
FROZEN_ENOUGH = ["--lr", "1e-12"]


@pytest.fixture
def ensemble_of_two(tmp_path: Path) -> Path:
    """A shipped ensemble of two tiny networks with different random weights."""
    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        path = tmp_path / f"net{seed}.pt"
        save_checkpoint(path, build_model(TINY)[0], TINY)
        members.append(path)
    ship_checkpoint(members, tmp_path / "ensemble.pt", tta="none")
    return tmp_path / "ensemble.pt"


def _conv_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in state.items() if v.dim() == 4}


def test_member_weights_picks_one_network_of_an_ensemble(ensemble_of_two):
    blob = read_checkpoint(ensemble_of_two)["model"]
    cfg, second = member_weights(ensemble_of_two, 2)
    assert cfg.members == 1 and cfg.cnn_widths == (8, 16)
    assert set(second) == {k.removeprefix("members.1.") for k in blob if k.startswith("members.1.")}
    assert all(v.dtype == torch.float32 for v in second.values() if v.is_floating_point())  # float16 matrices widened
    assert torch.equal(second["features.0.weight"], blob["members.1.features.0.weight"].float())
    assert not torch.equal(member_weights(ensemble_of_two, 1)[1]["features.0.weight"], second["features.0.weight"])
    for bad in (0, 3, True, "1"):
        with pytest.raises(CheckpointError, match="holds 2 network"):
            member_weights(ensemble_of_two, bad)


def test_a_run_starts_from_the_chosen_network_and_records_it(tiny_fer, ensemble_of_two, tmp_path):
    run = tmp_path / "ft"
    assert train_tiny_cnn(tiny_fer, run, *FROZEN_ENOUGH, "--init-from", str(ensemble_of_two), "--init-member", "2") == 0
    trained = _conv_weights(read_checkpoint(run / "best.pt")["model"])
    start = _conv_weights(member_weights(ensemble_of_two, 2)[1])
    assert trained.keys() == start.keys()
    assert all(torch.allclose(trained[k], start[k], atol=1e-6) for k in start)
    cfg = read_checkpoint(run / "best.pt")["train_config"]
    assert (cfg["init_from"], cfg["init_member"]) == (str(ensemble_of_two), 2)


def test_without_init_from_a_run_starts_from_random_weights(tiny_fer, ensemble_of_two, tmp_path):
    run = tmp_path / "scratch"
    assert train_tiny_cnn(tiny_fer, run, *FROZEN_ENOUGH) == 0
    trained = _conv_weights(read_checkpoint(run / "best.pt")["model"])
    start = _conv_weights(member_weights(ensemble_of_two, 1)[1])
    assert not all(torch.allclose(trained[k], start[k], atol=1e-3) for k in start)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--init-member", "3"], "holds 2 network"),
        (["--init-member", "0"], "--init-member"),
        (["--cnn-widths", "8,32"], "cnn_widths"),
    ],
)
def test_a_network_that_cannot_start_the_run_is_a_one_line_error(
    tiny_fer, ensemble_of_two, tmp_path, capsys, flags, message
):
    assert train_tiny_cnn(tiny_fer, tmp_path / "run", *FROZEN_ENOUGH, "--init-from", str(ensemble_of_two), *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "run" / "best.pt").exists()


def test_a_missing_init_checkpoint_is_refused_before_anything_starts(tiny_fer, tmp_path, capsys):
    assert train_tiny_cnn(tiny_fer, tmp_path / "run", *FROZEN_ENOUGH, "--init-from", str(tmp_path / "missing.pt")) == 2
    assert "--init-from: no checkpoint at" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_unpacked_release_ships_again_as_the_same_model(ensemble_of_two, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from unpack_ensemble import unpack

    paths = unpack(ensemble_of_two, tmp_path / "unpacked")
    # Both networks came from files in one folder, so the second gets a name of its own.
    assert [p.parent.name for p in paths] == [tmp_path.name, f"{tmp_path.name}-network2"]
    assert all(read_checkpoint(p)["model_config"]["members"] == 1 for p in paths)
    ship_checkpoint(paths, tmp_path / "again.pt", tta="none")
    before, after = read_checkpoint(ensemble_of_two)["model"], read_checkpoint(tmp_path / "again.pt")["model"]
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)


def test_a_fine_tune_keeps_its_carve_out_unseen_only_when_its_start_held_it_out(tiny_fer, tmp_path):
    from emotion.models.provenance import unseen_split

    held = ["--val-split", "0.2", "--split-seed", "5"]
    assert train_tiny_cnn(tiny_fer, tmp_path / "a", *FROZEN_ENOUGH, *held) == 0
    start = tmp_path / "a" / "best.pt"
    assert unseen_split(read_checkpoint(start)["train_config"]) == (0.2, 5)
    cases = [
        ("same", str(start), held, (0.2, 5)),
        ("other", str(start), ["--val-split", "0.2", "--split-seed", "6"], None),
    ]
    for name, source, flags, expected in cases:
        run = tmp_path / name
        flags = [*FROZEN_ENOUGH, "--init-from", source, *flags]
        assert train_tiny_cnn(tiny_fer, run, *flags) == 0
        cfg = read_checkpoint(run / "best.pt")["train_config"]
        assert unseen_split(cfg) == expected, name
        # Resumed, the run still records where its weights came from.
        assert train_tiny_cnn(tiny_fer, run, *flags, "--resume", "--epochs", "2") == 0
        assert unseen_split(read_checkpoint(run / "last.pt")["train_config"]) == expected, name
    # A network that trained on every face passes nothing on, and neither does a teacher.
    assert unseen_split({"val_split": 0.2, "seed": 5, "init_from": "x.pt", "init_held_out": None}) is None
    assert unseen_split({"val_split": 0.2, "seed": 5, "teacher": "t.pt"}) is None
    assert unseen_split({"members": [{"val_split": 0.2, "seed": 5}, {"val_split": 0.2, "seed": 6}]}) is None


def test_distilling_keeps_the_carve_out_unseen_only_when_the_teacher_held_it_out(tiny_fer, tmp_path):
    from emotion.models.provenance import unseen_split

    held = ["--val-split", "0.2", "--split-seed", "5"]
    assert train_tiny_cnn(tiny_fer, tmp_path / "teacher", *FROZEN_ENOUGH, *held) == 0
    teacher = str(tmp_path / "teacher" / "best.pt")
    cases = [("same", held, (0.2, 5)), ("other", ["--val-split", "0.2", "--split-seed", "6"], None)]
    for name, flags, expected in cases:
        run = tmp_path / name
        assert train_tiny_cnn(tiny_fer, run, *FROZEN_ENOUGH, "--teacher", teacher, "--teacher-cache", *flags) == 0
        assert unseen_split(read_checkpoint(run / "best.pt")["train_config"]) == expected, name
    # The teacher's recorded carve-out must be this run's own.
    assert unseen_split({"val_split": 0.2, "seed": 5, "teacher": "t.pt", "teacher_held_out": [0.2, 5]}) == (0.2, 5)
    assert unseen_split({"val_split": 0.2, "seed": 5, "teacher": "t.pt", "teacher_held_out": [0.2, 6]}) is None
