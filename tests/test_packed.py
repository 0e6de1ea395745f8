"""Packed splits (``train_cli.py pack``): lossless round trips, loading like folders, hostile files refused;
and the measured precision of ``amp auto`` training."""

from __future__ import annotations

import io
import lzma
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FER_DIR

from emotion.data.packed import PACK_VERSION, PackError, decode_faces, encode_faces, read_packed, write_packed
from emotion.data.splits import has_split, load_split, pack_dataset
from train_cli import main


def test_prediction_differences_round_trip_any_face() -> None:
    rng = np.random.default_rng(0)
    ramp = np.tile(np.arange(48, dtype=np.uint8) * 5, (48, 1))
    faces = np.stack(
        [
            rng.integers(0, 256, (48, 48), dtype=np.uint8),
            np.zeros((48, 48), np.uint8),
            np.full((48, 48), 255, np.uint8),
            ramp,
            ramp.T.copy(),
            255 - ramp,
        ]
    )
    residuals = encode_faces(faces)
    assert residuals.dtype == np.uint8 and residuals.shape == faces.shape
    assert np.array_equal(decode_faces(residuals), faces)
    assert np.count_nonzero(encode_faces(faces[3:4])[:, 1:, 1:]) == 0  # a smooth ramp is predicted exactly


def test_packed_split_loads_exactly_like_its_folder(tiny_fer: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "packed"
    assert main(["pack", "--data", str(tiny_fer), "--out", str(out)]) == 0
    assert "train: 84 faces" in capsys.readouterr().out
    for split in ("train", "test"):
        assert has_split(out, split)
        folder, packed = load_split(tiny_fer, split), load_split(out, split)
        assert torch.equal(folder.images, packed.images) and torch.equal(folder.labels, packed.labels)
        assert packed.source.endswith(f"{split}.npz") and packed.images.dtype == torch.uint8
    assert not has_split(out, "private")


@pytest.mark.slow
def test_real_test_split_packs_to_two_thirds_of_its_pixels(tmp_path: Path) -> None:
    if not FER_DIR.is_dir():
        pytest.skip("../shared/fer2013 is not available")
    info = pack_dataset(FER_DIR, tmp_path, ("test",))["test"]
    assert info["faces"] == 3589 and info["bytes"] < 0.7 * 3589 * 48 * 48  # 5.7 MB: 69% of the 8.3 MB of pixels
    assert torch.equal(load_split(tmp_path, "test").images, load_split(FER_DIR, "test").images)


def _npz(path: Path, **fields) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, **fields)
    path.write_bytes(buffer.getvalue())
    return path


def _fields(n: int = 3, **changes) -> dict:
    faces = np.random.default_rng(1).integers(0, 256, (n, 48, 48), dtype=np.uint8)
    blob = lzma.compress(encode_faces(faces).tobytes(), format=lzma.FORMAT_XZ)
    fields = dict(
        version=np.int64(PACK_VERSION),
        shape=np.array([n, 48, 48], dtype=np.int64),
        labels=np.arange(n, dtype=np.int64) % 7,
        faces_xz=np.frombuffer(blob, np.uint8),
    )
    return {**fields, **changes}


@pytest.mark.parametrize(
    "case, match",
    [
        ("junk", "not a readable packed split"),
        ("empty", "not a readable packed split"),
        ("missing", "lacks the field"),
        ("version", "format"),
        ("shape", "declares faces of shape"),
        ("huge", "declares faces of shape"),
        ("labels", "class indices"),
        ("truncated", "damaged|do not match"),
        ("bomb", "do not match"),
        ("pickle", "not a readable packed split"),
    ],
)
def test_hostile_packed_files_are_refused_with_a_reason(tmp_path: Path, case: str, match: str) -> None:
    path = tmp_path / "train.npz"
    good = _fields()
    if case == "junk":
        path.write_bytes(b"\x00garbage" * 100)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "missing":
        _npz(path, **{k: v for k, v in good.items() if k != "labels"})
    elif case == "version":
        _npz(path, **{**good, "version": np.int64(99)})
    elif case == "shape":
        _npz(path, **{**good, "shape": np.array([3, 64, 64], dtype=np.int64)})
    elif case == "huge":
        _npz(path, **{**good, "shape": np.array([10**12, 48, 48], dtype=np.int64)})
    elif case == "labels":
        _npz(path, **{**good, "labels": np.array([0, 1, 9], dtype=np.int64)})
    elif case == "truncated":
        _npz(path, **{**good, "faces_xz": good["faces_xz"][: len(good["faces_xz"]) // 2]})
    elif case == "bomb":  # declares 1 face but its stream holds 100 000: decompression stops at the declared size
        blob = lzma.compress(bytes(48 * 48 * 100_000), format=lzma.FORMAT_XZ)
        _npz(path, **_fields(1, faces_xz=np.frombuffer(blob, np.uint8)))
    elif case == "pickle":
        buffer = io.BytesIO()
        np.savez(buffer, **{**good, "labels": np.array([{"x": 1}], dtype=object)})
        path.write_bytes(buffer.getvalue())
    with pytest.raises(PackError, match=match):
        read_packed(path)
    assert main(["evaluate", "--data", str(tmp_path), "--split", "train"]) == 2  # a one-line CLI error, no traceback


def test_pack_refuses_no_splits_and_packing_onto_itself(tiny_fer: Path, tmp_path: Path) -> None:
    assert main(["pack", "--data", str(tiny_fer), "--out", str(tmp_path / "p"), "--splits", " , "]) == 2
    assert main(["pack", "--data", str(tiny_fer), "--out", str(tiny_fer)]) == 2
    assert main(["pack", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p")]) == 2
    assert main(["pack", "--data", str(tiny_fer), "--out", str(tmp_path / "p"), "--splits", "../escape"]) == 2
    assert not (tmp_path / "escape.npz").exists()
    (tmp_path / "a_file").write_text("x")
    assert main(["pack", "--data", str(tiny_fer), "--out", str(tmp_path / "a_file")]) == 2  # --out is a file: one line


def test_write_packed_is_atomic_and_reads_back(tmp_path: Path) -> None:
    faces = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (5, 48, 48), dtype=np.uint8))
    labels = torch.tensor([0, 1, 2, 3, 6])
    size = write_packed(faces, labels, tmp_path / "x" / "train.npz")
    assert size == (tmp_path / "x" / "train.npz").stat().st_size
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["train.npz"]  # no temp file left behind
    images, back = read_packed(tmp_path / "x" / "train.npz")
    assert torch.equal(images, faces) and torch.equal(back, labels)


# ---------------------------------------------------------------- amp auto: measured, not assumed


@pytest.mark.parametrize("winner, dtype", [("bf16", torch.bfloat16), ("fp32", None)])
def test_amp_auto_trains_in_the_precision_that_times_faster(winner: str, dtype, monkeypatch) -> None:
    import emotion.utils.runtime
    from emotion.models.networks import ModelConfig, build_model

    model, _ = build_model(ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def rigged(candidates, repeats=5, warmup=2):
        for work in candidates.values():
            work()  # both precisions really run a training step of the copy
        seen.append(sorted(candidates))
        return winner, {"bf16": 1.0, "fp32": 1.0}

    monkeypatch.setattr(emotion.utils.runtime, "fastest", rigged)
    got = emotion.utils.runtime.faster_training_dtype(model, torch.rand(4, 1, 48, 48), torch.device("cpu"))
    assert got == dtype and seen == [["bf16", "fp32"]]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics included
    assert all(p.grad is None for p in model.parameters())


def test_a_resumed_run_keeps_the_precision_its_first_part_timed(tiny_fer: Path, tmp_path: Path, monkeypatch) -> None:
    import emotion.training.loop
    import emotion.training.setup
    from emotion.models.networks import ModelConfig
    from emotion.training.config import TrainConfig
    from emotion.utils.runtime import read_jsonl

    monkeypatch.setattr(
        emotion.training.setup, "amp_dtype", lambda device, amp: torch.bfloat16
    )  # a CPU with native bf16
    monkeypatch.setattr(emotion.training.setup, "faster_training_dtype", lambda *a: torch.bfloat16)  # bf16 timed faster
    kw = dict(
        data=str(tiny_fer),
        out=str(tmp_path / "run"),
        model=ModelConfig(kind="cnn", cnn_widths=(8, 16), cnn_convs=1),
        batch_size=16,
        device="cpu",
    )
    emotion.training.loop.train(TrainConfig(epochs=1, **kw))

    def must_not_time(*a):
        raise AssertionError("a resumed run timed its precision again")

    monkeypatch.setattr(emotion.training.setup, "faster_training_dtype", must_not_time)
    emotion.training.loop.train(TrainConfig(epochs=2, resume=True, **kw))
    assert [r["precision"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == ["bfloat16", "bfloat16"]
